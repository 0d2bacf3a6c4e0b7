"""`steelqc predict` over N generated 256x1600 images: images/s of the streaming batch predictor.

    python benchmarks/predict_throughput.py [--images 1000] [--model mobilenet_v2|tiny] [--home DIR] [--export]
                                            [--json]

Runs the real CLI (a subprocess, ``--json``) on a folder of generated Severstal-format images
(``tasks/data/synth.py``) against a champion: trained here in a fresh STEELQC_HOME by ``steelqc train`` (``--model
mobilenet_v2``: the default profile, MobileNetV2 on CPU at 128x800, one epoch; ``--model tiny``: the tiny
profile's simple CNN at 32x192), or the champion of an existing STEELQC_HOME (``--home``). Reported: the CLI's own
images/s (streaming: read, hash, decode and preprocess on a thread pool while the model scores, the decision log
written) and the wall time of the whole command (loading the model and its reference included). ``--export``:
also ``steelqc export --no-int8`` the champion and predict the same images with the export directory (its
recommended format), reporting its images/s and how many decisions match the torch model's.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000, help="Images to predict.")
    parser.add_argument("--model", choices=("mobilenet_v2", "tiny"), default="mobilenet_v2")
    parser.add_argument("--train-images", type=int, default=120, help="Images the champion is trained on.")
    parser.add_argument("--home", type=Path, default=None, help="An existing STEELQC_HOME with a champion.")
    parser.add_argument("--export", action="store_true", help="Also predict with the exported model.")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="steelqc-predict-throughput-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEELQC_")}
    env |= {"PREFECT_SERVER_ANALYTICS_ENABLED": "false"} | RELAXED_GATES  # the champion only has to exist
    try:
        home = args.home or work / "home"
        env["STEELQC_HOME"] = str(home)
        if args.home is None:
            data = work / "train-data"
            generate_dataset(data, n_images=args.train_images, seed=1)
            profile = ["--profile", "tiny"] if args.model == "tiny" else ["--model", "mobilenet_v2", "--epochs", "1"]
            trained = steelqc_json(env, "train", "--data", str(data), *profile)
            if "champion" not in (trained.get("aliases") or {}):
                raise SystemExit(f"the trained model is not champion ({trained.get('decision')}); use --home")
        images = work / "images"
        generate_dataset(images, n_images=args.images, seed=2024)

        start = time.perf_counter()
        summary = steelqc_json(env, "predict", str(images / "train_images"))
        wall = time.perf_counter() - start
        result = {
            "images": summary["n_images"],
            "failed": summary["failed"],
            "images_per_second": summary["images_per_second"],
            "stream_seconds": summary["seconds"],
            "wall_seconds": round(wall, 1),
            "wall_images_per_second": round(summary["n_images"] / wall, 1),
            "model": args.model if args.home is None else str(args.home),
            "cpu_count": os.cpu_count(),
        }
        if args.export:
            steelqc_json(env, "export", "--out", str(work / "export"), "--no-int8")
            exported = steelqc_json(env, "predict", "--model", str(work / "export"), str(images / "train_images"))
            pairs = zip(summary["predictions"], exported["predictions"], strict=True)
            same = sum(a["label"] == b["label"] for a, b in pairs)
            result["export"] = {
                "format": exported["format"],
                "images_per_second": exported["images_per_second"],
                "stream_seconds": exported["seconds"],
                "same_decisions": same,
            }
        if args.json:
            print(json.dumps(result))
        else:
            print(
                f"steelqc predict: {result['images']} images of 256x1600, {result['images_per_second']} images/s "
                f"streaming ({result['stream_seconds']} s), {result['wall_seconds']} s wall with loading "
                f"({result['wall_images_per_second']} images/s); {result['model']} on {result['cpu_count']} cores"
            )
            if "export" in result:
                ex = result["export"]
                print(
                    f"exported ({ex['format']}): {ex['images_per_second']} images/s streaming "
                    f"({ex['stream_seconds']} s); {ex['same_decisions']}/{result['images']} decisions as torch's"
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
