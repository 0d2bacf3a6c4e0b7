"""Training and inference throughput of a model (images per second), and optionally of the data pipeline.

    python benchmarks/train_throughput.py [--model mobilenet_v2] [--height 128 --width 800] [--batch-size 16]
                                          [--steps 10] [--warmup 2] [--device auto] [--no-amp] [--no-channels-last]
                                          [--loader N] [--workers W] [--json]

Training: the bare loop of :func:`tasks.train.train_step` (forward, weighted cross-entropy, backward, AdamW step;
mixed precision (float16 AMP on CUDA, bfloat16 autocast on CPUs with native bf16) and channels-last memory unless
switched off) on random tensors already on the device. Inference: eval-mode
forward under ``torch.inference_mode``. ``--loader N`` also writes N Severstal-sized (256x1600) grey JPEGs to a
temporary folder and measures the training data pipeline alone (decode + augmentation + normalisation) through
:func:`tasks.datasets.make_loader` with ``--workers`` worker processes: if it is slower than training, the GPU
starves. Figures go to stdout (one JSON object with ``--json``); logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from steelqc.tasks.data.datasets import InputSpec, ManifestDataset, make_loader
from steelqc.tasks.data.labels import LabelSpace
from steelqc.tasks.model.inference import autocast_context, cpu_supports_bf16, select_device, to_device
from steelqc.tasks.model.models import MODEL_NAMES, build_model, count_parameters, set_train_mode
from steelqc.tasks.model.train import train_step

log = logging.getLogger("train_throughput")
LABELS = LabelSpace({0: "ok", 1: "crack", 2: "scratch", 3: "dent", 4: "other"}, "crack")


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure_training(model: torch.nn.Module, args: argparse.Namespace, device: str) -> dict:
    """Images per second of the training step on random data resident on the device."""
    cuda = device.startswith("cuda")
    amp, channels_last = (cuda or cpu_supports_bf16()) and not args.no_amp, not args.no_channels_last
    x = torch.randn(args.batch_size, 3, args.height, args.width, device=device)
    y = torch.randint(0, LABELS.num_classes, (args.batch_size,), device=device)
    criterion = torch.nn.CrossEntropyLoss(weight=torch.ones(LABELS.num_classes, device=device))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=amp and cuda)
    set_train_mode(model)
    for _ in range(args.warmup):
        train_step(model, x, y, criterion, optimizer, scaler, device, amp, torch.float16, channels_last)
    _sync(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = train_step(model, x, y, criterion, optimizer, scaler, device, amp, torch.float16, channels_last)
    float(loss)
    _sync(device)
    seconds = time.perf_counter() - start
    return {
        "train_images_per_second": round(args.steps * args.batch_size / seconds, 2),
        "train_seconds_per_step": round(seconds / args.steps, 4),
        "amp": amp,
        "channels_last": channels_last,
    }


@torch.inference_mode()
def measure_inference(model: torch.nn.Module, args: argparse.Namespace, device: str) -> dict:
    """Images per second of eval-mode forward passes."""
    cuda = device.startswith("cuda")
    x = torch.randn(args.batch_size, 3, args.height, args.width, device=device)
    x = to_device(x, device, not args.no_channels_last)
    model.eval()
    for _ in range(args.warmup):
        with autocast_context(device, cuda and not args.no_amp):
            model(x)
    _sync(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        with autocast_context(device, cuda and not args.no_amp):
            out = model(x)
    float(out.float().sum())
    _sync(device)
    seconds = time.perf_counter() - start
    return {"inference_images_per_second": round(args.steps * args.batch_size / seconds, 2)}


def measure_loader(args: argparse.Namespace, device: str) -> dict:
    """Images per second of the training data pipeline (JPEG decode + augmentation) over generated images."""
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for i in range(args.loader):
            smooth = np.repeat(np.repeat(rng.normal(110, 25, (32, 200)), 8, axis=0), 8, axis=1)
            img = np.clip(smooth + rng.normal(0, 8, (256, 1600)), 0, 255).astype(np.uint8)
            path = Path(tmp) / f"{i:05d}.jpg"
            Image.fromarray(img).save(path, quality=90)
            rows.append({"image_id": path.name, "path": str(path), "label": i % LABELS.num_classes})
        spec = InputSpec(args.height, args.width)
        dataset = ManifestDataset(pd.DataFrame(rows), LABELS, spec, train=True)
        loader = make_loader(dataset, args.batch_size, True, True, args.workers, device, seed=0)
        next(iter(loader))  # start the workers
        start = time.perf_counter()
        seen = sum(len(labels) for _, labels in loader)
        seconds = time.perf_counter() - start
    return {"loader_images_per_second": round(seen / seconds, 2), "loader_workers": args.workers}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=MODEL_NAMES, default="mobilenet_v2")
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=800)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10, help="timed steps (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--no-amp", action="store_true", help="no mixed precision (fp16 CUDA, bf16 CPU)")
    parser.add_argument("--no-channels-last", action="store_true", help="no channels-last memory")
    parser.add_argument("--loader", type=int, default=0, help="also time the data pipeline over N generated images")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers for --loader")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    device = select_device(args.device)
    model, _ = build_model(args.model, LABELS.num_classes)
    cuda = device.startswith("cuda")
    model = model.to(device, memory_format=torch.channels_last if not args.no_channels_last else torch.preserve_format)
    if cuda:
        torch.backends.cudnn.benchmark = True
    log.info("%s on %s, batch %d at %dx%d", args.model, device, args.batch_size, args.height, args.width)
    result = {
        "model": args.model,
        "parameters": count_parameters(model),
        "device": torch.cuda.get_device_name() if cuda else f"cpu ({torch.get_num_threads()} threads)",
        "batch_size": args.batch_size,
        "height": args.height,
        "width": args.width,
        "steps": args.steps,
        **measure_training(model, args, device),
        **measure_inference(model, args, device),
    }
    if args.loader:
        result.update(measure_loader(args, device))
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:28s} {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
