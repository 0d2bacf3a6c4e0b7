"""Data-parallel training speed: one training process against ``--processes`` of them (``torchrun``, DDP) on the
same generated data, one epoch each, on the CPU (gloo) or, with ``--device cuda``, one GPU a process (nccl).

    python benchmarks/train_ddp.py [--n-images 160] [--processes 2] [--epochs 1] [--height 128 --width 800]
                                   [--batch-size 16] [--model mobilenet_v2] [--repeats 2] [--device cpu] [--json]

Both go through ``steelqc.tasks.model.distributed.fit``, the training task's own entry (``train.processes`` 1: in
this process with every CPU's thread; N: ``torchrun --standalone --nproc_per_node N``, the CPUs' threads split
between the processes). ``batch_size`` is per process, so N processes step with N times the global batch.
Generated 256x1600 Severstal-format images are ingested and split as ``steelqc train`` does; a first one-process
run fills the on-disk image cache, so every timed run reads decoded images (the nightly retraining's case).

Two figures per setting (best of ``--repeats``, runs alternating):

* ``epoch_images_per_s``: training images of the epoch / its training seconds, as rank 0 measured them (every
  rank's images: the global throughput; validation excluded);
* ``call_images_per_s``: training images x epochs / the wall time of the whole call (process start-up, torchrun's
  rendezvous, validation and checkpoints included).

One process runs twice: with every CPU's thread (the default) and with the threads one of the N processes gets
(C / N): on a busy machine a multi-threaded process can lose far more to its threads waiting for each other than
it gains, and that, not data parallelism, would then make N processes look fast. ``ratio``: N processes / the
better one-process figure. N CPU processes share the same C cores, so expect little gain on the CPU; the case DDP
is for is one process a GPU. The load average before and after is reported. Figures to stdout (one JSON object
with ``--json``), logs to stderr.
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

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch

from steelqc.flows.training import ingest_step, run_folder_step, split_step
from steelqc.tasks.config import load_settings
from steelqc.tasks.data.labels import LabelSpace
from steelqc.tasks.data.split import load_split
from steelqc.tasks.data.synth import generate_dataset
from steelqc.tasks.model.distributed import fit
from steelqc.tasks.model.inference import available_cpus
from steelqc.tasks.model.train import TrainConfig, resolve_config

log = logging.getLogger("bench.train_ddp")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=160)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=800)
    parser.add_argument("--batch-size", type=int, default=16, help="Per process.")
    parser.add_argument("--model", default="mobilenet_v2")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (nccl, one GPU a process).")
    parser.add_argument("--json", action="store_true")
    return parser.parse_args()


def prepare(args: argparse.Namespace, work: Path) -> tuple[TrainConfig, dict]:
    """Generated data ingested and split as `steelqc train` does; the training config of one process."""
    data = work / "data"
    generate_dataset(data, n_images=args.n_images, seed=7, mix={0: 0.3, 1: 0.2, 2: 0.15, 3: 0.2, 4: 0.15})
    ingest = ingest_step.fn(str(data), "auto", None, {})
    overrides = {"model": args.model, "weights": "none", "epochs": args.epochs, "height": args.height,
                 "width": args.width, "batch_size": args.batch_size, "device": args.device, "patience": 0}  # fmt: skip
    cfg = resolve_config(load_settings(), overrides, image_shape=tuple(ingest["image_shape"]))
    run_dir = run_folder_step.fn(ingest, cfg.fingerprint(), False, {})
    split_step.fn(run_dir, {})
    frames = {"train": load_split(run_dir, "train"), "val": load_split(run_dir, "val")}
    return cfg, {**frames, "space": LabelSpace.from_dict(ingest["label_space"])}


def timed(cfg: TrainConfig, ctx: dict, processes: int, out: Path, threads: int | None = None) -> dict:
    """One training call with ``processes`` processes (``threads`` each; None: the CPUs split between them): its
    epoch and whole-call images/s."""
    run_cfg = TrainConfig.from_dict({**cfg.to_dict(), "processes": processes, "threads": threads})
    start = time.perf_counter()
    result = fit(ctx["train"], ctx["val"], ctx["space"], run_cfg, out)
    seconds = time.perf_counter() - start
    images = len(ctx["train"]) * result.epochs_run
    return {
        "epoch_images_per_s": max(h["images_per_second"] for h in result.history),
        "call_images_per_s": round(images / seconds, 2),
        "call_seconds": round(seconds, 1),
    }


def best(runs: list[dict]) -> dict:
    """The best of repeated runs, figure by figure."""
    return {
        "epoch_images_per_s": max(r["epoch_images_per_s"] for r in runs),
        "call_images_per_s": max(r["call_images_per_s"] for r in runs),
        "call_seconds": min(r["call_seconds"] for r in runs),
    }


def main() -> None:
    args = parse_args()
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="steelqc-train-ddp-"))
    os.environ["STEELQC_HOME"] = str(work / "home")
    cfg, ctx = prepare(args, work)
    load_before = os.getloadavg()[0]
    log.warning("warm-up: one process fills the image cache")
    timed(cfg, ctx, 1, work / "warm-up")
    split = max(1, available_cpus() // args.processes)
    settings = {"one_process": (1, None), f"one_process_{split}_threads": (1, split), "many": (args.processes, None)}
    runs: dict[str, list[dict]] = {name: [] for name in settings}
    for i in range(args.repeats):
        for name, (processes, threads) in settings.items():
            runs[name].append(timed(cfg, ctx, processes, work / f"{name}-{i}", threads))
            log.warning("%s, run %d: %s", name, i + 1, runs[name][-1])
    figures = {name: best(r) for name, r in runs.items()}
    many = figures.pop("many")
    one = {key: max(f[key] for f in figures.values()) for key in ("epoch_images_per_s", "call_images_per_s")}
    result = {
        "device": args.device,
        "gpu": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None,
        "cpus": available_cpus(),
        "model": args.model,
        "input": f"{args.height}x{args.width}",
        "batch_size_per_process": args.batch_size,
        "train_images": len(ctx["train"]),
        "epochs": args.epochs,
        **figures,
        f"{args.processes}_processes": many,
        "ratio_epoch": round(many["epoch_images_per_s"] / one["epoch_images_per_s"], 2),
        "ratio_call": round(many["call_images_per_s"] / one["call_images_per_s"], 2),
        "load_average": [round(load_before, 1), round(os.getloadavg()[0], 1)],
    }
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:24} {value}")


if __name__ == "__main__":
    main()
