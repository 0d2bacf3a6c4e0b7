"""The shadow comparison's pure part: which reviewed images are scored, and the two models side by side."""

from __future__ import annotations

from pathlib import Path

import pytest

from steelqc.flows.approval import shadow_rows
from steelqc.monitoring.shadow import reviewed_frame, shadow_comparison

NAMES = ["ok", "crack", "scratch"]


def records(tmp_path: Path) -> list[dict]:
    out = []
    for i, label in enumerate(["crack", "crack", "ok", "scratch"]):
        path = tmp_path / label / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
        out.append({"sha256": f"{i}" * 64, "reviewed_as": label, "reviewed_image": str(path),
                    "reviewed_at": f"2026-12-0{i + 1}T00:00:00+00:00"})  # fmt: skip
    out.append({"sha256": "9" * 64, "reviewed_as": "ok", "reviewed_image": str(tmp_path / "gone.png")})
    out.append({"sha256": "8" * 64, "reviewed_as": None, "reviewed_image": str(path)})  # not reviewed
    out.append(
        {
            "sha256": "7" * 64,
            "reviewed_as": "ok",
            "reviewed_image": str(path),
            "training_run": "r1",
            "reviewed_at": "2026-12-09T00:00:00+00:00",
        }
    )  # a training run's own test image, not from the line
    return out


def test_reviewed_frame_newest_first_capped_and_only_images_still_there(tmp_path: Path) -> None:
    frame = reviewed_frame(records(tmp_path), limit=10)
    assert frame["sha256"].str[0].tolist() == ["3", "2", "1", "0"]
    assert reviewed_frame(records(tmp_path), limit=2)["sha256"].str[0].tolist() == ["3", "2"]
    assert reviewed_frame(records(tmp_path), limit=0).empty and reviewed_frame([], 5).empty


def test_side_by_side_figures_missed_criticals_and_disagreements(tmp_path: Path) -> None:
    frame = reviewed_frame(records(tmp_path), limit=10)  # truth, newest first: scratch, ok, crack, crack
    champion = ["scratch", "ok", "ok", "crack"]  # misses one crack
    challenger = ["scratch", "crack", "crack", "crack"]  # finds both, one false crack
    out = shadow_comparison(frame, challenger, champion, NAMES, "crack", challenger_version="4", champion_version="3")
    new, old = out["challenger"], out["champion"]
    assert (out["n_images"], out["critical"], new["version"], old["version"]) == (4, "crack", "4", "3")
    crack_new = next(r for r in new["classes"] if r["class"] == "crack")
    crack_old = next(r for r in old["classes"] if r["class"] == "crack")
    assert (crack_new["recall"], crack_new["precision"], crack_new["support"]) == (1.0, pytest.approx(2 / 3), 2)
    assert (crack_old["recall"], crack_old["precision"]) == (0.5, 1.0)
    assert (new["missed_critical"], old["missed_critical"]) == (0, 1)
    assert (new["accuracy"], old["accuracy"]) == (0.75, 0.75)
    assert out["n_disagree"] == 2
    assert [(d["reviewed_as"], d["champion"], d["challenger"]) for d in out["disagreements"]] == [
        ("ok", "ok", "crack"), ("crack", "ok", "crack")
    ]  # fmt: skip
    assert shadow_comparison(frame, challenger, champion, NAMES, "crack", max_listed=1)["n_disagree"] == 2
    assert len(shadow_comparison(frame, challenger, champion, NAMES, "crack", max_listed=1)["disagreements"]) == 1

    alone = shadow_comparison(frame, challenger, None, NAMES, "crack")
    assert alone["champion"] is None and alone["n_disagree"] == 0 and alone["challenger"]["missed_critical"] == 0
    with pytest.raises(ValueError, match="one label per reviewed image"):
        shadow_comparison(frame, challenger[:3], None, NAMES, "crack")

    text = "\n".join(shadow_rows(out))
    assert "### On 4 images reviewed at the line (shadow comparison)" in text
    assert "| crack | 2 | 1.0000 | 0.5000 | 0.6667 | 1.0000 |" in text
    assert "| crack missed | | 1 | | 0 | |" in text and "differently on **2**" in text
    assert shadow_rows(None) == [] and "Could not be scored: boom" in "\n".join(
        shadow_rows({"n_images": 3, "error": "boom"})
    )
