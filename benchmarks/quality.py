"""Does the training recipe pass the gates on every seed? NEU-CLS (crazing critical) trained with several seeds.

    python benchmarks/quality.py [--data ../shared/data/neu-cls] [--critical-class crazing] [--seeds 1 2 3]
                                 [--recipe NAME:key=value,key=value ...] [--jobs 1] [--device auto] [--json]

Each seed is a whole training run of the pipeline's own steps, the functions its Prefect tasks call (ingest, split,
train, calibrate the critical threshold on validation, assess the test split clean/dim/bright, the gates), in its
own ``STEELQC_HOME`` (no Prefect or MLflow: `benchmarks/train_speed.py` measures what those add). The seed
is the settings' seed, so it moves the split (a different test fold from the same data) as well as the
initialisation order, sampling and augmentation: the verdict has to hold for all of them, not for one lucky draw.

Prints per seed and as mean ± sd: macro-F1, critical recall and precision, glare ΔF1 (with its paired bootstrap
interval when the evaluation reports one), the best epoch, the wall time and the gate verdict, and whether the
issue's targets hold (macro-F1 ≥ 0.995, critical recall 1.00, glare ΔF1 ≤ 0.02). ``--recipe`` compares training
settings (``TrainConfig`` fields; e.g. ``ema:ema_decay=0.99`` or ``v1:augment=glare-v1``); the default is the
settings' own recipe, ``default``. ``--jobs N`` runs N trainings at once (a machine with many cores or a GPU); each
then gets ``--threads`` torch threads (default: cores / jobs); every training runs in a process of its own.
``--rows-file`` appends each finished row as a JSON line (kept if the run is cut short). Logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

from steelqc.model_registry.gates import evaluate_gates
from steelqc.tasks.config import load_settings
from steelqc.tasks.data.labels import LabelSpace
from steelqc.tasks.data.prepare import ingest_to_folder, split_run_folder
from steelqc.tasks.data.split import load_split
from steelqc.tasks.evaluation.assess import evaluate_run
from steelqc.tasks.model.inference import available_cpus
from steelqc.tasks.model.train import TrainConfig, resolve_config, train_model

log = logging.getLogger("bench.quality")

SHARED = Path(os.environ.get("STEELQC_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
TARGETS = {"macro_f1": 0.995, "critical_recall": 1.0, "glare_delta_f1": 0.02}
COLUMNS = ("macro_f1", "critical_recall", "critical_precision", "glare_delta_f1")


def parse_recipe(text: str) -> tuple[str, dict[str, Any]]:
    """``name:key=value,key=value`` -> (name, overrides); values parsed as JSON when they parse, else strings."""
    name, _, body = text.partition(":")
    overrides: dict[str, Any] = {}
    for item in filter(None, body.split(",")):
        key, sep, raw = item.partition("=")
        if not sep or key not in TrainConfig.__dataclass_fields__:
            raise SystemExit(f"--recipe {text!r}: {item!r} is not key=value with a TrainConfig field")
        try:
            overrides[key] = json.loads(raw)
        except json.JSONDecodeError:
            overrides[key] = raw
    return name or "default", overrides


def run_one(data: str, critical: str, seed: int, recipe: str, overrides: dict, device: str, threads: int) -> dict:
    """One seed of one recipe, start to gates, in a fresh STEELQC_HOME; the figures as a flat dict."""
    start = time.perf_counter()
    home = Path(tempfile.mkdtemp(prefix=f"steelqc-quality-{recipe}-{seed}-"))
    os.environ["STEELQC_HOME"] = str(home)
    settings = load_settings(seed=seed)
    result, written = ingest_to_folder(Path(data), settings, "auto", critical, prefix="train", require_valid=True)
    image_shape = (int(result.manifest["height"].median()), int(result.manifest["width"].median()))
    requested = {"device": device, "threads": threads, "image_channels": result.channels, **overrides}
    cfg = resolve_config(settings, requested, image_shape=image_shape)
    run_dir = Path(written["out"])
    split_run_folder(run_dir, settings)
    space = LabelSpace(result.class_names, result.critical_class)
    train = train_model(load_split(run_dir, "train"), load_split(run_dir, "val"), space, cfg, run_dir, progress=False)
    evaluation = evaluate_run(
        train.best_checkpoint, run_dir, settings.critical_recall_target, settings.seed, settings.bootstrap_samples
    )
    metrics = evaluation.metrics
    report = evaluate_gates(metrics, settings.gates, result.critical_class)
    ci = metrics.get("confidence_intervals") or {}
    row = {
        "recipe": recipe,
        "seed": seed,
        "macro_f1": metrics["macro_f1"],
        "critical_recall": metrics["critical_recall"],
        "critical_precision": metrics["critical_precision"],
        "glare_delta_f1": (metrics.get("glare") or {}).get("delta_f1"),
        "glare_ci95": ci.get("glare_delta_f1"),
        "glare": metrics.get("glare"),
        "best_epoch": train.best_epoch,
        "epochs_run": train.epochs_run,
        "train_seconds": train.seconds,
        "device": train.device,
        "input": f"{cfg.height}x{cfg.width}",
        "gates_passed": report.passed,
        "gate_reason": report.reason,
        "seconds": round(time.perf_counter() - start, 1),
    }
    row["targets_met"] = meets_targets(row)
    log.warning("%s seed %d: %s", recipe, seed, json.dumps({k: row[k] for k in (*COLUMNS, "best_epoch")}))
    return row


def meets_targets(row: dict) -> bool:
    """The issue's targets: macro-F1 ≥ 0.995, critical recall 1.00, glare ΔF1 ≤ 0.02."""
    glare = row["glare_delta_f1"]
    return (
        row["macro_f1"] >= TARGETS["macro_f1"]
        and row["critical_recall"] >= TARGETS["critical_recall"]
        and glare is not None
        and glare <= TARGETS["glare_delta_f1"]
    )


def summarise(rows: list[dict]) -> dict[str, dict]:
    """Per recipe: mean and sd of each figure, seeds passing the gates and meeting the targets."""
    out: dict[str, dict] = {}
    for recipe in dict.fromkeys(r["recipe"] for r in rows):
        mine = [r for r in rows if r["recipe"] == recipe]
        stats = {}
        for col in COLUMNS:
            values = [float(r[col]) for r in mine if r[col] is not None]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            stats[col] = {"mean": statistics.fmean(values) if values else None, "sd": sd}
        stats["gates_passed"] = sum(r["gates_passed"] for r in mine)
        stats["targets_met"] = sum(r["targets_met"] for r in mine)
        stats["seeds"] = len(mine)
        out[recipe] = stats
    return out


def _fmt(value: Any) -> str:
    return "—" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def print_table(rows: list[dict], summary: dict[str, dict], wall: float) -> None:
    head = f"{'recipe':<14}{'seed':>5}{'macro-F1':>10}{'recall':>8}{'prec.':>8}{'glare ΔF1':>11}  {'95 % CI':<17}"
    print(head + f"{'epoch':>6}{'s':>7}  verdict")
    for r in rows:
        ci = r["glare_ci95"]
        ci_text = f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci and None not in ci else "—"
        verdict = ("passed" if r["gates_passed"] else "FAILED") + ("" if r["targets_met"] else " (targets missed)")
        print(
            f"{r['recipe']:<14}{r['seed']:>5}{_fmt(r['macro_f1']):>10}{_fmt(r['critical_recall']):>8}"
            f"{_fmt(r['critical_precision']):>8}{_fmt(r['glare_delta_f1']):>11}  {ci_text:<17}"
            f"{r['best_epoch']:>6}{r['seconds']:>7.0f}  {verdict}"
        )
    for recipe, s in summary.items():
        figures = "  ".join(f"{c} {s[c]['mean']:.4f} ± {s[c]['sd']:.4f}" for c in COLUMNS if s[c]["mean"] is not None)
        print(f"{recipe}: {figures}; gates passed {s['gates_passed']}/{s['seeds']}, "
              f"targets met {s['targets_met']}/{s['seeds']}")  # fmt: skip
    print(f"wall time {wall:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(SHARED / "neu-cls"))
    parser.add_argument("--critical-class", default="crazing")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--recipe", action="append", default=[], help="NAME:key=value,... (TrainConfig fields)")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="Torch threads per training (default cores/jobs)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--rows-file", type=Path, help="Also append each finished seed's row here (JSON lines).")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    if not Path(args.data).is_dir():
        raise SystemExit(f"no data at {args.data} (set --data or STEELQC_SHARED_DATA)")
    recipes = [parse_recipe(r) for r in args.recipe] or [("default", {})]
    threads = args.threads or max(1, available_cpus() // max(1, args.jobs))
    jobs = [
        (args.data, args.critical_class, s, name, o, args.device, threads) for name, o in recipes for s in args.seeds
    ]
    start = time.perf_counter()
    rows = []
    with ProcessPoolExecutor(max(1, args.jobs), mp_context=get_context("spawn")) as pool:
        for future in as_completed([pool.submit(run_one, *job) for job in jobs]):
            rows.append(future.result())
            if args.rows_file:
                with args.rows_file.open("a") as fh:
                    fh.write(json.dumps(rows[-1]) + "\n")
    rows.sort(key=lambda r: ([name for name, _ in recipes].index(r["recipe"]), r["seed"]))
    wall = time.perf_counter() - start
    summary = summarise(rows)
    if args.json:
        print(json.dumps({"rows": rows, "summary": summary, "targets": TARGETS, "wall_seconds": round(wall, 1)}))
    else:
        print_table(rows, summary, wall)


if __name__ == "__main__":
    main()
