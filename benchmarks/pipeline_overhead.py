"""What Prefect and MLflow add over the bare training loop, on the same data and settings.

    python benchmarks/pipeline_overhead.py [--n-images 300] [--model simple_cnn] [--epochs 2] [--json]

1. bare: ``steelqc.tasks.model.train.train_model`` on the train/val split, no Prefect, no MLflow;
2. pipeline: the same training through the flow's Prefect tasks (``start-mlflow-run`` + ``train``, per-epoch
   metrics logged to the MLflow store) inside a Prefect flow run.

Prints both wall times and the overhead ratio (target < 5 %). The one-off start of Prefect's temporary local
server is reported apart: with `steelqc server start` (or any Prefect server) it is not paid per run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

from prefect import flow

from steelqc.flows.training import (
    ingest_step,
    run_folder_step,
    split_step,
    start_run_step,
    train_step,
)
from steelqc.tasks.config import load_settings
from steelqc.tasks.data.labels import LabelSpace
from steelqc.tasks.data.split import load_split
from steelqc.tasks.data.synth import generate_dataset
from steelqc.tasks.model.train import TrainConfig, resolve_config, train_model
from steelqc.tasks.runs import write_state

log = logging.getLogger("bench.overhead")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=300)
    parser.add_argument("--model", default="simple_cnn")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=2, help="Alternating repeats of each (best kept).")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)

    work = Path(tempfile.mkdtemp(prefix="steelqc-overhead-"))
    os.environ["STEELQC_HOME"] = str(work / "home")

    data = work / "data"
    generate_dataset(data, n_images=args.n_images, seed=7, mix={0: 0.3, 1: 0.2, 2: 0.15, 3: 0.2, 4: 0.15})
    settings = load_settings()
    ingest = ingest_step.fn(str(data), "auto", None, {})
    overrides = {
        "model": args.model,
        "epochs": args.epochs,
        "height": args.height,
        "width": args.width,
        "weights": "none",
        "patience": args.epochs,
        "num_workers": 0,
    }
    cfg = resolve_config(settings, overrides)
    run_dir = run_folder_step.fn(ingest, cfg.fingerprint(), False, {})
    split_step.fn(run_dir, {})
    train_df, val_df = load_split(run_dir, "train"), load_split(run_dir, "val")
    label_space = LabelSpace.from_dict(ingest["label_space"])

    def bare_once(tag: str) -> float:
        t0 = time.perf_counter()
        train_model(train_df, val_df, label_space, TrainConfig.from_dict(cfg.to_dict()), work / tag, progress=False)
        return time.perf_counter() - t0

    @flow(name="overhead-probe")
    def probe() -> float:
        t0 = time.perf_counter()
        run_id = start_run_step(run_dir, ingest, cfg.to_dict(), {})
        train_step(run_dir, run_id, cfg.to_dict(), ingest["label_space"], False, {})
        return time.perf_counter() - t0

    bare_once("warm-up")  # decodes and caches the images once, warms the OS file cache
    bare_times, flow_times, startups = [], [], []
    for i in range(args.repeats):
        bare_times.append(bare_once(f"bare-{i}"))
        shutil.rmtree(Path(run_dir) / "checkpoints", ignore_errors=True)
        write_state(Path(run_dir), mlflow_run_id=None, status="ingested")
        flow_start = time.perf_counter()
        flow_times.append(probe())
        startups.append(time.perf_counter() - flow_start - flow_times[-1])
    bare, in_flow, flow_total = min(bare_times), min(flow_times), min(flow_times) + min(startups)
    result = {
        "images_train": len(train_df),
        "model": args.model,
        "epochs": args.epochs,
        "input": f"{args.height}x{args.width}",
        "bare_seconds": round(bare, 2),
        "pipeline_seconds": round(in_flow, 2),
        "overhead_seconds": round(in_flow - bare, 2),
        "overhead_ratio": round((in_flow - bare) / bare, 4),
        "flow_startup_seconds": round(flow_total - in_flow, 2),
        "repeats": args.repeats,
        "bare_runs": [round(t, 2) for t in bare_times],
        "pipeline_runs": [round(t, 2) for t in flow_times],
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"bare training loop          : {bare:7.2f} s")
        print(f"through Prefect + MLflow     : {in_flow:7.2f} s")
        print(f"overhead                     : {in_flow - bare:+7.2f} s ({100 * result['overhead_ratio']:+.1f} %)")
        print(f"Prefect start-up (one-off)   : {result['flow_startup_seconds']:7.2f} s")


if __name__ == "__main__":
    main()
