"""Train/validation/test splits, stratified by label and stable as the data set grows.

Each image gets a number ``u`` in [0, 1) from its content hash (and the seed); within its class it goes to
train when ``u < train``, to validation when ``u < train + val``, else to test. An image's split depends only on
its own content, so adding images never moves an old one: a nightly run on a grown data set cannot move an old
test image into training. Stratification holds in expectation; the proportions are exact only for large classes.

Small classes (documented fallback):

* a class with fewer than :data:`MIN_CLASS_SIZE` images cannot be split: all of it goes to train and the summary
  carries a warning (the gates' minimum test support then refuses to judge that class on nothing);
* a class large enough whose hash draw leaves validation or test empty borrows, for that split, the image whose
  ``u`` lies nearest to the split's interval (from a split that keeps at least one image).

A borrowed image is moved by the draw of the other images, so it could move back later. The ledger
(``STEELQC_HOME/split_ledger.csv``, content hash -> split) makes every assignment sticky: an image seen before
keeps its split, whatever the fallback later decides. The training pipeline always reads and updates it.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from steelqc.tasks.config import SplitFractions
from steelqc.tasks.data.ingest import load_manifest
from steelqc.tasks.fileio import atomic_write

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
MIN_CLASS_SIZE = 3
LEDGER_COLUMNS = ["sha256", "image_id", "label", "split"]


class SplitError(ValueError):
    """The manifest cannot be split as asked."""


def hash_unit(sha256_hex: str, seed: int) -> float:
    """A number in [0, 1) drawn from an image's content hash and the seed."""
    digest = hashlib.sha256(f"{seed}:{sha256_hex}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _by_threshold(u: float, fractions: SplitFractions) -> str:
    if u < fractions.train:
        return "train"
    return "val" if u < fractions.train + fractions.val else "test"


def _interval(split: str, fractions: SplitFractions) -> tuple[float, float]:
    lo = {"train": 0.0, "val": fractions.train, "test": fractions.train + fractions.val}[split]
    return lo, lo + getattr(fractions, split)


def assign_splits(
    manifest: pd.DataFrame,
    fractions: SplitFractions | None = None,
    seed: int = 42,
    previous: Mapping[str, str] | None = None,
) -> tuple[pd.Series, list[str]]:
    """Assign every manifest row to train/val/test.

    ``previous`` maps content hashes to splits already given (the ledger); those images keep them.
    Returns the split of each row (indexed like ``manifest``) and warnings about small classes.
    """
    fractions = fractions or SplitFractions()
    previous = previous or {}
    if manifest["sha256"].isna().any():
        raise SplitError("manifest rows without a content hash (sha256) cannot be split")
    bad = sorted(set(previous.values()) - set(SPLITS))
    if bad:
        raise SplitError(f"ledger holds unknown split names {bad}")
    u = manifest["sha256"].map(lambda h: hash_unit(h, seed))
    split = pd.Series(index=manifest.index, dtype=object)
    warnings: list[str] = []
    for label, members in manifest.groupby("label", sort=True).groups.items():
        idx = list(members)
        known = {i: previous[manifest.at[i, "sha256"]] for i in idx if manifest.at[i, "sha256"] in previous}
        fresh = [i for i in idx if i not in known]
        for i, s in known.items():
            split[i] = s
        name = manifest.loc[idx[0], "label_name"] if "label_name" in manifest else label
        if len(idx) < MIN_CLASS_SIZE:
            for i in fresh:
                split[i] = "train"
            if fresh:
                warnings.append(
                    f"class {name!r} has {len(idx)} image(s), fewer than {MIN_CLASS_SIZE}: "
                    "too few to split, all in train (no validation or test support)"
                )
            continue
        for i in fresh:
            split[i] = _by_threshold(u[i], fractions)
        for target in ("test", "val"):
            if (split[idx] == target).any():
                continue
            counts = split[idx].value_counts()
            donors = [i for i in fresh if counts.get(split[i], 0) > 1 and split[i] != target]
            if not donors:
                warnings.append(f"class {name!r}: no {target} image and none free to borrow")
                continue
            lo, hi = _interval(target, fractions)
            pick = min(donors, key=lambda i: (max(lo - u[i], u[i] - hi, 0.0), manifest.at[i, "sha256"]))
            warnings.append(
                f"class {name!r} ({len(idx)} images): hash draw left {target} empty; "
                f"borrowed {manifest.at[pick, 'image_id']} from {split[pick]}"
            )
            split[pick] = target
    for w in warnings:
        log.warning(w)
    return split, warnings


def read_ledger(path: Path) -> dict[str, str]:
    """Content hash -> split from a ledger file (empty when the file does not exist)."""
    if not path.exists():
        return {}
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = set(LEDGER_COLUMNS) - set(df.columns)
    if missing:
        raise SplitError(f"{path}: ledger lacks columns {sorted(missing)}")
    return dict(zip(df["sha256"], df["split"], strict=True))


def update_ledger(path: Path, manifest: pd.DataFrame, split: pd.Series) -> int:
    """Add the images not yet in the ledger (atomically); returns how many were added."""
    known = read_ledger(path)
    rows = manifest.assign(split=split)[LEDGER_COLUMNS]
    new = rows[~rows["sha256"].isin(known)].drop_duplicates("sha256")
    if new.empty:
        return 0
    old = pd.read_csv(path, dtype=str, keep_default_na=False) if path.exists() else None
    merged = pd.concat([old, new.astype(str)], ignore_index=True) if old is not None else new
    atomic_write(path, lambda tmp: merged.to_csv(tmp, index=False))
    return len(new)


def write_splits(manifest: pd.DataFrame, split: pd.Series, out_dir: Path) -> dict[str, str]:
    """Write ``out_dir/splits/{train,val,test}.csv`` (manifest rows plus a ``split`` column)."""
    folder = out_dir / "splits"
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    frame = manifest.assign(split=split)
    for name in SPLITS:
        path = folder / f"{name}.csv"
        frame[frame["split"] == name].to_csv(path, index=False)
        paths[name] = str(path)
    return paths


def load_split(run_dir: Path | str, name: str) -> pd.DataFrame:
    """Split ``name`` (train, val or test) of a run folder, as :func:`write_splits` wrote it: the manifest's rows
    and dtypes plus ``split``. The one way split files are read."""
    if name not in SPLITS:
        raise ValueError(f"unknown split {name!r}; choose from {SPLITS}")
    return load_manifest(Path(run_dir) / "splits" / f"{name}.csv")


def split_counts(manifest: pd.DataFrame, split: pd.Series) -> dict[str, dict[str, int]]:
    """{split: {class name: count}} for the summary."""
    names = manifest["label_name"] if "label_name" in manifest else manifest["label"].astype(str)
    table = pd.crosstab(split, names)
    return {s: {str(k): int(v) for k, v in table.loc[s].items()} if s in table.index else {} for s in SPLITS}
