"""Splits: stratified, deterministic from content hashes, stable as the data set grows, small-class fallback."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pytest

from steelqc.tasks.config import SplitFractions
from steelqc.tasks.data.split import (
    MIN_CLASS_SIZE,
    SPLITS,
    SplitError,
    assign_splits,
    load_split,
    read_ledger,
    split_counts,
    update_ledger,
    write_splits,
)


def fake_manifest(counts: dict[int, int], start: int = 0) -> pd.DataFrame:
    rows = []
    for label, n in counts.items():
        for i in range(start, start + n):
            sha = hashlib.sha256(f"{label}-{i}".encode()).hexdigest()
            rows.append({"image_id": f"{label}_{i}.jpg", "label": label, "label_name": f"c{label}", "sha256": sha})
    return pd.DataFrame(rows)


def test_proportions_per_class_are_close_to_the_fractions() -> None:
    manifest = fake_manifest({0: 2000, 1: 1000})
    split, warnings = assign_splits(manifest)
    assert warnings == []
    for label in (0, 1):
        shares = split[manifest["label"] == label].value_counts(normalize=True)
        assert abs(shares["train"] - 0.70) < 0.04
        assert abs(shares["val"] - 0.15) < 0.03
        assert abs(shares["test"] - 0.15) < 0.03


def test_same_input_same_split_and_seed_changes_it() -> None:
    manifest = fake_manifest({0: 200, 1: 100})
    a, _ = assign_splits(manifest, seed=42)
    b, _ = assign_splits(manifest.sample(frac=1, random_state=3), seed=42)
    assert a.equals(b.loc[a.index])
    c, _ = assign_splits(manifest, seed=43)
    assert not a.equals(c)


def test_growing_the_data_set_never_moves_an_old_image() -> None:
    old = fake_manifest({0: 300, 1: 60, 2: 20})
    grown = pd.concat([old, fake_manifest({0: 500, 1: 200, 2: 50}, start=10_000)], ignore_index=True)
    before, _ = assign_splits(old)
    after, _ = assign_splits(grown)
    assert (after.iloc[: len(old)].to_numpy() == before.to_numpy()).all()


def test_tiny_class_goes_to_train_with_a_warning() -> None:
    manifest = fake_manifest({0: 50, 1: MIN_CLASS_SIZE - 1})
    split, warnings = assign_splits(manifest)
    assert (split[manifest["label"] == 1] == "train").all()
    assert any("'c1'" in w and "too few to split" in w for w in warnings)


def test_small_class_borrows_so_every_split_has_support() -> None:
    fractions = SplitFractions(train=0.8, val=0.1, test=0.1)
    for n in range(MIN_CLASS_SIZE, 8):
        manifest = fake_manifest({1: n})
        split, _ = assign_splits(manifest, fractions)
        assert set(split) == {"train", "val", "test"}, n


def test_ledger_keeps_borrowed_test_images_in_test_when_the_class_grows(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.csv"
    small = fake_manifest({1: 3})
    first, _ = assign_splits(small, previous=read_ledger(ledger))
    update_ledger(ledger, small, first)
    grown = pd.concat([small, fake_manifest({1: 200}, start=500)], ignore_index=True)
    second, _ = assign_splits(grown, previous=read_ledger(ledger))
    assert (second.iloc[:3].to_numpy() == first.to_numpy()).all()
    assert update_ledger(ledger, grown, second) == 200
    assert len(read_ledger(ledger)) == 203


def test_write_splits_partitions_the_manifest(tmp_path: Path) -> None:
    manifest = fake_manifest({0: 40, 1: 20})
    split, _ = assign_splits(manifest)
    paths = write_splits(manifest, split, tmp_path)
    assert paths == {name: str(tmp_path / "splits" / f"{name}.csv") for name in SPLITS}
    frames = {name: load_split(tmp_path, name) for name in SPLITS}
    assert sorted(pd.concat(frames.values())["image_id"]) == sorted(manifest["image_id"])
    assert all((frame["split"] == name).all() for name, frame in frames.items())
    with pytest.raises(ValueError, match="unknown split"):
        load_split(tmp_path, "holdout")
    counts = split_counts(manifest, split)
    assert sum(sum(c.values()) for c in counts.values()) == 60


def test_rows_without_hash_are_refused() -> None:
    manifest = fake_manifest({0: 5})
    manifest.loc[0, "sha256"] = None
    with pytest.raises(SplitError, match="content hash"):
        assign_splits(manifest)
