"""Ingest throughput on real data: the NEU-CLS class folders and the Severstal sample.

    python benchmarks/ingest_speed.py [--json]

Each image is hashed and fully decoded (truncation and format checks), so this is the cost of validation.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from steelqc.tasks.config import Settings
from steelqc.tasks.data.ingest import ingest

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def measure(root: Path, critical: str | None, settings: Settings) -> dict:
    start = time.perf_counter()
    result = ingest(root, settings, critical_class=critical)
    seconds = time.perf_counter() - start
    return {
        "data": root.name,
        "valid": len(result.manifest),
        "quarantined": len(result.quarantine),
        "seconds": round(seconds, 3),
        "images_per_second": round(len(result.manifest) / seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    settings = Settings(io_workers=args.workers)
    rows = []
    for name, critical in (("severstal-sample", None), ("neu-cls", "crazing")):
        if (SHARED / name).exists():
            rows.append(measure(SHARED / name, critical, settings))
    if args.json:
        print(json.dumps({"io_workers": args.workers, "results": rows}))
    else:
        for r in rows:
            print(f"{r['data']:18s} {r['valid']:5d} images  {r['seconds']:7.2f} s  {r['images_per_second']:8.1f} img/s")


if __name__ == "__main__":
    main()
