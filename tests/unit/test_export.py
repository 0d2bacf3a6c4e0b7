"""Export for the plant (tasks/model/export.py): ONNX and OpenVINO parity with torch on real (generated) images,
the export directory loads on its own and refuses unexpected files, and the INT8 gate as a pure function."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from steelqc.tasks.data.datasets import InputSpec
from steelqc.tasks.data.labels import LabelSpace
from steelqc.tasks.data.synth import generate_dataset
from steelqc.tasks.model import export as ex
from steelqc.tasks.model.models import build_model

SPACE = LabelSpace({0: "ok", 1: "crack", 2: "scratch", 3: "dent", 4: "other"}, "crack")
SPEC = InputSpec(height=64, width=320)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    out = tmp_path_factory.mktemp("export-data") / "data"
    generate_dataset(out, n_images=20, seed=5)
    return [str(p) for p in sorted((out / "train_images").glob("*.jpg"))]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, images: list[str]) -> tuple[Path, dict, torch.nn.Module]:
    torch.manual_seed(0)
    model, _ = build_model("simple_cnn", SPACE.num_classes, weights="none", in_channels=3)
    model.eval()
    test = pd.DataFrame({"path": images[10:], "label": [i % 5 for i in range(len(images[10:]))]})
    request = ex.ExportRequest(
        model, "simple_cnn", SPACE, SPEC, 0.3, {"model_uri": "test"}, images[:4], images[:10], test, latency_runs=3
    )
    out = tmp_path_factory.mktemp("export") / "out"
    return out, ex.export_model(request, out), model


def test_onnx_and_openvino_match_torch(exported, images: list[str]) -> None:
    out, summary, model = exported
    for fmt in ("onnx", "openvino"):
        figures = summary["parity"][fmt]
        assert figures["n_images"] == 4 and figures["max_abs_diff"] < 1e-4 and figures["decision_agreement"] == 1.0
    recorded = json.loads((out / ex.PARITY_FILE).read_text())
    assert recorded["parity"]["onnx"] == summary["parity"]["onnx"]
    # the files themselves: a batch of 3 (dynamic batch axis) through each runtime against torch
    inputs = ex.model_inputs(images[:3], SPEC, SPACE)
    reference = ex.torch_proba(model, inputs)
    for fmt in ("onnx", "openvino"):
        got = ex.runner_for(out, fmt)(inputs)
        assert got.shape == (3, SPACE.num_classes)
        np.testing.assert_allclose(got, reference, atol=1e-4)


def test_bundle_describes_the_export(exported) -> None:
    out, summary, _ = exported
    bundle = json.loads((out / ex.BUNDLE_FILE).read_text())
    assert bundle["format"] == ex.EXPORT_FORMAT and bundle["architecture"] == "simple_cnn"
    assert bundle["threshold"] == 0.3 and bundle["label_space"] == SPACE.to_dict()
    assert bundle["input_spec"] == SPEC.to_dict() and bundle["input_spec"]["image_channels"] == 1
    assert bundle["source"] == {"model_uri": "test"}
    assert {"model.onnx", "model.xml", "model.bin"} <= set(bundle["files"])
    assert bundle["files"]["model.onnx"] == ex.sha256_file(out / "model.onnx")
    assert bundle["recommended"] in bundle["formats"] and bundle["int8"]["reason"]
    for fmt, item in summary["int8"]["candidates"].items():
        assert set(item["gate"]) >= {"passed", "reason"} and item["latency"]["p50_ms"] > 0, fmt
    published = summary["int8"]["published"]
    if published:
        kept = "openvino-int8" if published.startswith("openvino") else "onnx-int8"
        assert set(ex.FORMAT_FILES[kept]) <= set(bundle["files"]) and kept in summary["latency"]
    assert not [p for p in out.iterdir() if p.name not in ex.MODEL_FILES | ex.METADATA_FILES]


def test_export_loads_on_its_own(exported, images: list[str]) -> None:
    out, _, model = exported
    reference = ex.torch_proba(model, ex.model_inputs(images[:2], SPEC, SPACE))
    for fmt in ("onnx", "openvino"):
        loaded = ex.load_export(out, fmt)
        assert loaded.threshold == 0.3 and loaded.label_space == SPACE and loaded.spec == SPEC
        proba = loaded.predict_proba(images[:2])
        np.testing.assert_allclose(proba, reference, atol=1e-4)
        assert list(loaded.decide(proba)) == list(ex.decide(reference, SPACE.critical_index, 0.3))
    assert ex.load_export(out).fmt == json.loads((out / ex.BUNDLE_FILE).read_text())["recommended"]


@pytest.mark.parametrize(
    ("name", "content", "words"),
    [("model.pkl", b"x", "pickle"), ("loader.py", b"print(1)", "code file"), ("notes.txt", b"x", "unexpected")],
)
def test_export_refuses_unexpected_files(exported, tmp_path: Path, name: str, content: bytes, words: str) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(exported[0], copy)
    (copy / name).write_bytes(content)
    with pytest.raises(ex.UnsafeExport, match=words):
        ex.load_export(copy)


def test_export_refuses_changed_files_and_folders(exported, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(exported[0], copy)
    with (copy / "model.onnx").open("ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ex.UnsafeExport, match="SHA-256"):
        ex.load_export(copy, "onnx")
    shutil.copytree(exported[0], tmp_path / "other")
    (tmp_path / "other" / "code").mkdir()
    with pytest.raises(ex.UnsafeExport, match="folder"):
        ex.load_export(tmp_path / "other")
    (tmp_path / "link").mkdir()
    (tmp_path / "link" / ex.BUNDLE_FILE).symlink_to(exported[0] / ex.BUNDLE_FILE)
    with pytest.raises(ex.UnsafeExport, match="symbolic link"):
        ex.check_export_dir(tmp_path / "link")


def test_export_refuses_a_non_empty_directory(exported) -> None:
    with pytest.raises(FileExistsError):
        ex.export_model(ex.ExportRequest(exported[2], "simple_cnn", SPACE, SPEC, 0.3, {}, []), exported[0])


# ------------------------------------------------------------------------------------------------ INT8 gate


def test_int8_gate_passes_within_the_margin() -> None:
    gate = ex.int8_gate({"macro_f1": 0.95, "critical_recall": 1.0}, {"macro_f1": 0.941, "critical_recall": 1.0})
    assert gate.passed and "within 0.01" in gate.reason


def test_int8_gate_fails_on_macro_f1() -> None:
    gate = ex.int8_gate({"macro_f1": 0.95, "critical_recall": 1.0}, {"macro_f1": 0.939, "critical_recall": 1.0})
    assert not gate.passed and "macro-F1 0.9390 is more than 0.01 below FP32's 0.9500" in gate.reason


def test_int8_gate_fails_on_lower_critical_recall() -> None:
    gate = ex.int8_gate({"macro_f1": 0.95, "critical_recall": 1.0}, {"macro_f1": 0.96, "critical_recall": 0.98})
    assert not gate.passed and "critical recall 0.9800 is lower" in gate.reason


def test_int8_gate_fails_without_figures() -> None:
    gate = ex.int8_gate({"macro_f1": 0.95, "critical_recall": None}, {"macro_f1": 0.95, "critical_recall": None})
    assert not gate.passed and "missing" in gate.reason


def test_parity_counts_decision_flips_under_the_threshold() -> None:
    a = np.array([[0.5, 0.31, 0.19], [0.6, 0.2, 0.2]], dtype=np.float32)
    b = np.array([[0.52, 0.29, 0.19], [0.6, 0.2, 0.2]], dtype=np.float32)
    figures = ex.parity(a, b, critical_index=1, threshold=0.3)  # image 0: critical in a, not in b
    assert figures["disagreements"] == 1 and figures["decision_agreement"] == 0.5
    assert figures["max_abs_diff"] == pytest.approx(0.02, abs=1e-6)


def _candidate(passed: bool, ms: float) -> dict:
    return {"gate": {"passed": passed, "reason": "why"}, "latency": {"p50_ms": ms}}


def test_choose_int8_keeps_the_fastest_passing_candidate() -> None:
    candidates = {"a": _candidate(True, 3.0), "b": _candidate(True, 2.0), "c": _candidate(False, 1.0)}
    best, reason = ex.choose_int8(candidates, fastest_fp32_ms=4.0)
    assert best == "b" and reason.startswith("b published")


def test_choose_int8_publishes_nothing_slower_than_fp32_or_failing() -> None:
    best, reason = ex.choose_int8({"a": _candidate(True, 5.0)}, fastest_fp32_ms=4.0)
    assert best is None and "not faster than float32's 4.00 ms" in reason
    best, reason = ex.choose_int8({"a": _candidate(False, 1.0)}, fastest_fp32_ms=4.0)
    assert best is None and reason == "no INT8 candidate passed the gate: a: why"
