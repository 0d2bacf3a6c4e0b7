"""`steelqc monitor` on 1,000 generated 256x1600 images: wall time and images/s against the target (< 120 s).

    python benchmarks/monitor_speed.py [--images 1000] [--home DIR] [--json]

Runs the real CLI (a subprocess, ``--json``) on a folder inbox of generated Severstal-format images against a
champion trained by ``steelqc train`` (the default profile: MobileNetV2 on CPU, ``--epochs 1``) on a small generated
set, in a fresh STEELQC_HOME; or against the champion of an existing STEELQC_HOME given by ``--home`` (its ledger
is set aside, so the images are new to it). The monitor's time includes loading the champion and its reference,
features of every image, the Evidently report, the MLflow record and the review queue.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from bench_cli import RELAXED_GATES, steelqc_json

from steelqc.tasks.data.synth import generate_dataset

TARGET_S = 120.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000, help="Images in the inbox.")
    parser.add_argument("--train-images", type=int, default=120, help="Images the champion is trained on.")
    parser.add_argument("--home", type=Path, default=None, help="An existing STEELQC_HOME with a champion.")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="steelqc-monitor-speed-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEELQC_")}
    env |= {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "STEELQC_MONITOR_MIN_IMAGES": "1"}
    env |= RELAXED_GATES  # a speed benchmark: the 1-epoch champion only has to exist, not to be good
    try:
        home = args.home or work / "home"
        env["STEELQC_HOME"] = str(home)
        train_s = None
        if args.home is None:
            data = work / "train-data"
            generate_dataset(data, n_images=args.train_images, seed=1)
            start = time.perf_counter()
            trained = steelqc_json(env, "train", "--data", str(data), "--epochs", "1")
            train_s = round(time.perf_counter() - start, 1)
            if "champion" not in (trained.get("aliases") or {}):
                raise SystemExit(f"the trained model is not champion ({trained.get('decision')}); use --home")
        ledger = home / "monitoring" / "ledger.json"
        if ledger.exists():
            ledger.rename(ledger.with_name(f"ledger.before-benchmark-{int(time.time())}.json"))
        inbox_data = work / "inbox-data"
        generate_dataset(inbox_data, n_images=args.images, seed=2024)
        inbox = inbox_data / "train_images"

        start = time.perf_counter()
        summary = steelqc_json(env, "monitor", "--incoming", str(inbox))
        seconds = time.perf_counter() - start
        result = {
            "images": summary["n_images"],
            "quarantined": summary["quarantined"],
            "seconds": round(seconds, 1),
            "images_per_second": round(summary["n_images"] / seconds, 1),
            "target_seconds": TARGET_S,
            "passed": seconds < TARGET_S and summary["n_images"] == args.images,
            "cpu_count": os.cpu_count(),
            "champion_training_seconds": train_s,
            "decision": summary["decision"],
            "drift_detected": summary["drift_detected"],
        }
        if args.json:
            print(json.dumps(result))
        else:
            print(
                f"steelqc monitor: {result['images']} images of 256x1600 in {result['seconds']} s "
                f"({result['images_per_second']} images/s) on {result['cpu_count']} cores; target < {TARGET_S:.0f} s: "
                f"{'met' if result['passed'] else 'NOT met'} (decision {result['decision']})"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
