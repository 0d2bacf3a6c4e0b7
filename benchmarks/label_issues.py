"""How many planted label errors a training run puts in front of a labeller (cleanlab's suspects and the confident
mistakes it queues for review).

    python benchmarks/label_issues.py [--data ../shared/data/neu-cls] [--critical-class crazing] [--flips 20]
                                      [--seed 5] [--cap 50] [--epochs N] [--json]

1. Copies the class-folder data set into a temporary folder and, in a temporary ``STEELQC_HOME``, ingests and
   splits it (`steelqc ingest`, `steelqc split`: the split ledger keeps each image's split by content hash).
2. Plants ``--flips`` label errors: that many validation and test images (drawn with ``--seed``) are moved into the
   folder of another class (also drawn). Training images are left alone: a run looks for label errors among the
   images it evaluates, which it never trained on.
3. Runs `steelqc train` on the flipped copy (the default recipe; ``--epochs`` to shorten it) with the review caps
   raised to ``--cap``, then reads the run's ``evaluation/review_candidates.csv`` and ``probabilities.csv``.

Prints, per reason (``suspected-label-error``, ``confident-mistake``, either) and for the default caps (the first
``review_label_issues`` / ``review_confident_mistakes`` by rank): how many images were flagged, how many of the
planted errors they hold (recall) and what share of the flagged images are planted errors (precision; the
unplanted ones may be real label errors of the data set, or the model's mistakes). One JSON object with ``--json``.
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

import numpy as np
import pandas as pd

from steelqc.tasks.config import Settings
from steelqc.tasks.evaluation.label_issues import CANDIDATES_FILE, CONFIDENT_MISTAKE, SUSPECTED_LABEL_ERROR

log = logging.getLogger("bench.label_issues")
ROOT = Path(__file__).resolve().parents[1]
STEELQC = [str(Path(sys.executable).with_name("steelqc"))]


def steelqc(*args: str, env: dict[str, str]) -> dict[str, Any]:
    """Run a `steelqc` command with ``--json``; its JSON (stderr passes through)."""
    proc = subprocess.run([*STEELQC, *args, "--json"], env=env, stdout=subprocess.PIPE, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"steelqc {' '.join(args)} failed ({proc.returncode}): {proc.stdout[-2000:]}")
    return json.loads(proc.stdout)


def plant_flips(data: Path, splits: dict[str, str], n: int, seed: int) -> pd.DataFrame:
    """Move ``n`` validation/test images of ``data`` into another class's folder; one row per move."""
    evaluated = pd.concat([pd.read_csv(splits[s], dtype=str) for s in ("val", "test")], ignore_index=True)
    classes = sorted(p.name for p in data.iterdir() if p.is_dir())
    rng = np.random.default_rng(seed)
    picked = evaluated.iloc[rng.choice(len(evaluated), size=min(n, len(evaluated)), replace=False)]
    moves = []
    for row in picked.itertuples():
        source = Path(row.path)
        given = source.parent.name
        wrong = str(rng.choice([c for c in classes if c != given]))
        target = data / wrong / source.name
        source.rename(target)
        moves.append({"sha256": row.sha256, "split": row.split, "true": given, "planted": wrong})
    return pd.DataFrame(moves)


def _rates(flagged: pd.DataFrame, planted: set[str]) -> dict[str, Any]:
    hits = int(flagged["sha256"].isin(planted).sum())
    return {
        "flagged": len(flagged),
        "planted_found": hits,
        "recall": round(hits / len(planted), 3) if planted else None,
        "precision": round(hits / len(flagged), 3) if len(flagged) else None,
    }


def score(candidates: pd.DataFrame, planted: set[str], caps: dict[str, int]) -> dict[str, Any]:
    """Flagged counts, recall and precision of the planted errors per reason, uncapped (up to ``--cap``) and at
    the default caps (the first ``caps[reason]`` by the run's ranking: rows keep it)."""
    reasons = candidates["reasons"].fillna("").map(lambda r: set(str(r).split(";")))  # as the training run writes them
    out: dict[str, Any] = {}
    for reason in (SUSPECTED_LABEL_ERROR, CONFIDENT_MISTAKE):
        rows = candidates[reasons.map(lambda r, reason=reason: reason in r)]
        out[reason] = _rates(rows, planted) | {"at_default_cap": _rates(rows.head(caps[reason]), planted)}
    out["either"] = _rates(candidates, planted)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "neu-cls")
    parser.add_argument("--critical-class", default="crazing")
    parser.add_argument("--flips", type=int, default=20)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--cap", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=None, help="Epochs (default: the recipe's).")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    if not args.data.is_dir():
        raise SystemExit(f"{args.data}: no such data folder (class folders expected)")
    defaults = Settings.model_fields
    caps = {
        SUSPECTED_LABEL_ERROR: int(defaults["review_label_issues"].default),
        CONFIDENT_MISTAKE: int(defaults["review_confident_mistakes"].default),
    }
    with tempfile.TemporaryDirectory(prefix="steelqc-label-issues-") as tmp:
        data, home = Path(tmp) / "data", Path(tmp) / "home"
        shutil.copytree(args.data, data)
        env = {k: v for k, v in os.environ.items() if not k.startswith("STEELQC_")}
        env.update(STEELQC_HOME=str(home), STEELQC_REVIEW_LABEL_ISSUES=str(args.cap),
                   STEELQC_REVIEW_CONFIDENT_MISTAKES=str(args.cap))  # fmt: skip
        ingested = steelqc("ingest", str(data), "--critical-class", args.critical_class, env=env)
        splits = steelqc("split", str(Path(ingested["manifest"]).parent), env=env)["splits"]
        moves = plant_flips(data, splits, args.flips, args.seed)
        start = time.perf_counter()
        epochs = ["--epochs", str(args.epochs)] if args.epochs else []
        summary = steelqc("train", "--data", str(data), "--critical-class", args.critical_class, *epochs, env=env)
        seconds = time.perf_counter() - start
        candidates = pd.read_csv(Path(summary["run_dir"]) / "evaluation" / CANDIDATES_FILE, dtype=str)
    planted = set(moves["sha256"])
    result = {
        "data": str(args.data),
        "evaluated_images": sum(sum(c.values()) for s, c in summary["splits"].items() if s in ("val", "test")),
        "planted": len(planted),
        "cap": args.cap,
        "default_caps": caps,
        "train_seconds": round(seconds, 1),
        "macro_f1": summary["metrics"].get("macro_f1"),
        **score(candidates, planted, caps),
    }
    if args.json:
        print(json.dumps(result))
        return
    head = f"{result['planted']} label errors planted among {result['evaluated_images']} validation/test images"
    print(f"{head} of {args.data.name} (macro-F1 on the flipped test split {result['macro_f1']:.4f}; {seconds:.0f} s)")
    for reason in (SUSPECTED_LABEL_ERROR, CONFIDENT_MISTAKE, "either"):
        r = result[reason]
        line = f"  {reason:22s} flagged {r['flagged']:3d}  planted found {r['planted_found']:3d}  recall {r['recall']}"
        line += f"  precision {r['precision']}"
        if "at_default_cap" in r:
            d = r["at_default_cap"]
            line += f"   | default cap {caps[reason]}: found {d['planted_found']}, precision {d['precision']}"
        print(line)


if __name__ == "__main__":
    main()
