"""Speed of the synthetic data generator on one CPU core, against the target of 20 images per second.

Usage: ``python benchmarks/synth_speed.py [--n 200] [--seed 42] [--json]``. Generates N Severstal-sized images
(render + JPEG encoding + writing + RLE) into a temporary folder, pinned to one core where the OS allows it.
``--json`` prints one JSON object on stdout; logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from steelqc.tasks.data.synth import generate_dataset

TARGET_IMAGES_PER_SECOND = 20.0
log = logging.getLogger("synth_speed")


def pin_to_one_core() -> str:
    """Pin this process to one CPU core if the OS allows it; return a description of what happened."""
    if not hasattr(os, "sched_setaffinity"):
        return "not pinned (no sched_setaffinity on this OS)"
    try:
        core = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {core})
    except OSError as exc:
        return f"not pinned ({exc})"
    return f"pinned to core {core}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="images to generate (default 200)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")

    pinning = pin_to_one_core()
    log.info("%s", pinning)
    with tempfile.TemporaryDirectory(prefix="steelqc-synth-bench-") as tmp:
        summary = generate_dataset(Path(tmp) / "data", args.n, seed=args.seed)
        jpeg_bytes = sum(p.stat().st_size for p in (Path(tmp) / "data" / "train_images").glob("*.jpg"))
    rate = float(summary["images_per_second"])
    result = {
        "n_images": args.n,
        "seconds": summary["seconds"],
        "images_per_second": rate,
        "ms_per_image": round(1000.0 / rate, 2) if rate > 0 else None,
        "target_images_per_second": TARGET_IMAGES_PER_SECOND,
        "ratio_to_target": round(rate / TARGET_IMAGES_PER_SECOND, 2),
        "meets_target": rate >= TARGET_IMAGES_PER_SECOND,
        "mean_jpeg_kb": round(jpeg_bytes / max(args.n, 1) / 1024, 1),
        "by_class": summary["by_class"],
        "cpu": pinning,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{rate:.1f} images/s ({result['ms_per_image']} ms/image) on one core, "
            f"{result['ratio_to_target']}x the {TARGET_IMAGES_PER_SECOND:.0f} images/s target "
            f"({'met' if result['meets_target'] else 'NOT met'}); {pinning}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
