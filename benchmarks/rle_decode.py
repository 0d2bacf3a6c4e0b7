"""Decode every official Severstal mask with steelqc's codec and with the plain per-run slice loop.

    python benchmarks/rle_decode.py [--csv PATH] [--repeats 5] [--json]

Prints the best-of-N wall time of each, the ratio, and checks both give identical masks. The plain loop is the
obvious implementation (split, int arrays, one slice assignment per run), with no validation; ours validates
every string (integers, pairs, bounds, order) as it decodes.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from steelqc.tasks.data.rle import rle_decode

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CSV = ROOT.parent / "shared" / "data" / "severstal-official" / "train.csv"
log = logging.getLogger("bench.rle")


def plain_loop_decode(rle: str, shape: tuple[int, int] = (256, 1600)) -> np.ndarray:
    """The obvious decoder: one slice assignment per run, no validation."""
    s = rle.split()
    starts, lengths = (np.asarray(x, dtype=int) for x in (s[0::2], s[1::2]))
    starts -= 1
    ends = starts + lengths
    flat = np.zeros(shape[0] * shape[1], dtype=np.uint8)
    for lo, hi in zip(starts, ends, strict=True):
        flat[lo:hi] = 1
    return flat.reshape(shape[1], shape[0]).T


def best_time(fn, rles: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for rle in rles:
            fn(rle)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(message)s")
    if not args.csv.exists():
        sys.exit(f"{args.csv} not found (the official labels live in ../shared/data)")
    rles = pd.read_csv(args.csv)["EncodedPixels"].dropna().tolist()
    for rle in rles:  # same masks from both
        if not np.array_equal(rle_decode(rle), plain_loop_decode(rle)):
            sys.exit("decoders disagree")
    runs = sum(len(r.split()) // 2 for r in rles)
    ours = best_time(rle_decode, rles, args.repeats)
    plain = best_time(plain_loop_decode, rles, args.repeats)
    result = {
        "masks": len(rles),
        "runs": runs,
        "steelqc_seconds": round(ours, 4),
        "plain_loop_seconds": round(plain, 4),
        "steelqc_us_per_mask": round(ours / len(rles) * 1e6, 1),
        "plain_loop_us_per_mask": round(plain / len(rles) * 1e6, 1),
        "speedup": round(plain / ours, 2),
        "identical_masks": True,
    }
    if args.json:
        print(json.dumps(result))
    else:
        log.info("decoded %d official masks (%d runs), best of %d", len(rles), runs, args.repeats)
        print(f"steelqc rle_decode : {ours:.4f} s ({result['steelqc_us_per_mask']} us/mask, validated)")
        print(f"plain slice loop   : {plain:.4f} s ({result['plain_loop_us_per_mask']} us/mask)")
        print(f"speed-up           : {result['speedup']}x")


if __name__ == "__main__":
    main()
