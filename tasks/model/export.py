"""Export a trained model for the plant: ONNX (dynamic batch axis) and OpenVINO IR, with a parity check against
torch and optional INT8 post-training static quantisation behind a quality gate.

An export directory is usable on its own: ``bundle.json`` (label space, input spec, calibrated threshold,
architecture, the source model, the SHA-256 of every model file) next to the model files, and ``parity.json``
(the figures). Loading an export never runs code: ONNX and OpenVINO IR are data, and :func:`check_export_dir`
refuses a directory holding anything but the files it names (a ``*.pkl``, a ``.py``, a symlink, a folder).

Every model file takes a float32 ``N x C x H x W`` batch named ``image`` (made by
:func:`~steelqc.tasks.data.datasets.to_model_tensor` from the decoded image, as ``input_spec`` says) and returns
``N x K`` softmax probabilities named ``probabilities``; decisions use the calibrated threshold
(:func:`~steelqc.tasks.evaluation.metrics.decide`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from steelqc.tasks.data.datasets import InputSpec, ManifestDataset
from steelqc.tasks.data.labels import LabelSpace
from steelqc.tasks.evaluation.metrics import compute_metrics, decide
from steelqc.tasks.fileio import sha256_file

log = logging.getLogger(__name__)

EXPORT_FORMAT = "steelqc-export/1"
BUNDLE_FILE = "bundle.json"
PARITY_FILE = "parity.json"
INPUT_NAME, OUTPUT_NAME = "image", "probabilities"
OPSET = 18
# format name -> the files it is made of (the first is the one a runtime opens)
FORMAT_FILES: dict[str, tuple[str, ...]] = {
    "onnx": ("model.onnx",),
    "openvino": ("model.xml", "model.bin"),
    "onnx-int8": ("model.int8.onnx",),
    "openvino-int8": ("model.int8.xml", "model.int8.bin"),
}
METADATA_FILES = frozenset({BUNDLE_FILE, PARITY_FILE})
MODEL_FILES = frozenset(name for files in FORMAT_FILES.values() for name in files)
PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib", ".cloudpickle", ".pt", ".pth")
CODE_SUFFIXES = (".py", ".pyc", ".pyo", ".pyw", ".so", ".dll", ".dylib")
MAX_F1_DROP = 0.01


class UnsafeExport(ValueError):
    """An export directory steelqc refuses to load: unexpected files, or files whose SHA-256 changed."""


# ------------------------------------------------------------------------------------------------ inputs


def model_inputs(paths: Sequence[str | Path], spec: InputSpec, label_space: LabelSpace) -> np.ndarray:
    """Float32 ``N x C x H x W`` inputs of image files, preprocessed exactly as evaluation and inference do."""
    frame = pd.DataFrame({"path": [str(p) for p in paths]})
    dataset = ManifestDataset(frame, label_space, spec, train=False)
    if len(dataset) == 0:
        return np.zeros((0, spec.channels, spec.height, spec.width), dtype=np.float32)
    return np.stack([dataset[i][0].numpy() for i in range(len(dataset))]).astype(np.float32)


class _WithSoftmax(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x), dim=1)


@torch.inference_mode()
def torch_proba(model: nn.Module, inputs: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """Softmax probabilities of the torch model (float32, eval mode, CPU) on ready inputs."""
    model = model.float().to("cpu", memory_format=torch.contiguous_format).eval()
    outs = [
        torch.softmax(model(torch.from_numpy(inputs[i : i + batch_size])).float(), dim=1).numpy()
        for i in range(0, len(inputs), batch_size)
    ]
    return np.concatenate(outs) if outs else np.zeros((0, 0), dtype=np.float32)


# ------------------------------------------------------------------------------------------------ formats


def export_onnx(model: nn.Module, spec: InputSpec, path: Path) -> Path:
    """The model with a softmax head as ONNX (opset 18, torch's dynamo exporter), batch axis dynamic."""
    wrapped = _WithSoftmax(model.float().to("cpu", memory_format=torch.contiguous_format).eval()).eval()
    example = torch.zeros(2, spec.channels, spec.height, spec.width)
    batch = torch.export.Dim("batch", min=1, max=4096)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        wrapped, (example,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
        dynamo=True, opset_version=OPSET, dynamic_shapes=({0: batch},), external_data=False, verbose=False,
    )  # fmt: skip
    return path


def export_openvino(onnx_path: Path, xml_path: Path) -> Path:
    """OpenVINO IR (``.xml`` + ``.bin``, float32 weights) converted from the ONNX file."""
    import openvino as ov  # noqa: PLC0415  (heavy; only the export and OpenVINO runs need it)

    ov.save_model(ov.convert_model(str(onnx_path)), str(xml_path), compress_to_fp16=False)
    return xml_path


Runner = Callable[[np.ndarray], np.ndarray]


def onnx_runner(path: Path, threads: int = 2) -> Runner:
    """``inputs -> probabilities`` through ONNX Runtime's CPU provider with ``threads`` intra-op threads."""
    import onnxruntime as ort  # noqa: PLC0415

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda x: session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32)})[0]


def openvino_runner(xml_path: Path, threads: int = 2) -> Runner:
    """``inputs -> probabilities`` through OpenVINO's CPU plugin (latency hint, ``threads`` threads)."""
    import openvino as ov  # noqa: PLC0415

    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"}
    compiled = ov.Core().compile_model(str(xml_path), "CPU", config)
    request = compiled.create_infer_request()

    def run(x: np.ndarray) -> np.ndarray:
        return np.asarray(request.infer({0: np.ascontiguousarray(x, dtype=np.float32)})[0]).copy()

    return run


def runner_for(root: Path, fmt: str, threads: int = 2) -> Runner:
    """The runner of one exported format in ``root``."""
    first = root / FORMAT_FILES[fmt][0]
    return openvino_runner(first, threads) if fmt.startswith("openvino") else onnx_runner(first, threads)


def run_batched(runner: Runner, inputs: np.ndarray, batch_size: int = 16) -> np.ndarray:
    return np.concatenate([runner(inputs[i : i + batch_size]) for i in range(0, len(inputs), batch_size)])


# ------------------------------------------------------------------------------------------------ parity, latency


def parity(reference: np.ndarray, other: np.ndarray, critical_index: int, threshold: float | None) -> dict[str, Any]:
    """The largest absolute probability difference and the share of images whose decision (under the calibrated
    threshold) agrees between ``reference`` (torch) and ``other`` (an exported format)."""
    if reference.shape != other.shape:
        raise ValueError(f"probabilities of shape {reference.shape} and {other.shape} cannot be compared")
    a, b = decide(reference, critical_index, threshold), decide(other, critical_index, threshold)
    n = len(a)
    return {
        "n_images": n,
        "max_abs_diff": float(np.max(np.abs(reference - other))) if n else 0.0,
        "decision_agreement": float(np.mean(a == b)) if n else 1.0,
        "disagreements": int(np.sum(a != b)),
    }


def percentiles(fn: Callable[[int], Any], warm: int, runs: int) -> dict[str, float]:
    """Median, 95th percentile and best (ms) of ``fn(i)`` over ``runs`` calls after ``warm`` calls."""
    for i in range(warm):
        fn(i)
    times = []
    for i in range(runs):
        start = time.perf_counter()
        fn(i)
        times.append((time.perf_counter() - start) * 1000.0)
    return {
        "p50_ms": round(float(np.percentile(times, 50)), 3),
        "p95_ms": round(float(np.percentile(times, 95)), 3),
        "min_ms": round(min(times), 3),
        "runs": runs,
    }


def latency_ms(runner: Runner, sample: np.ndarray, warm: int = 3, runs: int = 10) -> dict[str, float]:
    """Batch-1 latency of ``runner`` on one input (``sample[:1]``): :func:`percentiles` after ``warm`` runs."""
    one = np.ascontiguousarray(sample[:1])
    return percentiles(lambda _: runner(one), warm, runs)


# ------------------------------------------------------------------------------------------------ INT8


@dataclass(frozen=True)
class Int8Gate:
    """The INT8 gate's verdict: ``passed`` and, always, the ``reason`` in words."""

    passed: bool
    reason: str
    macro_f1_fp32: float | None = None
    macro_f1_int8: float | None = None
    critical_recall_fp32: float | None = None
    critical_recall_int8: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def int8_gate(fp32: dict[str, Any], int8: dict[str, Any], max_f1_drop: float = MAX_F1_DROP) -> Int8Gate:
    """INT8 passes when its macro-F1 is within ``max_f1_drop`` of float32's and its critical recall is not lower
    (both from :func:`~steelqc.tasks.evaluation.metrics.compute_metrics` on the same test images). A missing
    figure fails: INT8 must earn its place."""
    f1_a, f1_b = fp32.get("macro_f1"), int8.get("macro_f1")
    rec_a, rec_b = fp32.get("critical_recall"), int8.get("critical_recall")
    figures = {
        "macro_f1_fp32": f1_a, "macro_f1_int8": f1_b, "critical_recall_fp32": rec_a, "critical_recall_int8": rec_b,
    }  # fmt: skip
    if None in (f1_a, f1_b, rec_a, rec_b):
        return Int8Gate(False, "no test figures to compare (macro-F1 or critical recall missing)", **figures)
    if f1_b < f1_a - max_f1_drop - 1e-12:
        reason = f"INT8 macro-F1 {f1_b:.4f} is more than {max_f1_drop} below FP32's {f1_a:.4f}"
        return Int8Gate(False, reason, **figures)
    if rec_b < rec_a - 1e-12:
        return Int8Gate(False, f"INT8 critical recall {rec_b:.4f} is lower than FP32's {rec_a:.4f}", **figures)
    reason = (
        f"INT8 macro-F1 {f1_b:.4f} vs FP32 {f1_a:.4f} (within {max_f1_drop}), critical recall {rec_b:.4f} ≥ {rec_a:.4f}"
    )
    return Int8Gate(True, reason, **figures)


class _Calibration:
    """ONNX Runtime's calibration reader over ready inputs, one image at a time."""

    def __init__(self, inputs: np.ndarray) -> None:
        self._items = iter([{INPUT_NAME: inputs[i : i + 1]} for i in range(len(inputs))])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._items, None)


def quantize_onnx(
    fp32_path: Path, out_path: Path, calibration: np.ndarray, per_channel: bool, qoperator: bool = False
) -> Path:
    """ONNX Runtime static INT8: ``quant_pre_process`` first, then QDQ (or, with ``qoperator``, the QOperator format:
    QLinearConv and friends) with unsigned activations and signed weights (per-channel or per-tensor), calibrated
    on ``calibration`` (MinMax)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static  # noqa: PLC0415
    from onnxruntime.quantization.shape_inference import quant_pre_process  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="steelqc-quant-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared), str(out_path), _Calibration(calibration),
            quant_format=QuantFormat.QOperator if qoperator else QuantFormat.QDQ,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=per_channel,
        )  # fmt: skip
    return out_path


def quantize_openvino(xml_path: Path, out_xml: Path, calibration: np.ndarray) -> Path:
    """OpenVINO INT8 through NNCF's post-training quantisation, calibrated on ``calibration``."""
    import nncf  # noqa: PLC0415
    import openvino as ov  # noqa: PLC0415

    model = ov.Core().read_model(str(xml_path))
    items = [calibration[i : i + 1] for i in range(len(calibration))]
    with contextlib.redirect_stdout(sys.stderr):  # NNCF's progress bars: stdout stays for the command's JSON
        quantized = nncf.quantize(model, nncf.Dataset(items), subset_size=max(1, len(items)))
    ov.save_model(quantized, str(out_xml), compress_to_fp16=False)
    return out_xml


# ------------------------------------------------------------------------------------------------ the directory


def _describe(name: str) -> str:
    if name.lower().endswith(PICKLE_SUFFIXES):
        return f"a pickle file {name} (unpickling runs code)"
    if name.lower().endswith(CODE_SUFFIXES):
        return f"a code file {name}"
    return f"an unexpected file {name}"


def check_export_dir(root: Path | str) -> dict[str, Any]:
    """bundle.json of an export directory that holds only what an export may hold, every listed file matching its
    recorded SHA-256. Raises :class:`UnsafeExport` naming every offending entry. Reads JSON only; runs nothing."""
    root = Path(root)
    if not root.is_dir():
        raise UnsafeExport(f"{root} is not an export directory")
    problems = []
    for entry in sorted(root.iterdir()):
        if entry.is_symlink():
            problems.append(f"a symbolic link {entry.name}")
        elif entry.is_dir():
            problems.append(f"an unexpected folder {entry.name}/")
        elif entry.name not in METADATA_FILES and entry.name not in MODEL_FILES:
            problems.append(_describe(entry.name))
    if problems:
        raise UnsafeExport(f"refusing to load the export in {root}: " + "; ".join(problems))
    bundle_path = root / BUNDLE_FILE
    if not bundle_path.is_file():
        raise UnsafeExport(f"{root} holds no {BUNDLE_FILE}")
    bundle = json.loads(bundle_path.read_text())
    if bundle.get("format") != EXPORT_FORMAT:
        raise UnsafeExport(f"{bundle_path}: not a steelqc export (format {bundle.get('format')!r})")
    recorded: dict[str, str] = bundle.get("files") or {}
    for name in sorted(MODEL_FILES & {p.name for p in root.iterdir()}):
        if name not in recorded:
            raise UnsafeExport(f"{name} in {root} is not recorded in {BUNDLE_FILE}")
    for name, expected in recorded.items():
        if name not in MODEL_FILES:
            raise UnsafeExport(f"{BUNDLE_FILE} lists {name!r}, which no export holds")
        path = root / name
        if not path.is_file():
            raise UnsafeExport(f"{BUNDLE_FILE} lists {name} but {root} does not hold it")
        if sha256_file(path) != expected:
            raise UnsafeExport(f"{name}: SHA-256 does not match {BUNDLE_FILE}: the file was changed or corrupted")
    return bundle


@dataclass
class ExportedModel:
    """An export directory loaded for inference in one format (ONNX Runtime or OpenVINO); no torch model."""

    root: Path
    fmt: str
    bundle: dict[str, Any]
    label_space: LabelSpace
    spec: InputSpec
    threshold: float | None
    run: Runner = field(repr=False)

    def predict_proba(self, paths: Sequence[str | Path], batch_size: int = 16) -> np.ndarray:
        inputs = model_inputs(paths, self.spec, self.label_space)
        if len(inputs) == 0:
            return np.zeros((0, self.label_space.num_classes), dtype=np.float32)
        return run_batched(self.run, inputs, batch_size)

    def decide(self, proba: np.ndarray) -> np.ndarray:
        return decide(proba, self.label_space.critical_index, self.threshold)


def load_export(root: Path | str, fmt: str | None = None, threads: int = 2) -> ExportedModel:
    """Load an export directory (after :func:`check_export_dir`) in ``fmt`` (default: bundle.json's
    ``recommended`` format)."""
    root = Path(root)
    bundle = check_export_dir(root)
    fmt = fmt or bundle.get("recommended") or "onnx"
    if fmt not in bundle.get("formats", {}):
        raise ValueError(f"{root} holds no {fmt!r} model (it holds {', '.join(bundle.get('formats', {}))})")
    return ExportedModel(
        root, fmt, bundle, LabelSpace.from_dict(bundle["label_space"]), InputSpec.from_dict(bundle["input_spec"]),
        bundle.get("threshold"), runner_for(root, fmt, threads),
    )  # fmt: skip


# ------------------------------------------------------------------------------------------------ the whole export


@dataclass
class ExportRequest:
    """What :func:`export_model` needs: the torch model and its description, and the images for parity,
    INT8 calibration (training images) and the INT8 gate (the test split: ``path`` and ``label``)."""

    model: nn.Module
    architecture: str
    label_space: LabelSpace
    spec: InputSpec
    threshold: float | None
    source: dict[str, Any]
    parity_paths: list[str]
    calibration_paths: list[str] = field(default_factory=list)
    test_frame: pd.DataFrame | None = None
    int8: bool = True
    threads: int = 2
    latency_runs: int = 10


def _test_metrics(proba: np.ndarray, request: ExportRequest, labels: np.ndarray) -> dict[str, Any]:
    space = request.label_space
    metrics = compute_metrics(labels, proba, space.names, space.critical_index, request.threshold)
    keep = ("macro_f1", "critical_recall", "critical_precision", "accuracy", "n")
    return {k: metrics.get(k) for k in keep}


def _int8_candidates(root: Path, work: Path, calibration: np.ndarray) -> dict[str, str]:
    """Each INT8 candidate, made in ``work`` from the float32 files of ``root``."""
    made: dict[str, str] = {}
    attempts = {
        "onnx-int8-per-channel": lambda p: quantize_onnx(root / "model.onnx", p, calibration, per_channel=True),
        "onnx-int8-per-tensor": lambda p: quantize_onnx(root / "model.onnx", p, calibration, per_channel=False),
        "onnx-int8-qoperator": lambda p: quantize_onnx(root / "model.onnx", p, calibration, False, qoperator=True),
        "openvino-int8": lambda p: quantize_openvino(root / "model.xml", p, calibration),
    }
    for name, make in attempts.items():
        suffix = ".xml" if name.startswith("openvino") else ".onnx"
        made[name] = str(make(work / f"{name}{suffix}"))
    return made


def _evaluate_int8(root: Path, request: ExportRequest, summary: dict[str, Any]) -> None:
    """Quantise, gate each candidate on the test split against FP32, keep the fastest that passes (if any)."""
    if not request.int8 or not request.calibration_paths or request.test_frame is None or not len(request.test_frame):
        summary["int8"] = {
            "published": None,
            "reason": "INT8 skipped: not asked for, or no training images or test split",
        }
        return
    space = request.label_space
    calibration = model_inputs(request.calibration_paths, request.spec, space)
    test_inputs = model_inputs(list(request.test_frame["path"]), request.spec, space)
    labels = np.array([space.index_of(v) for v in request.test_frame["label"]])
    fp32 = _test_metrics(run_batched(onnx_runner(root / "model.onnx", request.threads), test_inputs), request, labels)
    with tempfile.TemporaryDirectory(prefix="steelqc-int8-") as work:
        candidates = _gate_candidates(root, Path(work), request, calibration, test_inputs, labels, fp32)
        _publish_int8(root, summary, candidates, fp32)


def _gate_candidates(
    root: Path, work: Path, request: ExportRequest, calibration: np.ndarray, test_inputs: np.ndarray,
    labels: np.ndarray, fp32: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    candidates: dict[str, Any] = {}
    for name, path in _int8_candidates(root, work, calibration).items():
        runner = (
            openvino_runner(Path(path), request.threads)
            if name.startswith("openvino")
            else onnx_runner(Path(path), request.threads)
        )
        metrics = _test_metrics(run_batched(runner, test_inputs), request, labels)
        gate = int8_gate(fp32, metrics)
        candidates[name] = {"path": path, "metrics": metrics, "gate": gate.to_dict(),
                            "latency": latency_ms(runner, test_inputs, runs=request.latency_runs)}  # fmt: skip
    return candidates


def choose_int8(candidates: dict[str, Any], fastest_fp32_ms: float) -> tuple[str | None, str]:
    """The INT8 candidate to publish and why: the fastest that passed its gate, and only when it is faster than
    the fastest float32 format (INT8 must earn its place); else None and the reason, candidate by candidate.
    ``candidates``: name -> {"gate": {"passed", "reason"}, "latency": {"p50_ms"}}."""
    passing = {k: v for k, v in candidates.items() if v["gate"]["passed"]}
    if not passing:
        failed = "; ".join(f"{k}: {v['gate']['reason']}" for k, v in candidates.items())
        return None, f"no INT8 candidate passed the gate: {failed or 'none was made'}"
    best = min(passing, key=lambda k: passing[k]["latency"]["p50_ms"])
    ms = passing[best]["latency"]["p50_ms"]
    if ms >= fastest_fp32_ms:
        return None, (
            f"INT8 not published: {best} passed the gate but ran {ms:.2f} ms at batch 1, not faster than float32's "
            f"{fastest_fp32_ms:.2f} ms"
        )
    return (
        best,
        f"{best} published ({ms:.2f} ms vs float32's {fastest_fp32_ms:.2f} ms): {passing[best]['gate']['reason']}",
    )


def _publish_int8(root: Path, summary: dict[str, Any], candidates: dict[str, Any], fp32: dict[str, Any]) -> None:
    """Move the chosen candidate (:func:`choose_int8`) into ``root``, or record why none is published."""
    fastest_fp32 = min(v["p50_ms"] for v in summary["latency"].values())
    best, reason = choose_int8(candidates, fastest_fp32)
    if best is not None:
        kept = "openvino-int8" if best.startswith("openvino") else "onnx-int8"
        _move_model(Path(candidates[best]["path"]), root / FORMAT_FILES[kept][0])
        summary["formats"][kept] = list(FORMAT_FILES[kept])
        summary["latency"][kept] = candidates[best]["latency"]
    for item in candidates.values():
        item.pop("path")
    summary["int8"] = {"published": best, "reason": reason, "fp32_test": fp32, "candidates": candidates}


def _model_parts(path: Path) -> list[Path]:
    return [path, path.with_suffix(".bin")] if path.suffix == ".xml" else [path]


def _move_model(source: Path, target: Path) -> None:
    """Move a model file (an IR's .xml with its .bin: OpenVINO finds the .bin by the .xml's stem)."""
    for src, dst in zip(_model_parts(source), _model_parts(target), strict=True):
        shutil.move(src, dst)


def export_model(request: ExportRequest, out: Path) -> dict[str, Any]:
    """Write the export directory ``out`` (ONNX, OpenVINO IR, INT8 when it passes its gate, bundle.json,
    parity.json); returns the summary (also what ``parity.json`` and bundle.json record)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()):
        raise FileExistsError(f"export directory {out} is not empty")
    space = request.label_space
    export_onnx(request.model, request.spec, out / "model.onnx")
    export_openvino(out / "model.onnx", out / "model.xml")
    summary: dict[str, Any] = {"formats": {"onnx": ["model.onnx"], "openvino": ["model.xml", "model.bin"]}}
    inputs = model_inputs(request.parity_paths, request.spec, space)
    reference = torch_proba(request.model, inputs)
    summary["parity"] = {
        fmt: parity(reference, run_batched(runner_for(out, fmt, request.threads), inputs), space.critical_index,
                    request.threshold)
        for fmt in ("onnx", "openvino")
    }  # fmt: skip
    summary["parity"]["images"] = [str(p) for p in request.parity_paths]
    sample = inputs if len(inputs) else np.zeros((1, request.spec.channels, request.spec.height, request.spec.width))
    summary["latency"] = {
        fmt: latency_ms(runner_for(out, fmt, request.threads), sample, runs=request.latency_runs)
        for fmt in ("onnx", "openvino")
    }
    _evaluate_int8(out, request, summary)
    if summary["int8"].get("published"):
        kept = "openvino-int8" if summary["int8"]["published"].startswith("openvino") else "onnx-int8"
        summary["parity"][kept] = parity(
            reference, run_batched(runner_for(out, kept, request.threads), inputs), space.critical_index,
            request.threshold,
        )  # fmt: skip
    summary["recommended"] = min(summary["latency"], key=lambda k: summary["latency"][k]["p50_ms"])
    summary["threads"] = request.threads
    _write_metadata(out, request, summary)
    return {**summary, "out": str(out)}


def _write_metadata(out: Path, request: ExportRequest, summary: dict[str, Any]) -> None:
    files = {name: sha256_file(out / name) for files in summary["formats"].values() for name in files}
    bundle = {
        "format": EXPORT_FORMAT,
        "architecture": request.architecture,
        "label_space": request.label_space.to_dict(),
        "input_spec": request.spec.to_dict(),
        "threshold": request.threshold,
        "source": request.source,
        "input": {"name": INPUT_NAME, "dtype": "float32", "layout": "NCHW", "batch": "dynamic"},
        "output": {"name": OUTPUT_NAME, "meaning": "softmax probabilities in label_space output order"},
        "formats": summary["formats"],
        "recommended": summary["recommended"],
        "int8": {"published": summary["int8"].get("published"), "reason": summary["int8"]["reason"]},
        "files": files,
    }
    (out / BUNDLE_FILE).write_text(json.dumps(bundle, indent=2, default=str))
    figures = {k: summary[k] for k in ("parity", "latency", "int8", "threads")}
    (out / PARITY_FILE).write_text(json.dumps(figures, indent=2, default=str))
