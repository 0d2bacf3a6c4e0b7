"""Faults from outside steelqc's code, against real servers and a real full disk (README "Faults and retries").

* The MLflow server dies in the middle of a registration (a relay in front of the real server kills it right after
  the model version was created): bounded retries, one clear error that says what to do, no half-registered
  version, no alias moved; after a restart `--resume` finishes the same version.
* The Prefect server dies mid-run and comes back only after the run gave up: the run is marked Crashed by the
  server's automation, not left Running.
* The artifact store fills up during a training run (a small tmpfs in a private mount namespace): a clear error
  naming the place and ENOSPC, the champion and the registry untouched.

Each protection was checked by disabling it: the test then fails (see the report of issue 14).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from steelqc.model_registry import packaging, promotion
from steelqc.tasks.config import Settings
from steelqc.tasks.data.synth import generate_dataset
from tests.helpers import RELAXED, STEELQC, free_port

pytestmark = pytest.mark.slow

NAME = Settings.model_fields["registered_model"].default
LOCK = f"{NAME}{promotion.LOCK_SUFFIX}"
VERSION_TAGS = {
    "weights_sha256", "bundle_sha256", "gates_passed", "gates", "gates_reason", "fingerprint", "code_version",
    "critical_class", "threshold", "macro_f1",
}  # fmt: skip
REQUEST_LINE = re.compile(rb"(?:GET|POST|PUT|PATCH|DELETE|HEAD) (\S+) HTTP/1\.[01]\r\n")


# ---------------------------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 generated images: enough for the tiny profile's pipeline, and quicker than the champion's 120."""
    out = tmp_path_factory.mktemp("faults") / "data"
    generate_dataset(out, n_images=40, seed=3, mix={0: 0.3, 1: 0.25, 2: 0.15, 3: 0.15, 4: 0.15})
    return out


class KillSwitch:
    """A TCP relay in front of a real server that kills the server at one exact point of a run: it passes every
    request through until one whose path holds ``trigger`` has gone through, and at the next request it runs
    ``kill`` and stops listening, so that request and every retry find no server (dropped, then refused), as when
    the server dies right there."""

    def __init__(self, port: int, backend: int, trigger: bytes, kill: Callable[[], None]) -> None:
        self.backend, self.trigger, self.kill = backend, trigger, kill
        self.listener = socket.create_server(("127.0.0.1", port))
        self.armed = False
        self.fired_at: float | None = None
        self.paths: list[bytes] = []
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
                upstream = socket.create_connection(("127.0.0.1", self.backend))
            except OSError:
                return
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._requests, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()

    def _requests(self, client: socket.socket, upstream: socket.socket) -> None:
        while data := _recv(client):
            paths = REQUEST_LINE.findall(data)
            if paths and self.armed:
                self.fire()
                return
            self.paths += paths
            _send(upstream, data)
            self.armed = self.armed or any(self.trigger in path for path in paths)
        _close(client, upstream)

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        while data := _recv(source):
            _send(sink, data)
        _close(source, sink)

    def fire(self) -> None:
        """Kill the server, drop every connection, stop listening (once)."""
        with self._lock:
            if self.fired_at is not None:
                return
            self.fired_at = time.monotonic()
            self.kill()
            _close(self.listener, *self._sockets)

    def close(self) -> None:
        with self._lock:
            _close(self.listener, *self._sockets)


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:
        return b""


def _send(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):
        sock.sendall(data)


def _close(*socks: socket.socket) -> None:
    for sock in socks:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()


def _steelqc(env: dict, *args: str, timeout: float = 300) -> tuple[int, dict, str]:
    """Run the CLI with ``--json``; (exit code, its JSON, stderr). A run that outlives ``timeout`` is killed and
    fails the test."""
    proc = subprocess.Popen([*STEELQC, *args, "--json"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"steelqc {' '.join(args)} still running after {timeout:.0f} s:\n{err[-3000:]}")
    lines = [line for line in out.splitlines() if line.strip()]
    return proc.returncode, json.loads(lines[-1]) if lines else {}, err


def _registry(tracking_uri: str) -> dict:
    """Versions (with tags), aliases, the audit trail and whether the promotion lock is held, as the server has them."""
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    versions = {v.version: dict(v.tags) for v in client.search_model_versions(f"name='{NAME}'")}
    try:
        client.get_registered_model(LOCK)
        locked = True
    except mlflow.exceptions.MlflowException:
        locked = False
    return {
        "versions": versions,
        "aliases": promotion.aliases(client, NAME),
        "history": promotion.history(client, NAME),
        "locked": locked,
    }


# ------------------------------------------------------------------------------------- MLflow server down


def test_mlflow_server_dying_mid_registration_gives_up_bounded_then_resume_finishes_the_same_version(
    small_data: Path, tmp_path: Path, prefect_env: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    home, backend, front = tmp_path / "home", free_port(), free_port()
    tracking = f"http://127.0.0.1:{front}"
    server_env = {**os.environ, "STEELQC_HOME": str(home), "STEELQC_MLFLOW_PORT": str(backend)}
    env = {
        **os.environ, **RELAXED, "STEELQC_HOME": str(home), "STEELQC_TRACKING_URI": tracking,
        "STEELQC_MLFLOW_HTTP_RETRIES": "1", "STEELQC_LOCK_TIMEOUT_S": "20",
    }  # fmt: skip
    code, started, err = _steelqc(server_env, "server", "start", "--only", "mlflow", timeout=120)
    assert code == 0, err[-2000:]
    server = started["servers"]["mlflow"]["pid"]
    switch = KillSwitch(front, backend, b"/mlflow/model-versions/create", lambda: os.killpg(server, signal.SIGKILL))
    try:
        code, failed, err = _steelqc(env, "train", "--data", str(small_data), "--profile", "tiny", timeout=240)
        gave_up_s = time.monotonic() - (switch.fired_at or time.monotonic())
    finally:
        switch.close()
    assert switch.fired_at is not None, f"the run never reached registration:\n{err[-3000:]}"
    # bounded (MLflow's defaults retry one call for about 4 min): each call 2 tries, the register step 3 attempts
    assert code == 1 and failed["fault"] == "mlflow-unreachable", (failed, err[-3000:])
    message = failed["error"]
    assert tracking in message and "2 tries" in message, message
    assert "steelqc server start" in message and "steelqc train --resume" in message, message
    assert gave_up_s < 60, f"gave up {gave_up_s:.0f} s after the server died"

    server_env["STEELQC_MLFLOW_PORT"] = str(front)  # the same store, back on the address the runs use
    code, _, err = _steelqc(server_env, "server", "start", "--only", "mlflow", timeout=120)
    assert code == 0, err[-2000:]
    previous = mlflow.get_tracking_uri()
    try:
        after = _registry(tracking)
        # the version was created (with every tag, in one call) just before the server died: complete, loadable
        # with its hashes checked; its audit event and the lock's release were cut off; no alias moved
        ((version, tags),) = after["versions"].items()
        assert set(tags) >= VERSION_TAGS, sorted(tags)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)
        mlflow.set_tracking_uri(tracking)
        assert packaging.load(f"models:/{NAME}/{version}", device="cpu").architecture == "simple_cnn"
        assert after["aliases"] == {} and after["locked"]
        assert not [e for e in after["history"] if e["action"] == "register"]

        code, summary, err = _steelqc(env, "train", "--data", str(small_data), "--profile", "tiny", "--resume")
        assert code == 0, err[-3000:]
        assert summary["model_version"] == version and summary["aliases"] == {
            "challenger": version,
            "champion": version,
        }
        final = _registry(tracking)
        assert list(final["versions"]) == [version] and not final["locked"]
        registered = [e for e in final["history"] if e["action"] == "register"]
        assert [e["to_version"] for e in registered] == [version] and "recorded by a retry" in registered[0]["reason"]
    finally:
        mlflow.set_tracking_uri(previous)
        _steelqc(server_env, "server", "stop", "--only", "mlflow", timeout=60)


# ------------------------------------------------------------------------------------- Prefect server down


def _flow_run(api_url: str, flow_run_id: str | None = None) -> dict | None:
    """The flow run (the only one when no id is given) as the Prefect server at ``api_url`` has it: id, state type
    and message; None when there is none or the server does not answer."""
    from prefect import get_client  # noqa: PLC0415  (the server's settings are set around the call)
    from prefect.settings import PREFECT_API_URL, temporary_settings  # noqa: PLC0415

    try:
        with temporary_settings(updates={PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
            runs = [client.read_flow_run(flow_run_id)] if flow_run_id else client.read_flow_runs()
    except Exception:
        return None
    if not runs:
        return None
    run = runs[0]
    return {"id": str(run.id), "state": run.state.type.value, "message": run.state.message}


def _wait_for(what: str, probe: Callable[[], object], timeout_s: float) -> object:
    deadline = time.monotonic() + timeout_s
    while not (found := probe()):
        assert time.monotonic() < deadline, f"{what} not within {timeout_s:.0f} s"
        time.sleep(1)
    return found


def test_prefect_server_restarted_after_the_run_gave_up_marks_the_run_crashed_not_running(
    small_data: Path, tmp_path: Path
) -> None:
    home, port = tmp_path / "home", free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API_URL")}
    env.update(
        RELAXED, STEELQC_HOME=str(home), STEELQC_PREFECT_PORT=str(port), STEELQC_FLOW_HEARTBEAT_S="30",
        STEELQC_ZOMBIE_AFTER_S="35", STEELQC_PREFECT_CLIENT_RETRIES="1",
    )  # fmt: skip
    code, started, err = _steelqc(env, "server", "start", "--only", "prefect", timeout=120)  # + the automation
    assert code == 0, err[-2000:]
    server = started["servers"]["prefect"]["pid"]
    train = subprocess.Popen(
        [*STEELQC, "train", "--data", str(small_data), "--profile", "tiny", "--json"],
        env={**env, "PREFECT_API_URL": api}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        running = _wait_for("a running flow run", lambda: (r := _flow_run(api)) and r["state"] == "RUNNING" and r, 120)
        time.sleep(2)  # its first heartbeat reaches the server
        os.killpg(server, signal.SIGKILL)
        killed_at = time.monotonic()
        out, err = train.communicate(timeout=240)
        gave_up_s = time.monotonic() - killed_at
    finally:
        if train.poll() is None:
            train.kill()
    failed = json.loads(out.strip().splitlines()[-1])
    # the run could not record its end: it gives up (bounded retries; it does the rest of its work meanwhile, about
    # 30 s) with a message that says what happens next
    assert train.returncode == 1 and failed["fault"] == "prefect-unreachable", (failed, err[-3000:])
    assert gave_up_s < 90, f"exited {gave_up_s:.0f} s after the server died"
    assert api in failed["error"] and "marks the run Crashed" in failed["error"], failed["error"]
    assert "steelqc server start" in failed["error"] and "steelqc train --resume" in failed["error"]

    code, _, err = _steelqc(env, "server", "start", "--only", "prefect", timeout=120)  # the same database
    assert code == 0, err[-2000:]
    try:
        # never left Running (as the server knew it when it died): the automation marks it Crashed 35 s after its
        # last heartbeat, at once when that passed while the server was down
        crashed = _wait_for(
            "the run marked Crashed",
            lambda: (r := _flow_run(api, running["id"])) and r["state"] != "RUNNING" and r,
            max(10.0, killed_at + 35 + 45 - time.monotonic()),
        )
        assert crashed["state"] == "CRASHED" and "no heartbeat for 35 s" in crashed["message"], crashed
    finally:
        _steelqc(env, "server", "stop", "--only", "prefect", timeout=60)


# ------------------------------------------------------------------------------------------------ full disk

FULL_DISK = r"""
set -eu  # any failed mount stops here, before anything could write to the real home
mount --bind "$HOME_DIR" "$REAL" && mount -o remount,bind,ro "$REAL"   # the real home: read-only from here on
mount -t tmpfs -o size=256m steelqc-home "$HOME_DIR" && cp -a "$REAL/." "$HOME_DIR/"
mount -t tmpfs -o size="${MODELS_KB}k" steelqc-models "$HOME_DIR/mlartifacts/models"
cp -a "$REAL/mlartifacts/models/." "$HOME_DIR/mlartifacts/models/"
"$PYTHON" "$CHECK" > "$OUT/before.json" 2> "$OUT/before.log"
rc=0
"$STEELQC" train --data "$DATA" --profile tiny --json > "$OUT/train.json" 2> "$OUT/train.log" || rc=$?
echo "$rc" > "$OUT/train.rc"
"$PYTHON" "$CHECK" > "$OUT/after.json" 2> "$OUT/after.log"
"""

CHECK = """
import hashlib, json
from pathlib import Path
from steelqc.model_registry import packaging, promotion
from steelqc.model_registry.store import client, configure
from steelqc.tasks.config import Settings

settings = Settings()
configure(settings)
c = client(settings)
name = settings.registered_model
champion = c.get_model_version_by_alias(name, "champion")
model = packaging.load(f"models:/{name}@champion", device="cpu")  # files checked against the version's hashes
print(json.dumps({
    "aliases": promotion.aliases(c, name),
    "versions": sorted(v.version for v in c.search_model_versions(f"name='{name}'")),
    "events": len(promotion.history(c, name)),
    "locks": [m.name for m in c.search_registered_models() if m.name.endswith(promotion.LOCK_SUFFIX)],
    "champion_weights": champion.tags["weights_sha256"],
    "loaded": model.architecture,
}))
"""


def _pages(files: list[Path]) -> int:
    """Bytes ``files`` take on a tmpfs (whole 4 KiB pages)."""
    return sum(-(-f.stat().st_size // 4096) * 4096 for f in files)


def _private_mounts_or_skip() -> None:
    if os.geteuid() != 0:
        pytest.skip("a size-limited tmpfs needs root (unshare -m, mount): not root here")
    probe = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "mount", "-t", "tmpfs", "-o", "size=1m", "probe", "/mnt"],
        capture_output=True, text=True,
    )  # fmt: skip
    if probe.returncode != 0:
        pytest.skip(f"no private mount namespace with a tmpfs here: {probe.stderr.strip()}")


def test_full_artifact_store_during_registration_fails_clearly_and_leaves_the_champion(
    champion, tmp_path: Path, prefect_env: dict
) -> None:
    """The session's champion store, copied into a private mount namespace (the real one is mounted read-only there),
    its logged models' folder on a tmpfs with room for the models there and half of one more: the run fills the disk
    while registering its model (its other artifacts, whose size varies, land beside it on a roomy tmpfs)."""
    _private_mounts_or_skip()
    artifacts = champion.home / "mlartifacts"
    models = [f for f in (artifacts / "models").rglob("*") if f.is_file()]
    folders = {f.relative_to(artifacts / "models").parts[0] for f in models}
    smallest = min(_pages([f for f in models if f.relative_to(artifacts / "models").parts[0] == d]) for d in folders)
    room = _pages(models) + smallest // 2  # less than any one model: the next model written there cannot fit
    (tmp_path / "check.py").write_text(CHECK)
    (tmp_path / "real").mkdir()
    env = {
        **os.environ, **RELAXED, "HOME_DIR": str(champion.home), "REAL": str(tmp_path / "real"),
        "MODELS_KB": str(room // 1024), "PYTHON": str(Path(STEELQC[0]).with_name("python")), "OUT": str(tmp_path),
        "CHECK": str(tmp_path / "check.py"), "STEELQC": STEELQC[0], "DATA": str(champion.data),
        "STEELQC_HOME": str(champion.home),
    }  # fmt: skip
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", FULL_DISK], env=env,
                          capture_output=True, text=True, timeout=400)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (tmp_path / "train.log").read_text()
    before, after = (json.loads((tmp_path / f"{n}.json").read_text() or "{}") for n in ("before", "after"))
    assert before.get("loaded"), (tmp_path / "before.log").read_text()[-3000:]

    failed = json.loads((tmp_path / "train.json").read_text().strip().splitlines()[-1])
    assert (tmp_path / "train.rc").read_text().strip() == "1", log[-3000:]
    assert failed["fault"] == "disk-full" and failed["file"].startswith(f"{artifacts}/"), (failed, log[-3000:])
    # the full place (the models' tmpfs, not the roomy home around it) and its free space
    full_place = rf": {re.escape(str(artifacts))}/models\S* has [\d.]+ [KMG]?B free of "
    assert re.search(full_place, failed["error"]), failed["error"]
    assert "No space left on device (ENOSPC)" in failed["error"] and "steelqc train --resume" in failed["error"]
    assert "in log_pyfunc" in log, log[-3000:]  # it filled the disk while writing the model it was registering
    # nothing registered, nothing moved, no lock left; the champion loads, its weights those its version records
    assert after == before, (before, after)
