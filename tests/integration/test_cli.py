"""The `steelqc` command as users run it: one JSON object on stdout, logs on stderr, documented exit codes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from steelqc.tasks.data.split import SPLITS, load_split
from tests.helpers import make_folders, run, shared_path, write_csv, write_image


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
