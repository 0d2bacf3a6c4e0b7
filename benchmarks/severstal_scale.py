"""Load at Severstal scale: generate, ingest, train one epoch and monitor as many images as the real data set holds.

    python benchmarks/severstal_scale.py [--n-images 12568] [--seed 3] [--epochs 1] [--work DIR] [--keep]
        [--setting STEELQC_NAME=VALUE ...] [--json]

Each step is the real CLI in its own process (``--json``), in a fresh ``STEELQC_HOME`` under ``--work`` (default:
a temporary folder, removed afterwards unless ``--keep``):

1. ``steelqc synth``: ``--n-images`` Severstal-format 256x1600 JPEGs with their ``train.csv`` (RLE masks);
2. ``steelqc ingest``: validate, hash and decode every image, manifest and fingerprint;
3. ``steelqc train --epochs 1``: the whole training pipeline (ingest, split, one epoch, calibration, evaluation with
   glare variants and Grad-CAM, novelty reference, registration), relaxed gates (a load test, not a quality one);
4. ``steelqc monitor``: every image (hard links in a folder inbox; ``monitor_max_images`` raised to take them all)
   against the champion of step 3: features, drift check, review picks, MLflow record.

For each step: wall time, images/s and the peak resident memory (``ru_maxrss`` of the step's process tree, from
``os.wait4``), next to the data set's size on disk: a step whose peak memory grew with the data set would load it
whole. Figures go to stdout (one JSON object with ``--json``); logs and the steps' stderr go to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_cli import RELAXED_GATES, STEELQC

log = logging.getLogger("bench.severstal_scale")
REAL_SIZE = 12_568  # images in Severstal's train_images (the real data set)


def run_step(env: dict[str, str], *args: str) -> tuple[dict[str, Any], float, int]:
    """``steelqc ARGS --json`` in ``env``: its JSON, wall seconds and the peak RSS (bytes) of its process tree."""
    start = time.perf_counter()
    proc = subprocess.Popen([STEELQC, *args, "--json"], stdout=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"steelqc {' '.join(args)} failed with exit code {proc.returncode}: {out[-2000:]!r}")
    return json.loads(out.decode().strip().splitlines()[-1]), seconds, usage.ru_maxrss * 1024


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def link_inbox(images: Path, inbox: Path) -> int:
    """Hard links of every image in ``inbox`` (a folder inbox); how many."""
    inbox.mkdir(parents=True, exist_ok=True)
    n = 0
    for image in sorted(images.glob("*.jpg")):
        os.link(image, inbox / image.name)
        n += 1
    return n


def _row(name: str, n: int, seconds: float, peak: int, **extra: Any) -> dict[str, Any]:
    return {"step": name, "images": n, "seconds": round(seconds, 1), "images_per_s": round(n / seconds, 1),
            "peak_rss_mb": round(peak / 1024**2), **extra}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=REAL_SIZE, help="Images (the real data set: 12,568).")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--work", type=Path, default=None, help="Folder for data and STEELQC_HOME.")
    parser.add_argument("--keep", action="store_true", help="Keep the work folder.")
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="STEELQC_NAME=VALUE",
        help="A setting for every step (repeatable), e.g. STEELQC_CACHE__MAX_BYTES_MEMORY=0.",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    settings = dict(item.split("=", 1) for item in args.setting)
    if any(not name.startswith("STEELQC_") for name in settings):
        parser.error(f"--setting takes STEELQC_NAME=VALUE, got {args.setting}")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")

    work = args.work or Path(tempfile.mkdtemp(prefix="steelqc-scale-"))
    data, home, inbox = work / "data", work / "home", work / "inbox"
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEELQC_")}
    env |= RELAXED_GATES | {"STEELQC_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env |= {"STEELQC_MONITOR_MIN_IMAGES": "1", "STEELQC_MONITOR_MAX_IMAGES": str(args.n_images)} | settings
    rows = []
    try:
        n = args.n_images
        log.info("generating %d images in %s", n, data)
        _, seconds, peak = run_step(env, "synth", "--out", str(data), "--n-images", str(n), "--seed", str(args.seed))
        size = folder_bytes(data)
        rows.append(_row("synth", n, seconds, peak, data_mb=round(size / 1024**2)))
        log.info("ingest")
        ingested, seconds, peak = run_step(env, "ingest", str(data))
        rows.append(_row("ingest", n, seconds, peak, valid=ingested["valid"], quarantined=ingested["quarantined"]))
        log.info("train, %d epoch(s)", args.epochs)
        trained, seconds, peak = run_step(env, "train", "--data", str(data), "--epochs", str(args.epochs))
        train = trained.get("train") or {}
        rows.append(_row("train", n, seconds, peak, epochs=args.epochs, model_version=trained["model_version"],
                         train_seconds=train.get("seconds"), macro_f1=trained["metrics"].get("macro_f1")))  # fmt: skip
        log.info("monitor over every image")
        linked = link_inbox(data / "train_images", inbox)
        monitored, seconds, peak = run_step(env, "monitor", "--incoming", str(inbox))
        rows.append(_row("monitor", linked, seconds, peak, decision=monitored.get("decision"),
                         n_images=monitored.get("n_images"), drifted_share=monitored.get("drifted_share")))  # fmt: skip
    finally:
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    result = {
        "n_images": args.n_images,
        "settings": settings,
        "cores": os.cpu_count(),
        "load_avg": os.getloadavg(),
        "steps": rows,
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"{args.n_images} generated 256x1600 images on {os.cpu_count()} cores (load {os.getloadavg()[0]:.1f}):")
    for r in rows:
        extra = {k: v for k, v in r.items() if k not in ("step", "images", "seconds", "images_per_s", "peak_rss_mb")}
        speed = f"{r['seconds']:8.1f} s  {r['images_per_s']:7.1f} images/s"
        print(f"  {r['step']:8s} {speed}  peak {r['peak_rss_mb']:6d} MB  {json.dumps(extra)}")


if __name__ == "__main__":
    main()
