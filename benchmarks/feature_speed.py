"""Speed of the monitor's feature pass (decode, photometric features, one model pass for embedding and
probabilities) on generated 256x1600 images, on the CPU and, when present, on CUDA (fp16 autocast, channels-last,
pinned memory), and how far CUDA's probabilities and embeddings are from the CPU's.

    python benchmarks/feature_speed.py [--n-images 200] [--json]
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
import torch

from steelqc.tasks.data.datasets import default_input_spec
from steelqc.tasks.data.synth import generate_dataset
from steelqc.tasks.features import extract
from steelqc.tasks.model.models import build_model

log = logging.getLogger("benchmarks.feature_speed")


def _timed(model: torch.nn.Module, spec, paths: list[str], device: str, workers: int) -> tuple[float, object]:
    extract(model, "mobilenet_v2", spec, paths[:32], device=device, progress=False)  # warm-up
    start = time.perf_counter()
    raw = extract(model, "mobilenet_v2", spec, paths, device=device, num_workers=workers, progress=False)
    return time.perf_counter() - start, raw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        generate_dataset(Path(tmp) / "data", n_images=args.n_images, seed=5)
        paths = sorted(str(p) for p in (Path(tmp) / "data" / "train_images").glob("*.jpg"))
        model, weights = build_model("mobilenet_v2", 5, weights="imagenet")
        cpu_spec = default_input_spec(256, 1600, "cpu")
        out: dict = {"n_images": len(paths), "weights": weights, "cpu_input": f"{cpu_spec.height}x{cpu_spec.width}"}
        seconds, cpu = _timed(model, cpu_spec, paths, "cpu", 0)
        out["cpu_images_per_s"] = round(len(paths) / seconds, 1)
        if torch.cuda.is_available():
            seconds, gpu = _timed(model, cpu_spec, paths, "cuda", 8)
            out["cuda_images_per_s_same_input"] = round(len(paths) / seconds, 1)
            out["cuda_max_abs_diff_proba"] = float(np.abs(gpu.proba - cpu.proba).max())
            rel = np.linalg.norm(gpu.embedding - cpu.embedding, axis=1) / np.linalg.norm(cpu.embedding, axis=1)
            out["cuda_max_rel_diff_embedding"] = float(rel.max())
            out["cuda_same_argmax"] = float(np.mean(gpu.proba.argmax(1) == cpu.proba.argmax(1)))
            native = default_input_spec(256, 1600, "cuda")
            seconds, _ = _timed(model, native, paths, "cuda", 8)
            out[f"cuda_images_per_s_{native.height}x{native.width}"] = round(len(paths) / seconds, 1)
            out["gpu"] = torch.cuda.get_device_name(0)
    if args.json:
        print(json.dumps(out))
    else:
        for key, value in out.items():
            print(f"{key:36s} {value}")


if __name__ == "__main__":
    main()
