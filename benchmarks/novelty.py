"""Does the novelty score flag defect types the model never saw? Leave-one-class-out on NEU-CLS.

    python benchmarks/novelty.py [--classes crazing,patches] [--epochs 3] [--seed 42] [--work DIR]
                                 [--json] [--strict]

For each NEU-CLS class in turn: the model (the product's training defaults, MobileNetV2 with ImageNet weights) is
trained on the other five (critical class crazing, or inclusion when crazing is held out), split ``stratified``
60 % train, 15 % val, 25 % test; ``build_reference`` fits the novelty score on the training images and calibrates
its threshold on the validation ones at ``Settings().novelty_quantile``. The familiar test images and all images
of the held-out class are then scored with ``features_frame(...)["novel"]``.

Target: at least 90 % of the unseen classes' images flagged, at most 2 % of the familiar test images flagged
(pooled over the runs; 95 % Wilson intervals). Figures go to stdout (one JSON object with ``--json``), logs and
progress bars to stderr; the last lines say PASS or FAIL per target. Exit 0 unless ``--strict`` and a target
failed (1). ``--work DIR`` keeps the trained models so that a rerun with the same ``--epochs``/``--seed`` reuses
them (the reference and the scores are always recomputed); default a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from neu import NEU, neu_manifest, report, stratified, train, verdict
from sklearn.metrics import roc_auc_score

from steelqc.tasks.config import Settings
from steelqc.tasks.data.datasets import InputSpec
from steelqc.tasks.data.labels import LabelSpace
from steelqc.tasks.features import build_reference, extract, features_frame
from steelqc.tasks.model.inference import load_model, select_device
from steelqc.tasks.model.train import macro_f1

log = logging.getLogger("novelty")

CRITICAL, FALLBACK_CRITICAL = "crazing", "inclusion"
FRACTIONS = {"train": 0.6, "val": 0.15, "test": 0.25}
TARGET_FLAGGED_MIN, TARGET_FPR_MAX = 0.90, 0.02


def wilson(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion."""
    if n == 0:
        return (math.nan, math.nan)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", default=None, help="comma-separated classes to hold out (default: all six)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--work", type=Path, default=None, help="keep (and reuse) the trained models here")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error("--epochs must be >= 1")
    return args


def trained_model(
    parts: dict[str, pd.DataFrame], label_space: LabelSpace, work: Path, epochs: int, seed: int
) -> tuple[Any, str, InputSpec, str, float, bool]:
    """Train on ``parts`` (or reuse the model in ``work`` made with the same settings): network, architecture,
    input spec, device, training seconds, reused."""
    stamp = {"epochs": epochs, "seed": seed, "fractions": FRACTIONS, "label_space": label_space.to_dict()}
    stamp_file, checkpoint = work / "model.json", work / "model" / "checkpoints" / "best.pt"
    saved = json.loads(stamp_file.read_text()) if stamp_file.is_file() else {}
    if saved.get("stamp") == stamp and checkpoint.is_file():
        log.info("reusing the model trained in %s", work)
        device = select_device()
        net, meta = load_model(checkpoint, device)
        return net, meta["model_name"], InputSpec.from_dict(meta["input_spec"]), device, saved["train_s"], True
    t0 = time.perf_counter()
    trained = train(parts["train"], parts["val"], label_space, work / "model", epochs)
    train_s = time.perf_counter() - t0
    stamp_file.write_text(json.dumps({"stamp": stamp, "train_s": train_s}))
    return trained.model, trained.architecture, trained.spec, trained.device, train_s, False


def leave_out(
    manifest: pd.DataFrame, class_names: dict[int, str], held: str, args: argparse.Namespace, work: Path
) -> dict[str, Any]:
    """One run: train without ``held``, calibrate on the familiar validation images, score test and unseen."""
    held_id = next(cid for cid, name in class_names.items() if name == held)
    familiar_names = {cid: name for cid, name in class_names.items() if cid != held_id}
    critical = CRITICAL if held != CRITICAL else FALLBACK_CRITICAL
    label_space = LabelSpace(familiar_names, critical)
    familiar, unseen = manifest[manifest["label"] != held_id], manifest[manifest["label"] == held_id]
    parts = stratified(familiar, FRACTIONS, args.seed)
    net, architecture, spec, device, train_s, reused = trained_model(parts, label_space, work, args.epochs, args.seed)
    quantile = Settings().novelty_quantile
    reference = build_reference(
        net,
        architecture,
        spec,
        label_space,
        None,
        parts["train"],
        parts["val"],
        quantile=quantile,
        device=device,
    )
    frames = {}
    for name, frame in (("test", parts["test"]), ("unseen", unseen)):
        raw = extract(net, architecture, spec, frame["path"].astype(str).tolist(), device=device, desc=name)
        frames[name] = features_frame(raw, reference.projection, reference.novelty, label_space, None)
    test, new = frames["test"], frames["unseen"]
    truth = dict(zip(parts["test"]["path"].astype(str), parts["test"]["label"], strict=True))
    y_true = np.array([label_space.index_of(truth[p]) for p in test["path"]])
    y_pred = np.array([label_space.names.index(p) for p in test["predicted"]])
    scores = np.concatenate([test["novelty"].to_numpy(), new["novelty"].to_numpy()])
    is_new = np.concatenate([np.zeros(len(test)), np.ones(len(new))])
    return {
        "held_out": held,
        "critical": critical,
        "n_train": reference.meta["n_train"],
        "n_val": reference.meta["n_val"],
        "n_test": len(test),
        "n_unseen": len(new),
        "unseen_flagged": int(new["novel"].sum()),
        "test_flagged": int(test["novel"].sum()),
        "flagged_share": float(new["novel"].mean()),
        "false_positive_rate": float(test["novel"].mean()),
        "threshold": reference.novelty.threshold,
        "auroc": float(roc_auc_score(is_new, scores)),
        "macro_f1": float(macro_f1(y_true, y_pred)),
        "train_seconds": round(train_s, 1),
        "reused_model": reused,
        "input": f"{spec.height}x{spec.width}",
    }


def summarise(runs: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """Pooled figures with Wilson intervals and the verdicts."""
    flagged, unseen = sum(r["unseen_flagged"] for r in runs), sum(r["n_unseen"] for r in runs)
    fp, familiar = sum(r["test_flagged"] for r in runs), sum(r["n_test"] for r in runs)
    pooled = {
        "unseen_flagged": flagged,
        "unseen": unseen,
        "flagged_share": flagged / unseen,
        "flagged_ci95": wilson(flagged, unseen),
        "test_flagged": fp,
        "test": familiar,
        "false_positive_rate": fp / familiar,
        "false_positive_ci95": wilson(fp, familiar),
        "mean_auroc": float(np.mean([r["auroc"] for r in runs])),
        "mean_macro_f1": float(np.mean([r["macro_f1"] for r in runs])),
    }
    targets = [
        {
            "target": "unseen classes' images flagged (pooled)",
            "value": f"{pooled['flagged_share']:.1%}",
            "goal": f">= {TARGET_FLAGGED_MIN:.0%}",
            "passed": pooled["flagged_share"] >= TARGET_FLAGGED_MIN,
        },
        {
            "target": "familiar test images flagged (pooled)",
            "value": f"{pooled['false_positive_rate']:.1%}",
            "goal": f"<= {TARGET_FPR_MAX:.0%}",
            "passed": pooled["false_positive_rate"] <= TARGET_FPR_MAX,
        },
    ]
    return {
        "benchmark": "novelty",
        "data": str(NEU),
        "epochs": args.epochs,
        "seed": args.seed,
        "novelty_quantile": Settings().novelty_quantile,
        "runs": runs,
        "pooled": pooled,
        "targets": targets,
    }


def print_table(s: dict[str, Any]) -> None:
    """The figures for people."""
    first = s["runs"][0]
    print("novelty on NEU-CLS, leave one class out (benchmarks/novelty.py)")
    print(
        f"model: mobilenet_v2 {first['input']}, {s['epochs']} epochs, seed {s['seed']}; threshold = the "
        f"{s['novelty_quantile']} quantile of the familiar validation images' scores"
    )
    print()
    head = ("held out", "flagged", "share", "FP", "FP rate", "threshold", "AUROC", "macro-F1", "train s")
    print(
        f"{head[0]:<17}{head[1]:>10}{head[2]:>8}{head[3]:>9}{head[4]:>9}{head[5]:>11}{head[6]:>8}"
        + "".join(f"{h:>10}" for h in head[7:])
    )
    for r in s["runs"]:
        print(
            f"{r['held_out']:<17}{r['unseen_flagged']:>5}/{r['n_unseen']:<4}{r['flagged_share']:>8.1%}"
            f"{r['test_flagged']:>5}/{r['n_test']:<3}{r['false_positive_rate']:>9.1%}{r['threshold']:>11.4f}"
            f"{r['auroc']:>8.3f}{r['macro_f1']:>10.3f}{r['train_seconds']:>10.0f}"
            + (" (reused)" if r["reused_model"] else "")
        )
    p = s["pooled"]
    lo, hi = p["flagged_ci95"]
    print()
    print(
        f"pooled over {len(s['runs'])} runs: unseen flagged {p['unseen_flagged']}/{p['unseen']} = "
        f"{p['flagged_share']:.1%} (95% Wilson {lo:.1%}–{hi:.1%})"
    )
    lo, hi = p["false_positive_ci95"]
    print(
        f"                     familiar test flagged {p['test_flagged']}/{p['test']} = "
        f"{p['false_positive_rate']:.1%} (95% Wilson {lo:.1%}–{hi:.1%})"
    )
    print(f"                     mean AUROC {p['mean_auroc']:.3f}, mean macro-F1 {p['mean_macro_f1']:.3f}")
    print()
    for tgt in s["targets"]:
        print(verdict(tgt))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    manifest, class_names = neu_manifest(critical=CRITICAL)
    names = list(class_names.values())
    classes = names if args.classes is None else [c.strip() for c in args.classes.split(",") if c.strip()]
    unknown = sorted(set(classes) - set(names))
    if unknown or not classes:
        raise SystemExit(f"--classes: unknown {unknown or 'none given'}; NEU-CLS classes are {names}")
    runs = []
    with tempfile.TemporaryDirectory(prefix="novelty-") as tmp:
        work = args.work or Path(tmp)
        for held in classes:
            log.info("run %d of %d: %s held out", len(runs) + 1, len(classes), held)
            runs.append(leave_out(manifest, class_names, held, args, work / held))
            log.info(
                "%s: %.1f%% flagged, FP rate %.1f%%",
                held,
                100 * runs[-1]["flagged_share"],
                100 * runs[-1]["false_positive_rate"],
            )
    summary = summarise(runs, args)
    return report(summary, args.json, args.strict, print_table)


if __name__ == "__main__":
    sys.exit(main())
