"""Power of the drift check on real steel images: false alarms on clean batches, detections of brightness shifts
and of another source, with the settings' default :class:`~steelqc.tasks.config.DriftRule`.

    python benchmarks/drift_power.py [--epochs 5] [--samples 20] [--batch 200] [--seed 42]
                                     [--out DIR] [--work DIR] [--json] [--strict]

A MobileNetV2 (the product's training defaults, ImageNet weights) is trained on half of NEU-CLS (critical class
crazing; ``stratified`` 50 % train, 10 % val, 40 % held out) and its drift reference is built with
``build_reference`` from the train and validation splits, as the training pipeline does. Batches of the held-out
images then go through ``extract`` + ``features_frame`` and ``check_drift`` against the monitor's reference rows:

* clean: ``--samples`` random batches of ``--batch`` held-out images (seeded; the batches overlap);
* brightened / darkened: the same batches with ImageNet-C brightness severity 2 on the grey image
  (x' = clip(round(x ± 0.2·255), 0, 255));
* other source: one batch of Severstal-format generated images (``steelqc.tasks.data.synth``), another steel.

Figures go to stdout (one JSON object with ``--json``), logs and progress bars to stderr; the last lines say PASS or
FAIL per target. Exit 0 unless ``--strict`` and a target failed (1). ``--out DIR`` keeps one Evidently HTML report
per kind; ``--work DIR`` keeps the trained model and the generated images so that a rerun with the same
``--epochs``/``--seed`` reuses them (the reference is always rebuilt) (default: a temporary folder, nothing is kept).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from neu import NEU, neu_manifest, report, stratified, train, verdict

from steelqc.monitoring.drift import DRIFT_FEATURES, DriftResult, check_drift
from steelqc.tasks.config import DriftRule
from steelqc.tasks.data.datasets import InputSpec
from steelqc.tasks.data.labels import LabelSpace
from steelqc.tasks.data.synth import generate_dataset
from steelqc.tasks.features import Reference, build_reference, extract, features_frame
from steelqc.tasks.model.inference import load_model, select_device

log = logging.getLogger("drift_power")

REFERENCE_SPLIT: str | None = None
"""The reference rows the drift check compares with: ``Reference.rows(None)``, train + val, as the monitor does."""
CRITICAL = "crazing"
FRACTIONS = {"train": 0.5, "val": 0.1, "held": 0.4}
BRIGHTNESS_SHIFT = 0.2 * 255
"""ImageNet-C brightness, severity 2: +0.2 on the 0..1 value channel (here the grey level)."""
TARGETS = {"false_alarms_max": 1, "brightened_min": 19, "darkened_min": 19}
KINDS = ("clean", "brightened", "darkened", "other_source")


def brighten(img: np.ndarray, _name: str = "") -> np.ndarray:
    """ImageNet-C brightness severity 2 on a grey uint8 image."""
    return np.clip(np.rint(img.astype(np.float32) + BRIGHTNESS_SHIFT), 0, 255).astype(np.uint8)


def darken(img: np.ndarray, _name: str = "") -> np.ndarray:
    """The mirror of :func:`brighten`: x - 0.2·255."""
    return np.clip(np.rint(img.astype(np.float32) - BRIGHTNESS_SHIFT), 0, 255).astype(np.uint8)


CORRUPTIONS: dict[str, Callable[[np.ndarray, str], np.ndarray] | None] = {
    "clean": None,
    "brightened": brighten,
    "darkened": darken,
}


@dataclass
class Model:
    """What the batches are scored with: the trained network and its drift reference."""

    net: Any
    architecture: str
    spec: InputSpec
    label_space: LabelSpace
    device: str
    reference: Reference
    train_seconds: float
    reference_seconds: float
    reused: bool


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--samples", type=int, default=20, help="clean batches (and as many shifted ones)")
    parser.add_argument("--batch", type=int, default=200, help="images per batch")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, default=None, help="keep one Evidently HTML report per kind here")
    parser.add_argument("--work", type=Path, default=None, help="keep (and reuse) the model and generated data")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.samples < 1 or args.batch < 2:
        parser.error("--epochs and --samples must be >= 1, --batch >= 2")
    return args


def prepare_model(manifest: pd.DataFrame, label_space: LabelSpace, args: argparse.Namespace, work: Path) -> Model:
    """Train (or reuse the model in ``work`` made with the same settings), then build the reference with
    ``build_reference`` from the train and validation splits, as the training pipeline does."""
    parts = stratified(manifest, FRACTIONS, args.seed)
    stamp = {"epochs": args.epochs, "seed": args.seed, "fractions": FRACTIONS, "critical": CRITICAL}
    stamp_file, checkpoint = work / "model.json", work / "model" / "checkpoints" / "best.pt"
    saved = json.loads(stamp_file.read_text()) if stamp_file.is_file() else {}
    t0 = time.perf_counter()
    reused = saved.get("stamp") == stamp and checkpoint.is_file()
    if reused:
        log.info("reusing the model trained in %s", work)
        device = select_device()
        net, meta = load_model(checkpoint, device)
        architecture, spec, train_s = meta["model_name"], InputSpec.from_dict(meta["input_spec"]), saved["train_s"]
    else:
        trained = train(parts["train"], parts["val"], label_space, work / "model", args.epochs)
        net, architecture, spec, device = trained.model, trained.architecture, trained.spec, trained.device
        train_s = time.perf_counter() - t0
        stamp_file.write_text(json.dumps({"stamp": stamp, "train_s": train_s}))
    t0 = time.perf_counter()
    reference = build_reference(net, architecture, spec, label_space, None, parts["train"], parts["val"], device=device)
    reference_s = time.perf_counter() - t0
    return Model(net, architecture, spec, label_space, device, reference, train_s, reference_s, reused)


def frame_of(model: Model, paths: list[str], corruption: Callable | None, desc: str) -> tuple[pd.DataFrame, float]:
    """Feature rows of ``paths`` (through ``extract`` + ``features_frame``) and the seconds per image."""
    t0 = time.perf_counter()
    raw = extract(
        model.net, model.architecture, model.spec, paths, device=model.device, corruption=corruption, desc=desc
    )
    frame = features_frame(raw, model.reference.projection, model.reference.novelty, model.label_space, None)
    seconds = time.perf_counter() - t0
    if len(frame) != len(paths):
        log.warning("%s: %d of %d images unreadable", desc, len(paths) - len(frame), len(paths))
    return frame.set_index("path", drop=False), seconds / max(len(paths), 1)


def other_source(work: Path, n: int, seed: int) -> list[str]:
    """Paths of ``n`` Severstal-format generated images (another steel), made once per ``work``."""
    out = work / "other-source"
    images = sorted((out / "train_images").glob("*.jpg"))
    if len(images) != n:
        generate_dataset(out, n_images=n, seed=seed, overwrite=True)
        images = sorted((out / "train_images").glob("*.jpg"))
    return [str(p) for p in images]


def run_checks(
    reference_rows: pd.DataFrame, batches: dict[str, list[pd.DataFrame]], out: Path | None
) -> tuple[dict[str, list[DriftResult]], list[float]]:
    """``check_drift`` with the default rule on every batch; the HTML report of each kind's first batch to ``out``."""
    rule = DriftRule()
    results: dict[str, list[DriftResult]] = {}
    seconds: list[float] = []
    for kind, frames in batches.items():
        results[kind] = []
        for i, frame in enumerate(frames):
            html = out / f"drift-{kind}.html" if out is not None and i == 0 else None
            t0 = time.perf_counter()
            results[kind].append(check_drift(reference_rows, frame.reset_index(drop=True), rule, html))
            seconds.append(time.perf_counter() - t0)
        log.info("%s: %d of %d batches flagged", kind, sum(r.drift_detected for r in results[kind]), len(frames))
    return results, seconds


def summarise(
    results: dict[str, list[DriftResult]],
    check_seconds: list[float],
    extract_seconds: dict[str, float],
    model: Model,
    reference_rows: pd.DataFrame,
    args: argparse.Namespace,
    overlap: dict[str, float],
) -> dict[str, Any]:
    """The figures, the per-feature margins and the verdicts as one JSON-able dict."""
    rule = DriftRule()
    flagged = {kind: sum(r.drift_detected for r in rs) for kind, rs in results.items()}
    features: dict[str, dict[str, float]] = {}
    for col in DRIFT_FEATURES:
        clean = np.array([r.feature_scores[col] for r in results["clean"]])
        features[col] = {
            "clean_min": float(clean.min()),
            "clean_median": float(np.median(clean)),
            "clean_max": float(clean.max()),
            "brightened_min": min(r.feature_scores[col] for r in results["brightened"]),
            "darkened_min": min(r.feature_scores[col] for r in results["darkened"]),
            "other_source": results["other_source"][0].feature_scores[col],
        }
    emb = {kind: [r.embedding_drift for r in rs if r.embedding_drift is not None] for kind, rs in results.items()}
    embedding = {kind: {"min": min(v), "max": max(v)} for kind, v in emb.items() if v}
    n = args.samples
    targets = [
        {
            "target": "false alarms on clean batches",
            "value": f"{flagged['clean']}/{n}",
            "goal": f"<= {TARGETS['false_alarms_max']}/20",
            "passed": flagged["clean"] / n <= TARGETS["false_alarms_max"] / 20,
        },
        {
            "target": "detections on brightened batches",
            "value": f"{flagged['brightened']}/{n}",
            "goal": f">= {TARGETS['brightened_min']}/20",
            "passed": flagged["brightened"] / n >= TARGETS["brightened_min"] / 20,
        },
        {
            "target": "detections on darkened batches",
            "value": f"{flagged['darkened']}/{n}",
            "goal": f">= {TARGETS['darkened_min']}/20",
            "passed": flagged["darkened"] / n >= TARGETS["darkened_min"] / 20,
        },
        {
            "target": "other-source batch flagged",
            "value": "yes" if flagged["other_source"] else "no",
            "goal": "yes",
            "passed": bool(flagged["other_source"]),
        },
    ]
    reasons = {kind: [r.reason for r in rs if r.drift_detected] for kind, rs in results.items()}
    return {
        "benchmark": "drift_power",
        "data": str(NEU),
        "rule": rule.model_dump(),
        "reference": {
            "split": "train + val" if REFERENCE_SPLIT is None else REFERENCE_SPLIT,
            "rows": len(reference_rows),
            "n_train": model.reference.meta.get("n_train"),
            "n_val": model.reference.meta.get("n_val"),
            "components": model.reference.projection.k,
        },
        "model": {
            "architecture": model.architecture,
            "input": f"{model.spec.height}x{model.spec.width}",
            "epochs": args.epochs,
            "device": model.device,
            "train_seconds": round(model.train_seconds, 1),
            "reference_seconds": round(model.reference_seconds, 1),
            "reused_from_work": model.reused,
        },
        "batches": {
            "samples": n,
            "batch": args.batch,
            "seed": args.seed,
            "mean_pairwise_overlap": round(overlap["mean"], 3),
            "max_pairwise_overlap": round(overlap["max"], 3),
            "distinct_held_out_images": int(overlap["distinct"]),
            "other_source_images": results["other_source"][0].n_current,
        },
        "flagged": {kind: {"flagged": flagged[kind], "batches": len(results[kind])} for kind in results},
        "seconds_per_drift_check": round(float(np.mean(check_seconds)), 3),
        "seconds_per_image_features": {k: round(v, 4) for k, v in extract_seconds.items()},
        "feature_scores": features,
        "embedding_drift": embedding,
        "reasons": reasons,
        "targets": targets,
    }


def print_table(s: dict[str, Any]) -> None:
    """The figures for people."""
    rule, ref, model, b = s["rule"], s["reference"], s["model"], s["batches"]
    print("drift power on NEU-CLS (benchmarks/drift_power.py)")
    print(
        f"rule          {rule['stattest']} > {rule['stattest_threshold']} per feature, drifted share >= "
        f"{rule['drifted_share']}; embedding {rule['embedding_method']} > {rule['embedding_threshold']}"
    )
    print(
        f"reference     Reference.rows({REFERENCE_SPLIT!r}) = {ref['split']}: {ref['rows']} rows "
        f"({ref['n_train']} train + {ref['n_val']} val), {ref['components']} embedding components"
    )
    print(
        f"model         {model['architecture']} {model['input']}, {model['epochs']} epochs on {model['device']}, "
        f"trained in {model['train_seconds']:.0f} s, reference built in {model['reference_seconds']:.0f} s"
        + (" (reused from --work)" if model["reused_from_work"] else "")
    )
    print(
        f"batches       {b['samples']} random batches of {b['batch']} held-out images (seed {b['seed']}); they "
        f"OVERLAP: {b['distinct_held_out_images']} distinct images, mean pairwise overlap "
        f"{b['mean_pairwise_overlap']:.0%} (max {b['max_pairwise_overlap']:.0%}); the same batches brightened "
        f"and darkened; 1 batch of {b['other_source_images']} generated Severstal-format images"
    )
    print()
    print(f"{'batches':<14}{'flagged':>9}{'share':>8}")
    for kind, f in s["flagged"].items():
        print(f"{kind:<14}{f['flagged']:>5}/{f['batches']:<3}{f['flagged'] / f['batches']:>8.0%}")
    print()
    t = rule["stattest_threshold"]
    print(f"per-feature drift score ({rule['stattest']}; drifted above {t})")
    head = ("feature", "clean min", "median", "max", "max/thr", "bright min", "dark min", "other")
    print(f"{head[0]:<17}" + "".join(f"{h:>11}" for h in head[1:]))
    for col, v in s["feature_scores"].items():
        row = (
            v["clean_min"],
            v["clean_median"],
            v["clean_max"],
            v["clean_max"] / t,
            v["brightened_min"],
            v["darkened_min"],
            v["other_source"],
        )
        print(f"{col:<17}" + "".join(f"{x:>11.3f}" for x in row))
    print()
    thr = rule["embedding_threshold"]
    print(f"embedding drift ({rule['embedding_method']}; drifted above {thr})")
    for kind, v in s["embedding_drift"].items():
        print(f"  {kind:<14} min {v['min']:.3f}  max {v['max']:.3f}  (max/threshold {v['max'] / thr:.2f})")
    print()
    per_image = ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in s["seconds_per_image_features"].items())
    print(f"seconds per drift check (mean)   {s['seconds_per_drift_check']:.3f} s")
    print(f"feature extraction per image     {per_image}")
    for kind in ("clean", "other_source"):
        if s["reasons"][kind]:
            print(f"why {kind} was flagged: {s['reasons'][kind][0]}")
    print()
    for tgt in s["targets"]:
        print(verdict(tgt))


def overlap_of(indices: list[np.ndarray]) -> dict[str, float]:
    """Mean and largest share of images two batches have in common, and the distinct images in all."""
    sets = [set(i.tolist()) for i in indices]
    shares = [len(a & b) / len(a) for k, a in enumerate(sets) for b in sets[k + 1 :]]
    return {
        "mean": float(np.mean(shares)) if shares else 0.0,
        "max": float(np.max(shares)) if shares else 0.0,
        "distinct": float(len(set().union(*sets))),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    manifest, class_names = neu_manifest(critical=CRITICAL)
    label_space = LabelSpace(class_names, CRITICAL)
    with tempfile.TemporaryDirectory(prefix="drift-power-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        model = prepare_model(manifest, label_space, args, work)
        reference_rows = model.reference.rows(REFERENCE_SPLIT)
        held = stratified(manifest, FRACTIONS, args.seed)["held"]
        if args.batch > len(held):
            raise SystemExit(f"--batch {args.batch} is larger than the {len(held)} held-out images")
        rng = np.random.default_rng(args.seed)
        indices = [np.sort(rng.choice(len(held), args.batch, replace=False)) for _ in range(args.samples)]
        pool = sorted(set(np.concatenate(indices).tolist()))
        pool_paths = held["path"].astype(str).iloc[pool].tolist()
        batches: dict[str, list[pd.DataFrame]] = {}
        extract_seconds: dict[str, float] = {}
        for kind, corruption in CORRUPTIONS.items():
            frame, extract_seconds[kind] = frame_of(model, pool_paths, corruption, kind)
            batches[kind] = [frame.loc[frame.index.intersection(held["path"].astype(str).iloc[i])] for i in indices]
        other_paths = other_source(work, args.batch, args.seed)
        frame, extract_seconds["other_source"] = frame_of(model, other_paths, None, "other source")
        batches["other_source"] = [frame]
        results, check_seconds = run_checks(reference_rows, batches, args.out)
        summary = summarise(results, check_seconds, extract_seconds, model, reference_rows, args, overlap_of(indices))
    return report(summary, args.json, args.strict, print_table)


if __name__ == "__main__":
    sys.exit(main())
