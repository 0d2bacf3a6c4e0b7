"""The readable summaries the CLI prints without --json (flows/summary.py), rendered as a terminal would."""

from __future__ import annotations

import copy
import io
import re

from rich.console import Console, RenderableType

from steelqc.flows import summary as readable

RUN = "/srv/steelqc/runs/train-20261204-081814-cb6939"

# Recorded from `steelqc train --profile tiny --json` (tiny data: too few test cracks, so the run refused to gate),
# paths moved under /srv/steelqc and the per-class figures, splits, data and alert keys trimmed.
REFUSED = {
    "run_id": "94701abf46ee4cd5a1949537ca575770",
    "model_version": "2",
    "metrics": {
        "n": 11,
        "threshold": 0.21454723179340363,
        "accuracy": 0.18181818181818182,
        "macro_f1": 0.15,
        "micro_f1": 0.18181818181818182,
        "roc_auc_macro": 0.635,
        "critical_class": "crack",
        "critical_recall": 0.0,
        "critical_precision": 0.0,
        "glare": {
            "f1_clean": 0.15,
            "f1_dim": 0.15,
            "f1_bright": 0.1733,
            "delta_f1": 0.0,
            "delta_f1_dim_bright": 0.0233,
        },
        "confidence_intervals": {"macro_f1": [0.0, 0.3333333333333333], "critical_recall": [0.0, 0.0]},
        "cam_in_mask": 0.23700706648864195,
        "per_class": {
            "ok": {"f1": 0.0, "support": 5},
            "crack": {"f1": 0.0, "support": 3},
            "scratch": {"f1": 0.25, "support": 1},
            "dent": {"f1": 0.0, "support": 1},
            "other": {"f1": 0.5, "support": 1},
        },
    },
    "gates": {
        "min_support": {
            "value": 1,
            "threshold": 5,
            "passed": False,
            "below": {"crack": 3, "scratch": 1, "dent": 1, "other": 1},
        },
        "macro_f1": {"value": 0.15, "threshold": 0.8, "passed": False, "rule": ">=", "ci95": [0.0, 0.3333]},
        "critical_recall": {"value": 0.0, "threshold": 0.95, "passed": False, "rule": ">=", "ci95": [0.0, 0.0]},
        "critical_precision": {"value": 0.0, "threshold": 0.5, "passed": False, "rule": ">="},
        "glare_delta_f1": {"value": 0.0, "threshold": 0.03, "passed": True, "rule": "<="},
        "champion": {
            "value": None,
            "threshold": {"macro_f1_tolerance": 0.005, "critical_recall": "not lower"},
            "passed": True,
            "champion_version": None,
            "reason": "no champion yet",
        },
        "passed": False,
        "refused": True,
        "reason": "refused to gate: 3 test images of the critical class 'crack', fewer than 5",
    },
    "promoted": False,
    "decision": "refused to gate: 3 test images of the critical class 'crack', fewer than 5",
    "aliases": {},
    "registered_model": "steel-defect-classifier",
    "champion_before": None,
    "train": {
        "best_checkpoint": f"{RUN}/checkpoints/best.pt",
        "best_epoch": 1,
        "best_val_macro_f1": 0.08,
        "epochs_run": 1,
        "stopped_early": False,
        "weights_used": "none (random init)",
        "seconds": 0.366,
        "device": "cpu",
    },
    "run_dir": RUN,
    "artifacts": {
        name: f"{RUN}/evaluation/{name}.png" for name in ("confusion_matrix", "roc", "mistakes", "glare", "gradcam")
    }
    | {"metrics": f"{RUN}/evaluation/metrics.json"},
    "tracking_uri": "sqlite:////srv/steelqc/mlflow.db",
    "flow_run_id": "f820968b-2a26-4892-9d88-94e8b3ea8f0c",
    "approval_policy": "auto",
    "seconds": 11.3,
}
LINKS = {"MLflow run": "http://127.0.0.1:5000/#/runs/94701abf46ee4cd5a1949537ca575770"}


def render(renderable: RenderableType, width: int = 120) -> str:
    console = Console(record=True, width=width, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


def cells(text: str) -> dict[str, list[str]]:
    """Each line's first cell -> its other cells (cells are apart by two spaces or more)."""
    split = (re.split(r"\s{2,}", line.strip()) for line in text.splitlines() if line.strip())
    return {row[0]: row[1:] for row in split}


def with_top_level_verdict(summary: dict) -> dict:
    """The summary as the training flow writes it once the verdict moved out of ``gates``."""
    moved = copy.deepcopy(summary)
    gates = moved["gates"]
    moved["verdict"] = {key: gates.pop(key) for key in ("passed", "refused", "reason")}
    return moved


def passed_against_a_champion() -> dict:
    """A second run whose gates pass, compared with champion v1 on the same test split, and promoted."""
    summary = with_top_level_verdict(REFUSED)
    summary.update(model_version="3", promoted=True, decision="champion", aliases={"champion": "3", "challenger": "3"})
    summary["metrics"].update(macro_f1=0.912, critical_recall=0.962, critical_precision=0.81)
    summary["metrics"]["confidence_intervals"] = {
        "macro_f1": [0.861, 0.955],
        "critical_recall": [0.88, 1.0],
        "glare_delta_f1": [0.0, 0.027],
    }
    summary["metrics"]["glare"]["delta_f1"] = 0.012
    gates = summary["gates"]
    gates["min_support"] = {"value": 9, "threshold": 5, "passed": True, "below": {}}
    for name, value in (("macro_f1", 0.912), ("critical_recall", 0.962), ("critical_precision", 0.81)):
        gates[name].update(value=value, passed=True)
    gates["glare_delta_f1"].update(value=0.012)
    gates["champion"] = {
        "value": {"macro_f1": 0.912, "critical_recall": 0.962},
        "threshold": {"macro_f1_tolerance": 0.005, "critical_recall": "not lower"},
        "passed": True,
        "champion_version": "1",
        "champion_macro_f1": 0.9,
        "champion_critical_recall": 0.95,
        "comparable": True,
    }
    summary["verdict"] = {"passed": True, "refused": False, "reason": "all gates passed"}
    return summary


def test_training_report_of_a_refused_run() -> None:
    text = render(readable.training_report(REFUSED, LINKS))
    assert "steelqc train: steel-defect-classifier v2" in text
    rows = cells(text)
    assert rows["macro-F1"] == ["0.150", "0.000–0.333", "≥ 0.80", "✗"]
    assert rows["critical recall (crack)"] == ["0.000", "0.000–0.000", "≥ 0.95", "✗"]
    assert rows["critical precision"] == ["0.000", "≥ 0.50", "✗"]
    assert rows["glare ΔF1 (largest drop)"] == ["0.000", "≤ 0.03", "✓"]
    assert rows["test images per class"][0].startswith("1 (below: crack 3, scratch 1")
    assert rows["vs champion"] == ["no champion yet", "≥ champion's (F1 −0.005)", "✓"]
    assert not {"passed", "refused", "reason"} & set(rows), "the verdict keys are no gate rows"
    assert rows["gates"] == ["✗ refused to gate: 3 test images of the critical class 'crack', fewer than 5"]
    assert rows["promoted"] == ["no"], "the decision is not repeated when it is the verdict"
    assert rows["aliases"] == ["none"] and rows["run folder"] == [RUN]
    assert rows["plots"] == ["evaluation/: confusion_matrix.png, roc.png, mistakes.png, glare.png, gradcam.png"]
    assert rows["MLflow run"] == [LINKS["MLflow run"]]
    assert rows["trained"] == ["1 epoch on cpu, best epoch 1 (val macro-F1 0.080), 0.4 s"]


def test_the_verdict_is_read_before_and_after_it_moves_out_of_gates() -> None:
    moved = with_top_level_verdict(REFUSED)
    assert readable.verdict(moved) == readable.verdict(REFUSED)
    assert readable.verdict(moved)["refused"] is True
    assert render(readable.training_report(moved, LINKS)) == render(readable.training_report(REFUSED, LINKS))
    both = copy.deepcopy(REFUSED) | {"verdict": {"passed": True, "refused": False, "reason": "all gates passed"}}
    assert readable.verdict(both)["passed"] is True, "the top-level verdict wins"


def test_training_report_of_a_promoted_run() -> None:
    text = render(readable.training_report(passed_against_a_champion(), LINKS))
    rows = cells(text)
    assert "steel-defect-classifier v3" in text and rows["gates"] == ["✓ all gates passed"] and "✗" not in text
    assert rows["macro-F1"] == ["0.912", "0.861–0.955", "≥ 0.80", "✓"]
    assert rows["critical recall (crack)"] == ["0.962", "0.880–1.000", "≥ 0.95", "✓"]
    assert rows["glare ΔF1 (largest drop)"] == ["0.012", "0.000–0.027", "≤ 0.03", "✓"]
    assert rows["vs champion"] == ["v1: F1 0.912 vs 0.900, recall 0.962 vs 0.950", "≥ champion's (F1 −0.005)", "✓"]
    assert rows["promoted"] == ["yes: champion"] and rows["aliases"] == ["champion v3, challenger v3"]


def test_training_report_is_short_and_fits_the_width() -> None:
    for width in (100, 120):
        text = render(readable.training_report(REFUSED, LINKS), width)
        assert len(text.splitlines()) <= 25
        assert max(len(line) for line in text.splitlines()) <= width


def test_demo_report_says_what_its_model_is_and_how_to_train_on_real_data() -> None:
    summary = passed_against_a_champion() | {
        "demo_data": "/srv/steelqc/demo-data/seed42-n800",
        "next": {"servers": "steelqc server start", "history": "steelqc registry history"},
    }
    text = " ".join(render(readable.demo_report(summary, LINKS)).split())
    assert "a model of generated images" in text and "not a model for real steel" in text
    assert "47 real Severstal images" in text and "macro-F1 0.08" in text
    assert "steelqc train --data DIR" in text and "train.csv + train_images/" in text
    assert "demo data /srv/steelqc/demo-data/seed42-n800" in text and "servers steelqc server start" in text


def test_evaluation_report_has_figures_without_gates() -> None:
    summary = {
        "model": "models:/steel-defect-classifier@champion",
        "data": "/data/severstal-sample",
        "n_images": 47,
        "quarantined": 0,
        "threshold": 0.31,
        "metrics": REFUSED["metrics"],
        "artifacts": REFUSED["artifacts"],
        "run_dir": "/srv/steelqc/runs/evaluate-1",
    }
    text = render(readable.evaluation_report(summary))
    assert "steelqc evaluate: models:/steel-defect-classifier@champion" in text
    assert "macro-F1" in text and "0.000–0.333" in text and "gate" not in text
    assert "47 scored, 0 quarantined" in text and "ok 0.000, crack 0.000, scratch 0.250" in text
    assert "Grad-CAM in mask  0.237" in text
    summary["metrics"] = passed_against_a_champion()["metrics"]
    rows = cells(render(readable.evaluation_report(summary)))
    assert rows["glare ΔF1 (largest drop)"] == ["0.012", "0.000–0.027"]


def test_the_glare_interval_comes_from_the_gate_when_metrics_lack_it() -> None:
    summary = passed_against_a_champion()
    del summary["metrics"]["confidence_intervals"]["glare_delta_f1"]
    summary["gates"]["glare_delta_f1"]["ci95"] = [0.002, 0.021]
    rows = cells(render(readable.training_report(summary, LINKS)))
    assert rows["glare ΔF1 (largest drop)"] == ["0.012", "0.002–0.021", "≤ 0.03", "✓"]


def test_predictions_one_line_per_image() -> None:
    summary = {
        "model": "models:/steel-defect-classifier@champion",
        "threshold": 0.3,
        "critical_class": "crack",
        "predictions": [
            {"image": "a.jpg", "label": "crack", "probabilities": {"ok": 0.1, "crack": 0.9}, "critical": True},
            {"image": "b.jpg", "label": "ok", "probabilities": {"ok": 0.8, "crack": 0.2}, "critical": False},
            {"image": "c.jpg", "label": None, "probabilities": None, "critical": None, "error": "no such file"},
        ],
        "failed": 1,
        "images_per_second": 12.345,
    }
    lines = render(readable.predictions(summary)).splitlines()
    assert len(lines) == 5
    assert lines[0].split() == ["a.jpg", "crack", "0.900", "CRITICAL"]
    assert lines[1].split() == ["b.jpg", "ok", "0.800"]
    assert lines[2].split()[:2] == ["c.jpg", "error"] and "no such file" in lines[2]
    assert lines[3] == "3 images, 1 could not be predicted, 12.3 images/s"
    assert lines[4] == "model models:/steel-defect-classifier@champion, critical class crack above 0.300"

    summary["predictions"][1] |= {"novelty": 9.0, "novel": True}
    lines = render(readable.predictions({**summary, "novel": 1, "novelty_threshold": 5.0})).splitlines()
    assert lines[1].split()[:4] == ["b.jpg", "ok", "0.800", "NOVEL"] and len(lines) == 6
    assert lines[5].startswith("1 NOVEL: unlike the training images")


def test_listing_keeps_every_line_short() -> None:
    summary = {
        "valid": 47,
        "by_class": {"ok": 5, "crack": 9},
        "warnings": ["class 'scratch' has 1 image(s), fewer than 3: too few to split " * 3, "second"],
        "counts": {"train": {"ok": 3}, "test": {"ok": 1}},
        "event": {"seq": 5, "action": "approve", "reason": "x" * 300},
        "servers": {"prefect": {"running": False, "log": "/srv/steelqc/servers/prefect.log"}},
    }
    text = render(readable.listing(summary), width=200)
    assert max(len(line.rstrip()) for line in text.splitlines()) <= readable.LIMIT + 20
    rows = cells(text)
    assert rows["valid"] == ["47"] and rows["by_class"] == ["ok 5, crack 9"]
    assert rows["warnings"] == [] and rows["-"] == ["second"], "a long list gets one line an entry"
    assert rows["counts"] == [] and rows["train"] == ["ok 3"] and rows["test"] == ["ok 1"]
    assert rows["prefect"] == ["running no, log /srv/steelqc/servers/prefect.log"]
    assert rows["reason"][0].endswith("…") and len(rows["reason"][0]) == readable.LIMIT, "a long value is cut"


def test_tuning_report_shows_small_learning_rates_and_explains_a_negative_best() -> None:
    summary = {
        "study_name": "steelqc-83da0c0390ac-ac65dde5-5d0cf4",
        "storage": "sqlite:////srv/steelqc/optuna.db",
        "n_trials": 4,
        "finished_trials": 4,
        "failed_trials": 0,
        "ran_here": 4,
        "workers": 2,
        "best_value": -0.933,
        "best_trial": 2,
        "best_params": {"lr": 3.2e-05, "batch_size": 16, "scheduler": "none", "model": "mobilenet_v2"},
        "run_dir": "/srv/steelqc/runs/train-1",
    }
    rows = cells(render(readable.tuning_report(summary, {"MLflow run": "http://127.0.0.1:5000/#/runs/abc"})))
    assert rows["best params"] == ["lr 3.2e-05, batch_size 16, scheduler none, model mobilenet_v2"]
    assert rows["best value"][0].startswith("-0.933 (trial 2): below 0, so no trial reached the critical-precision")
    assert rows["trials"] == ["4 finished, 0 failed, 4 in the study (4 run now by 2 worker(s))"]
    assert rows["MLflow run"] == ["http://127.0.0.1:5000/#/runs/abc"]


def test_training_report_names_the_training_processes_of_a_data_parallel_run() -> None:
    summary = copy.deepcopy(REFUSED)
    summary["train"]["distributed"] = {"world_size": 2, "backend": "gloo", "command": "torchrun ...", "ranks": []}
    rows = cells(render(readable.training_report(summary, LINKS)))
    assert rows["trained"] == ["1 epoch on cpu, best epoch 1 (val macro-F1 0.080), 0.4 s, 2 processes (gloo, torchrun)"]
