"""Tuning throughput: trials per hour with 1 and with 2 workers on the same data, torch threads split.

    python benchmarks/tuning_workers.py [--trials 6] [--n-images 120] [--json]

Each configuration tunes a fresh study (its own STEELQC_HOME and SQLite file) with the same data, search space and
per-trial budget; the 2-worker run gives each worker half the cores' torch threads. On 2 cores expect parity:
the point of workers is correctness here and throughput on bigger machines.
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
os.environ.setdefault("MPLBACKEND", "Agg")

from prefect import flow

from steelqc.flows.tuning import tuning_flow_fn
from steelqc.tasks.data.synth import generate_dataset

SPACE = {
    "lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
    "scheduler": {"type": "categorical", "choices": ["none", "cosine"]},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--n-images", type=int, default=120)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)

    work = Path(tempfile.mkdtemp(prefix="steelqc-tune-bench-"))
    os.environ["STEELQC_TUNE_SPACE"] = json.dumps(SPACE)
    os.environ["STEELQC_TUNE_EPOCHS"] = "2"

    data = work / "data"
    generate_dataset(data, n_images=args.n_images, seed=11, mix={0: 0.3, 1: 0.2, 2: 0.15, 3: 0.2, 4: 0.15})

    @flow(name="tuning-benchmark")
    def bench(workers: int, home: str) -> dict:
        os.environ["STEELQC_HOME"] = home
        start = time.perf_counter()
        summary = tuning_flow_fn(str(data), args.trials, workers=workers, profile="tiny")
        summary["seconds"] = time.perf_counter() - start
        return summary

    rows = {}
    for workers in (1, 2):
        summary = bench(workers, str(work / f"home-{workers}"))
        rows[workers] = {
            "workers": workers,
            "trials": summary["finished_trials"],
            "seconds": round(summary["seconds"], 1),
            "trials_per_hour": round(3600 * summary["finished_trials"] / summary["seconds"], 1),
        }
    result = {
        "one_worker": rows[1],
        "two_workers": rows[2],
        "ratio_2_over_1": round(rows[2]["trials_per_hour"] / rows[1]["trials_per_hour"], 3),
    }
    if args.json:
        print(json.dumps(result))
    else:
        for row in rows.values():
            print(
                f"{row['workers']} worker(s): {row['trials']} trials in {row['seconds']} s = "
                f"{row['trials_per_hour']} trials/hour"
            )
        print(f"ratio 2 workers / 1 worker: {result['ratio_2_over_1']}")


if __name__ == "__main__":
    main()
