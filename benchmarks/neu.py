"""NEU-CLS for the monitoring benchmarks: the manifest, seeded stratified pools, a model trained on some of them.

Shared by ``benchmarks/drift_power.py`` and ``benchmarks/novelty.py``; it reuses the product's ingest, training
and inference code (nothing here trains or scores differently from ``steelqc train``).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from steelqc.tasks.config import Settings
from steelqc.tasks.data.datasets import InputSpec
from steelqc.tasks.data.ingest import ingest
from steelqc.tasks.data.labels import LabelSpace
from steelqc.tasks.model.inference import load_model, select_device
from steelqc.tasks.model.train import TrainConfig, resolve_config, train_model

log = logging.getLogger("benchmarks.neu")

ROOT = Path(__file__).resolve().parents[1]
NEU = Path(os.environ.get("STEELQC_SHARED_DATA", ROOT.parent / "shared" / "data")) / "neu-cls"


def neu_manifest(data: Path = NEU, critical: str = "crazing") -> tuple[pd.DataFrame, dict[int, str]]:
    """The NEU-CLS manifest (class folders; ``label`` = class id) and its class names."""
    if not data.is_dir():
        raise SystemExit(f"{data} not found: this benchmark needs NEU-CLS (../shared/data/neu-cls)")
    result = ingest(data, Settings(home=Path("/tmp/steelqc-bench-home")), "folders", critical)
    return result.manifest, result.class_names


def stratified(frame: pd.DataFrame, fractions: dict[str, float], seed: int) -> dict[str, pd.DataFrame]:
    """Split ``frame`` by class into named parts of the given fractions (seeded)."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[pd.DataFrame]] = {name: [] for name in fractions}
    for _, group in frame.groupby("label"):
        order = group.iloc[rng.permutation(len(group))]
        edges = np.cumsum([0, *[round(f * len(group)) for f in fractions.values()]])
        edges[-1] = min(edges[-1], len(group))
        for (name, _), lo, hi in zip(fractions.items(), edges[:-1], edges[1:], strict=True):
            parts[name].append(order.iloc[lo:hi])
    return {name: pd.concat(p, ignore_index=True) for name, p in parts.items()}


@dataclass
class Trained:
    model: nn.Module
    architecture: str
    spec: InputSpec
    label_space: LabelSpace
    device: str


def train(
    train_frame: pd.DataFrame,
    val_frame: pd.DataFrame,
    label_space: LabelSpace,
    out: Path,
    epochs: int,
    model: str = "mobilenet_v2",
    size: int | None = None,
) -> Trained:
    """Train with the product's defaults (ImageNet weights, the device's input size unless ``size``)."""
    overrides = {"model": model, "epochs": epochs, "patience": epochs, "height": size, "width": size}
    cfg: TrainConfig = resolve_config(Settings(), overrides, image_shape=(200, 200))
    result = train_model(train_frame, val_frame, label_space, cfg, out, progress=True)
    device = select_device()
    net, meta = load_model(result.best_checkpoint, device)
    return Trained(net, meta["model_name"], InputSpec.from_dict(meta["input_spec"]), label_space, device)


def verdict(target: dict[str, Any]) -> str:
    """One PASS/FAIL line."""
    return f"{'PASS' if target['passed'] else 'FAIL'}  {target['target']}: {target['value']} (target {target['goal']})"


def report(summary: dict[str, Any], as_json: bool, strict: bool, print_table: Callable[[dict[str, Any]], None]) -> int:
    """Print a benchmark's summary (one JSON object under ``--json``, PASS/FAIL lines then on stderr); the exit
    code: 1 under ``--strict`` when a target failed, else 0."""
    if as_json:
        print(json.dumps(summary, indent=2))
        for target in summary["targets"]:
            print(verdict(target), file=sys.stderr)
    else:
        print_table(summary)
    return 1 if strict and not all(t["passed"] for t in summary["targets"]) else 0
