"""Training on two data sources end to end (real Prefect, real MLflow, the tiny profile): per-source figures and
the source_macro_f1 gate."""

from __future__ import annotations

from pathlib import Path

import pytest

from steelqc.model_registry.gates import evaluate_gates
from steelqc.tasks.config import Gates
from steelqc.tasks.data.synth import generate_dataset
from tests.helpers import RELAXED, run, write_image

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_env")]


def test_two_sources_get_their_own_figures_and_a_weak_source_fails_its_gate(
    champion_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plant_b = tmp_path / "plant-b"
    generate_dataset(plant_b, n_images=60, seed=11, mix={0: 0.4, 1: 0.3, 2: 0.3})
    for key, value in RELAXED.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("STEELQC_GATES__MIN_SOURCE_MACRO_F1", "1.01")  # no source can reach it
    args = ["--data", f"plant-a={champion_data}", "--data", str(plant_b), "--profile", "tiny", "--json"]
    code, summary, stderr = run("train", *args, home=tmp_path / "home")
    assert code == 0, stderr[-3000:]
    per_source = summary["metrics"]["per_source"]
    assert set(per_source) == {"plant-a", "plant-b"}  # a bare DIR is named after its folder
    for figures in per_source.values():
        assert 0.0 <= figures["macro_f1"] <= 1.0 and figures["n"] == sum(figures["support"].values())
        assert len(figures["confidence_intervals"]["macro_f1"]) == 2
    assert sum(f["n"] for f in per_source.values()) == summary["metrics"]["n"]
    assert set(per_source["plant-b"]["support"]) <= {"ok", "crack", "scratch"}
    gate = summary["gates"]["source_macro_f1"]
    assert not gate["passed"] and gate["threshold"] == 1.01 and set(gate["below"]) == {"plant-a", "plant-b"}
    assert not summary["verdict"]["passed"] and "source_macro_f1" in summary["verdict"]["reason"]
    assert not summary["promoted"]
    assert summary["data"]["valid"] == 180
    # the same real figures against a floor between the two sources: only the weaker one fails
    low, high = sorted(f["macro_f1"] for f in per_source.values())
    if low < high:
        gates = Gates(min_source_macro_f1=(low + high) / 2, min_test_support_per_class=1)
        report = evaluate_gates(summary["metrics"], gates, "crack")
        weaker = min(per_source, key=lambda s: per_source[s]["macro_f1"])
        assert report.gates["source_macro_f1"].details["below"] == {weaker: low}


def test_ingest_takes_several_sources_and_names_a_bad_one(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for i, name in enumerate(["ok", "crack", "crack"]):
        write_image(a / name / f"{i}.png", (16, 24), "PNG", seed=i)
    for i, name in enumerate(["OK", "dent"]):
        write_image(b / name / f"{i}.png", (16, 24), "PNG", seed=10 + i)
    code, summary, stderr = run("ingest", f"plant-a={a}", f"plant-b={b}", "--json", home=tmp_path / "home")
    assert code == 0 and summary is not None, stderr[-2000:]
    assert summary["valid"] == 5 and sorted(summary["sources"]) == ["plant-a", "plant-b"]
    assert summary["sources"]["plant-b"]["by_class"] == {"ok": 1, "crack": 0, "dent": 1}
    (b / "rust").mkdir()
    write_image(b / "rust" / "r.png", (16, 24), "PNG", seed=20)
    code, error, _ = run("ingest", f"plant-a={a}", f"plant-b={b}", "--json", home=tmp_path / "home")
    assert code == 2 and "source 'plant-b': class 'rust' is not in the settings' class map" in error["error"]
