"""Training speed: the pipeline against a plain fp32 torchvision loop, and what Prefect and MLflow add, in one run.

    python benchmarks/train_speed.py [--n-images 240] [--epochs 2] [--height 128 --width 800] [--batch-size 16]
                                     [--threads 2] [--plain-steps 20] [--repeats 3] [--fp32] [--json]

In one process, with the same torch threads:

1. **plain**: torchvision's MobileNetV2 in float32 (default memory format) on ready random tensors at the input
   size: forward, cross-entropy, backward, AdamW. The yardstick: what a bare training loop does on this machine.
2. **pipeline**: ``steelqc.tasks.model.train.train_model`` with the settings' own recipe (MobileNetV2, ImageNet
   weights, bfloat16 autocast where the CPU has it, channels-last, the image cache, augmentation, the weight
   average, validation and checkpoints every epoch) on generated 256x1600 Severstal-format JPEGs ingested and
   split as ``steelqc train`` does. Images/s = training images x epochs / the whole call's wall time (validation,
   checkpoints and image decoding included). ``cold``: the first run, which decodes every image into the cache;
   ``warm``: later runs, which find them in the on-disk cache (the nightly retraining's case).
3. **flow**: the same training through the flow's Prefect tasks (``start-mlflow-run`` + ``train``, every epoch's
   figures logged to the MLflow store) inside a Prefect flow run; the overhead is flow / warm pipeline - 1
   (target ≤ 5 %). The one-off start of Prefect's temporary local server is reported apart: with
   `steelqc server start` (or any Prefect server) it is not paid per run.

Pipeline and flow runs alternate (``--repeats``; the best of each is kept). Figures go to stdout (one JSON object
with ``--json``); logs go to stderr.
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

import torch
from prefect import flow
from torchvision.models import mobilenet_v2

from steelqc.flows.training import ingest_step, run_folder_step, split_step, start_run_step, train_step
from steelqc.tasks.config import load_settings
from steelqc.tasks.data.labels import LabelSpace
from steelqc.tasks.data.split import load_split
from steelqc.tasks.data.synth import generate_dataset
from steelqc.tasks.model.inference import cpu_supports_bf16
from steelqc.tasks.model.train import TrainConfig, resolve_config, train_model
from steelqc.tasks.runs import write_state

log = logging.getLogger("bench.train_speed")
TARGET_RATIO, TARGET_OVERHEAD = 1.3, 0.05


def plain_loop(height: int, width: int, batch_size: int, steps: int, num_classes: int) -> float:
    """Images/s of a plain fp32 torchvision MobileNetV2 training loop on ready tensors (2 warm-up steps)."""
    torch.manual_seed(0)
    model = mobilenet_v2(weights=None, num_classes=num_classes).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4)
    criterion = torch.nn.CrossEntropyLoss()
    x = torch.randn(batch_size, 3, height, width)
    y = torch.randint(0, num_classes, (batch_size,))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        criterion(model(x), y).backward()
        optimizer.step()

    for _ in range(2):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=240)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=800)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--plain-steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fp32", action="store_true", help="The pipeline without bf16 autocast (amp off).")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    torch.set_num_threads(args.threads)

    work = Path(tempfile.mkdtemp(prefix="steelqc-train-speed-"))
    os.environ["STEELQC_HOME"] = str(work / "home")
    data = work / "data"
    generate_dataset(data, n_images=args.n_images, seed=7, mix={0: 0.3, 1: 0.2, 2: 0.15, 3: 0.2, 4: 0.15})
    settings = load_settings()
    ingest = ingest_step.fn(str(data), "auto", None, {})
    overrides = {"epochs": args.epochs, "height": args.height, "width": args.width, "threads": args.threads,
                 "batch_size": args.batch_size, "device": "cpu", "amp": not args.fp32}  # fmt: skip
    cfg = resolve_config(settings, overrides, image_shape=tuple(ingest["image_shape"]))
    run_dir = run_folder_step.fn(ingest, cfg.fingerprint(), False, {})
    split_step.fn(run_dir, {})
    train_df, val_df = load_split(run_dir, "train"), load_split(run_dir, "val")
    space = LabelSpace.from_dict(ingest["label_space"])
    images = len(train_df) * args.epochs

    def pipeline(tag: str) -> float:
        t0 = time.perf_counter()
        train_model(train_df, val_df, space, TrainConfig.from_dict(cfg.to_dict()), work / tag, progress=False)
        return time.perf_counter() - t0

    @flow(name="train-speed-probe")
    def probe() -> float:
        t0 = time.perf_counter()
        run_id = start_run_step(run_dir, ingest, cfg.to_dict(), {})
        train_step(run_dir, run_id, cfg.to_dict(), ingest["label_space"], False, {})
        return time.perf_counter() - t0

    plain = plain_loop(args.height, args.width, args.batch_size, args.plain_steps, space.num_classes)
    cold = pipeline("cold")
    warm_times, flow_times, startups = [], [], []
    for i in range(args.repeats):
        warm_times.append(pipeline(f"warm-{i}"))
        shutil.rmtree(Path(run_dir) / "checkpoints", ignore_errors=True)
        write_state(Path(run_dir), mlflow_run_id=None, status="ingested")
        flow_start = time.perf_counter()
        flow_times.append(probe())
        startups.append(time.perf_counter() - flow_start - flow_times[-1])
    warm, in_flow = min(warm_times), min(flow_times)
    result = {
        "input": f"{args.height}x{args.width}",
        "batch_size": args.batch_size,
        "threads": args.threads,
        "bf16_autocast": bool(cfg.amp and cpu_supports_bf16()),
        "train_images": len(train_df),
        "val_images": len(val_df),
        "epochs": args.epochs,
        "plain_fp32_images_per_second": round(plain, 2),
        "pipeline_cold_images_per_second": round(images / cold, 2),
        "pipeline_warm_images_per_second": round(images / warm, 2),
        "flow_images_per_second": round(images / in_flow, 2),
        "ratio_cold": round(images / cold / plain, 3),
        "ratio_warm": round(images / warm / plain, 3),
        "ratio_flow": round(images / in_flow / plain, 3),
        "flow_overhead_ratio": round(in_flow / warm - 1, 4),
        "flow_startup_seconds": round(min(startups), 2),
        "pipeline_runs_seconds": [round(cold, 2)] + [round(t, 2) for t in warm_times],
        "flow_runs_seconds": [round(t, 2) for t in flow_times],
        "targets": {"ratio": TARGET_RATIO, "flow_overhead": TARGET_OVERHEAD},
    }
    result["targets_met"] = result["ratio_flow"] >= TARGET_RATIO and result["flow_overhead_ratio"] <= TARGET_OVERHEAD
    shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(result))
        return
    r = result
    print(f"MobileNetV2 {r['input']}, batch {args.batch_size}, {args.threads} threads, {r['train_images']} training "
          f"images x {args.epochs} epochs (+{r['val_images']} validation), bf16: {r['bf16_autocast']}")  # fmt: skip
    print(f"plain fp32 torchvision loop, ready tensors : {plain:6.2f} images/s")
    print(f"pipeline, first run (decodes into cache)   : {images / cold:6.2f} images/s  ({r['ratio_cold']:.2f}x)")
    print(f"pipeline, cached images                    : {images / warm:6.2f} images/s  ({r['ratio_warm']:.2f}x)")
    print(f"through Prefect + MLflow                   : {images / in_flow:6.2f} images/s  ({r['ratio_flow']:.2f}x)")
    print(f"flow + MLflow overhead                     : {100 * r['flow_overhead_ratio']:+.1f} % (target ≤ 5 %)")
    print(f"Prefect start-up (one-off)                 : {r['flow_startup_seconds']:.1f} s")
    print(f"targets (≥ {TARGET_RATIO}x the plain loop, ≤ 5 % overhead): {'met' if r['targets_met'] else 'MISSED'}")


if __name__ == "__main__":
    main()
