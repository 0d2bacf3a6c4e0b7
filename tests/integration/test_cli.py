"""The `steelqc` command as users run it: one JSON object on stdout, logs on stderr, documented exit codes."""

from __future__ import annotations

import logging
import os
import re
import subprocess
from pathlib import Path

import pytest

from steelqc.flows import cli
from steelqc.tasks.data.split import SPLITS, load_split
from tests.helpers import STEELQC, Champion, make_folders, run, shared_path, write_csv, write_image


def test_ingest_json_contract(messy: Path, tmp_path: Path) -> None:
    code, summary, stderr = run("ingest", str(messy), "--out", str(tmp_path / "out"), "--json")
    assert code == 0, stderr
    for key in ("valid", "quarantined", "by_class", "fingerprint", "manifest", "quarantine"):
        assert key in summary
    assert summary["valid"] == 7 and summary["quarantined"] == 14
    assert Path(summary["manifest"]).is_file() and Path(summary["quarantine"]).is_file()
    assert "ingest: 7 valid" in stderr
    code, _, _ = run("ingest", str(messy), "--out", str(tmp_path / "strict"), "--strict", "--json")
    assert code == 1


def test_ingest_default_out_is_a_run_folder_under_home(messy: Path, steelqc_home: Path) -> None:
    code, summary, stderr = run("ingest", str(messy), "--json", home=steelqc_home)
    assert code == 0, stderr
    out = Path(summary["out"])
    assert out.parent == steelqc_home / "runs" and not str(out).startswith(str(messy))


def test_ingest_refuses_output_inside_the_data(messy: Path) -> None:
    code, summary, _ = run("ingest", str(messy), "--out", str(messy / "out"), "--json")
    assert code == 2 and "inside the data directory" in summary["error"]
    assert not (messy / "out").exists()


@pytest.mark.parametrize(("text", "fault"), [("", "file is empty"), ("a,b,c\n", "unexpected header")])
def test_bad_csv_exits_2_with_file_and_row(tmp_path: Path, text: str, fault: str) -> None:
    root = tmp_path / "bad"
    write_image(root / "train_images" / "a.jpg")
    write_csv(root, text)
    code, summary, stderr = run("ingest", str(root), "--out", str(tmp_path / "o"), "--json")
    assert code == 2 and fault in summary["error"] and fault in stderr
    assert summary["file"].endswith("train.csv") and summary["row"] == 1


def test_no_valid_image_exits_1(tmp_path: Path) -> None:
    root = tmp_path / "none"
    (root / "train_images").mkdir(parents=True)
    write_csv(root, "ImageId,ClassId,EncodedPixels\ngone.jpg,1,1 5\n")
    code, summary, _ = run("ingest", str(root), "--out", str(tmp_path / "o"), "--json")
    assert code == 1 and summary["valid"] == 0 and summary["quarantined"] == 1


def test_unknown_critical_class_lists_the_classes(tmp_path: Path) -> None:
    root = make_folders(tmp_path / "plant")
    code, summary, _ = run("ingest", str(root), "--critical-class", "dent", "--out", str(tmp_path / "o"), "--json")
    assert code == 2 and "crack, rust" in summary["error"]


def test_ingest_then_split(messy: Path, tmp_path: Path, steelqc_home: Path) -> None:
    out = tmp_path / "run"
    assert run("ingest", str(messy), "--out", str(out), "--json", home=steelqc_home)[0] == 0
    code, summary, stderr = run("split", str(out), "--json", home=steelqc_home)
    assert code == 0, stderr
    assert summary["splits"] == {s: str(out / "splits" / f"{s}.csv") for s in SPLITS}
    frames = [load_split(out, s) for s in SPLITS]
    assert sum(len(f) for f in frames) == 7
    assert summary["ledger_added"] == 7 and Path(summary["ledger"]).is_file()
    assert any("too few to split" in w for w in summary["warnings"])


def test_real_sample_through_the_cli(tmp_path: Path) -> None:
    code, summary, stderr = run("ingest", str(shared_path("severstal-sample")), "--out", str(tmp_path / "o"), "--json")
    assert code == 0, stderr
    assert summary["valid"] == 47 and summary["quarantined"] == 0
    assert summary["by_class"] == {"ok": 5, "crack": 9, "scratch": 1, "dent": 29, "other": 3}
    assert summary["masks_by_class"] == {"crack": 9, "scratch": 4, "dent": 29, "other": 4}


def test_invalid_settings_are_a_clear_usage_error(tmp_path: Path) -> None:
    env_home = tmp_path / "h"
    os.environ["STEELQC_CRITICAL_CLASS"] = "rust"
    try:
        code, summary, _ = run("split", str(tmp_path), "--json", home=env_home)
    finally:
        del os.environ["STEELQC_CRITICAL_CLASS"]
    assert code == 2 and "invalid settings" in summary["error"]


# ------------------------------------------------------------------------------- without --json: for people


def run_text(*args: str, home: Path | None = None) -> tuple[int, str, str]:
    """Run the CLI without --json; returns (exit code, stdout, stderr)."""
    env = {**os.environ, "COLUMNS": "120"}
    if home is not None:
        env["STEELQC_HOME"] = str(home)
    proc = subprocess.run([*STEELQC, *args], capture_output=True, text=True, env=env, timeout=600)
    return proc.returncode, proc.stdout, proc.stderr


def cells(text: str) -> dict[str, list[str]]:
    """Each stdout line's first cell -> its other cells (cells are apart by two spaces or more)."""
    split = (re.split(r"\s{2,}", line.strip()) for line in text.splitlines() if line.strip())
    return {row[0]: row[1:] for row in split}


def test_ingest_and_split_print_a_short_listing(messy: Path, tmp_path: Path, steelqc_home: Path) -> None:
    out = tmp_path / "run"
    code, stdout, stderr = run_text("ingest", str(messy), "--out", str(out), home=steelqc_home)
    assert code == 0, stderr
    rows = cells(stdout)
    assert rows["valid"] == ["7"] and rows["quarantined"] == ["14"] and rows["manifest"] == [str(out / "manifest.csv")]
    assert "{" not in stdout and max(len(line) for line in stdout.splitlines()) <= 120
    code, stdout, stderr = run_text("split", str(out), home=steelqc_home)
    assert code == 0, stderr
    rows = cells(stdout)
    assert rows["splits"] == [] and rows["counts"] == [] and rows["ledger_added"] == ["7"]
    assert re.search(rf"^  train +{out / 'splits' / 'train.csv'}$", stdout, re.M), "one indented line a split"
    assert "{" not in stdout and max(len(line) for line in stdout.splitlines()) <= 120


@pytest.mark.slow
def test_train_evaluate_predict_print_summaries_and_no_request_logs(
    champion: Champion, prefect_env: dict, steelqc_home: Path
) -> None:
    code, stdout, stderr = run_text("train", "--data", str(champion.data), "--profile", "tiny", home=steelqc_home)
    assert code == 0, stderr[-3000:]
    rows = cells(stdout)
    assert stdout.startswith("steelqc train: steel-defect-classifier v1")
    assert rows["macro-F1"][-2:] == ["≥ 0.80", "✗"] and re.fullmatch(r"\d\.\d{3}–\d\.\d{3}", rows["macro-F1"][1])
    for figure in ("critical recall (crack)", "critical precision", "glare ΔF1 (largest drop)", "vs champion"):
        assert rows[figure][-1] in ("✓", "✗"), figure
    assert rows["gates"][0].startswith("✗") and rows["promoted"][0].startswith("no")
    run_dir = Path(rows["run folder"][0])
    assert run_dir.parent == steelqc_home / "runs" and rows["plots"][0].startswith("evaluation/: confusion_matrix.png")
    assert rows["MLflow run"][0].startswith("http://127.0.0.1:5000/#/runs/")
    prefect_ui = prefect_env["PREFECT_API_URL"].removesuffix("/api")
    assert rows["Prefect run"][0].startswith(f"{prefect_ui}/runs/flow-run/")
    assert len(stdout.splitlines()) <= 25 and "{" not in stdout
    assert "httpx" not in stderr and "HTTP Request" not in stderr, "request logs only with -v"
    assert "INFO prefect.flow_runs" in stderr, "the run's own logs still show"

    images = sorted((champion.data / "train_images").glob("*.jpg"))[:3]
    code, stdout, stderr = run_text(
        "predict", "--model", champion.uri, *map(str, images), "nope.jpg", home=champion.home
    )
    assert code == 0, stderr[-3000:]
    lines = stdout.splitlines()
    assert len(lines) == 6 and [line.split()[0] for line in lines[:4]] == [*map(str, images), "nope.jpg"]
    assert "error" in lines[3] and "no such file" in lines[3]
    assert re.match(r"4 images, 1 could not be predicted, \d+\.\d images/s$", lines[4]), lines[4]
    assert lines[5].startswith(f"model {champion.uri}, critical class"), lines[5]

    code, stdout, stderr = run_text(
        "evaluate", "--model", champion.uri, "--data", str(champion.data), home=champion.home
    )
    assert code == 0, stderr[-3000:]
    rows = cells(stdout)
    assert stdout.startswith(f"steelqc evaluate: {champion.uri}") and rows["images"] == ["120 scored, 0 quarantined"]
    assert re.fullmatch(r"\d\.\d{3}", rows["macro-F1"][0]) and "gate" not in stdout


def test_library_request_logs_are_quiet_unless_verbose() -> None:
    assert {"httpx", "urllib3", "alembic"} <= set(cli.NOISY_LOGGERS)
    loggers = [logging.getLogger(name) for name in cli.NOISY_LOGGERS]
    before = [logger.level for logger in loggers]
    try:
        cli.setup_logging(verbose=False)
        assert all(logger.level == logging.WARNING for logger in loggers)
        cli.setup_logging(verbose=True)
        assert all(logger.level == logging.NOTSET for logger in loggers), "-v: they follow the root (DEBUG)"
    finally:
        for logger, level in zip(loggers, before, strict=True):
            logger.setLevel(level)
