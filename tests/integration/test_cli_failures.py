"""Every failure a clear answer: usage errors and unusable output paths give exit 2 and, under --json, one JSON
object {"error", "file", "row"}; a killed `steelqc train` leaves no Prefect server behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from steelqc.infra.services import TEMPORARY, reap_orphans, temporary_prefect
from steelqc.tasks.data.synth import generate_dataset
from tests.helpers import STEELQC, run, write_csv, write_image


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny-data")
    write_image(root / "train_images" / "a.jpg")
    write_csv(root, "ImageId,ClassId,EncodedPixels\n")
    return root


@pytest.mark.parametrize(
    ("args", "fault"),
    [
        (["train", "--json"], "Missing option '--data'"),
        (["ingest", "--json"], "Missing argument"),
        (["train", "--data", "x", "--epochs", "0", "--json"], "--epochs"),
        (["train", "--data", "x", "--epochs", "many", "--json"], "valid integer"),
        (["ingest", "x", "--bogus", "--json"], "No such option: --bogus"),
        (["nosuchcommand", "--json"], "No such command"),
    ],
)
def test_usage_errors_under_json_are_one_json_object(args: list[str], fault: str) -> None:
    code, summary, stderr = run(*args)
    assert code == 2, stderr
    assert summary is not None and fault in summary["error"] and set(summary) >= {"error", "file", "row"}
    assert "Traceback" not in stderr


def test_usage_errors_without_json_print_usage_only() -> None:
    proc = subprocess.run([*STEELQC, "train"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == "" and "Missing option '--data'" in proc.stderr


def _out_targets(tmp_path: Path) -> dict[str, Path]:
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    return {"file": a_file, "dev-null": Path("/dev/null"), "proc": Path("/proc/steelqc-cannot-be-here")}


@pytest.mark.parametrize("target", ["file", "dev-null", "proc"])
def test_output_folder_that_cannot_be_one_exits_2(tiny: Path, tmp_path: Path, target: str) -> None:
    out = _out_targets(tmp_path)[target]
    for args in (["ingest", str(tiny), "--out", str(out)], ["synth", "--out", str(out), "--n-images", "2"]):
        code, summary, stderr = run(*args, "--json")
        assert code == 2, stderr
        assert summary["file"] == str(out) and str(out) in summary["error"] and summary["row"] is None
        assert "Traceback" not in stderr


@pytest.mark.parametrize("target", ["file", "dev-null", "proc"])
def test_steelqc_home_that_cannot_be_a_folder_exits_2(tiny: Path, tmp_path: Path, target: str) -> None:
    home = _out_targets(tmp_path)[target]
    for args in (["ingest", str(tiny)], ["train", "--data", str(tiny), "--profile", "tiny"], ["registry", "history"]):
        code, summary, stderr = run(*args, "--json", home=home)
        assert code == 2, stderr
        assert summary["file"] == str(home) and "STEELQC_HOME" in summary["error"]
        assert "Traceback" not in stderr


# --------------------------------------------------------------------------------- no server left behind


def _uvicorn_pids() -> set[int]:
    """Pids of temporary Prefect servers (Prefect's own or steelqc's) on this machine."""
    pids = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if b"uvicorn" in cmd and b"prefect.server.api.server:create_app" in cmd:
                pids.add(int(proc.name))
    return pids


def _wait(predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "State:\tZ" in status.read_text()


@pytest.mark.slow
def test_kill_9_of_train_leaves_no_prefect_server(tmp_path: Path, steelqc_home: Path) -> None:
    data = tmp_path / "data"
    generate_dataset(data, n_images=40, seed=5)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API_URL")}
    env["STEELQC_HOME"] = str(steelqc_home)
    proc = subprocess.Popen(
        [*STEELQC, "train", "--data", str(data), "--profile", "tiny", "--json"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    record = steelqc_home / "servers" / f"{TEMPORARY}-{proc.pid}.json"
    assert _wait(record.exists, 120), "the command never started its Prefect server"
    server = json.loads(record.read_text())["pid"]
    assert _wait(lambda: server in _uvicorn_pids(), 30)
    time.sleep(2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert _wait(lambda: _gone(server), 30), "the temporary Prefect server outlived its killed command"


def test_a_server_left_behind_is_stopped_by_the_next_command(steelqc_home: Path) -> None:
    """Where the kernel cannot stop it (no PR_SET_PDEATHSIG), the next command finds and stops the orphan."""
    code = (
        "import os, sys, time\n"
        "from pathlib import Path\n"
        "from steelqc.infra.services import temporary_prefect\n"
        "with temporary_prefect(Path(sys.argv[1]), die_with_parent=False) as url:\n"
        "    print(url, flush=True)\n"
        "    time.sleep(600)\n"
    )
    owner = subprocess.Popen(
        [sys.executable, "-c", code, str(steelqc_home)], stdout=subprocess.PIPE, text=True,
        cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    assert owner.stdout is not None and owner.stdout.readline().startswith("http://127.0.0.1:")
    record = steelqc_home / "servers" / f"{TEMPORARY}-{owner.pid}.json"
    server = json.loads(record.read_text())["pid"]
    owner.kill()
    owner.wait(timeout=30)
    time.sleep(1)
    assert not _gone(server), "without the kernel's help the orphan is still running"
    assert reap_orphans(steelqc_home) == [server]
    assert _wait(lambda: _gone(server), 15) and not record.exists()
    with temporary_prefect(steelqc_home) as url:  # and a fresh one starts and stops cleanly
        assert url.startswith("http://127.0.0.1:")
    assert not list((steelqc_home / "servers").glob(f"{TEMPORARY}-*.json"))
