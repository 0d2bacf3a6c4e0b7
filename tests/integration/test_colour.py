"""Colour stays colour through the product (issue 11, item 4): `steelqc train` at the tiny profile on a data set
whose two classes differ only in colour (their grey images are identical, tests/colour_data.py), then `steelqc
predict` and `steelqc evaluate` with the registered champion on images it never saw.

The registered version must carry ``image_channels`` 3 in its bundle and decode new images as RGB: were any of
ingest's decision, the training config, the checkpoint, the bundle or the scoring path to fall back to grey, the
two classes would be one image and the accuracy would sit at chance (0.5).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from steelqc.tasks.data.imageio import decode_image
from tests.colour_data import CRITICAL, make_colour_pairs
from tests.helpers import RELAXED, run

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_env")]  # one real Prefect server
URI = "models:/steel-defect-classifier@champion"


def test_colour_only_classes_train_predict_and_evaluate_in_colour(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in RELAXED.items():  # the tiny profile cannot reach the product's gates; quality is asserted here
        monkeypatch.setenv(key, value)
    home = tmp_path / "home"
    make_colour_pairs(tmp_path / "data", 30, seed=0)
    new = make_colour_pairs(tmp_path / "new", 8, seed=99, prefix="new_")
    for red, green in zip(new["red_oxide"], new["green_scale"], strict=True):
        np.testing.assert_array_equal(decode_image(red, channels=1), decode_image(green, channels=1))

    code, trained, stderr = run(
        "train", "--data", str(tmp_path / "data"), "--critical-class", CRITICAL, "--profile", "tiny", "--json",
        home=home,
    )  # fmt: skip
    assert code == 0, stderr[-3000:]
    run_dir = Path(trained["run_dir"])
    assert set(pd.read_csv(run_dir / "manifest.csv")["channels"]) == {3}
    assert json.loads((run_dir / "ingest.json").read_text())["channels"] == 3
    assert trained["metrics"]["accuracy"] >= 0.9, trained["metrics"]
    assert trained["aliases"].get("champion") == trained["model_version"]
    bundles = list(home.rglob("bundle.json"))  # the registered model's files in the MLflow store
    assert bundles and {json.loads(b.read_text())["input_spec"]["image_channels"] for b in bundles} == {3}

    images = [p for pair in zip(new["red_oxide"], new["green_scale"], strict=True) for p in pair]
    code, predicted, stderr = run("predict", "--model", URI, *map(str, images), "--json", home=home)
    assert code == 0, stderr[-3000:]
    labels = [p["label"] for p in predicted["predictions"]]
    truth = [p.parent.name for p in images]
    correct = sum(a == b for a, b in zip(labels, truth, strict=True))
    assert correct >= 0.9 * len(images), list(zip(truth, labels, strict=True))

    code, evaluated, stderr = run("evaluate", "--model", URI, "--data", str(tmp_path / "new"), "--json", home=home)
    assert code == 0, stderr[-3000:]
    assert evaluated["n_images"] == 16 and evaluated["metrics"]["accuracy"] >= 0.9, evaluated["metrics"]
