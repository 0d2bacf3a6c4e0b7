"""A colour-only class difference (issue 11, item 4): two classes whose grey images are identical, told apart by a
model trained at the tiny profile because the data's colour reaches it.

The data (tests/colour_data.py): pair ``i`` of ``red_oxide`` and ``green_scale`` shares one grey texture under
tints of equal luminance, so both decode to the same grey pixels; no grey model can do better than chance on them.
The pipeline's own steps run here without Prefect or MLflow (ingest -> split -> tiny config -> train -> the
inference function that scoring uses); tests/integration/test_colour.py runs `steelqc train` and `predict`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from steelqc.tasks.config import Settings
from steelqc.tasks.data.datasets import InputSpec
from steelqc.tasks.data.imageio import decode_image
from steelqc.tasks.data.labels import LabelSpace
from steelqc.tasks.data.prepare import ingest_to_folder, split_run_folder
from steelqc.tasks.data.split import load_split
from steelqc.tasks.model.inference import load_model, predict_proba
from steelqc.tasks.model.train import resolve_config, train_model
from tests.colour_data import CRITICAL, make_colour_pairs


def test_colour_model_separates_classes_that_grey_cannot(tmp_path: Path) -> None:
    pairs = make_colour_pairs(tmp_path / "data", 30, seed=0)
    for red, green in zip(pairs["red_oxide"], pairs["green_scale"], strict=True):  # grey: the same image
        np.testing.assert_array_equal(decode_image(red, channels=1), decode_image(green, channels=1))

    settings = Settings()
    result, summary = ingest_to_folder(tmp_path / "data", settings, critical_class=CRITICAL, out=tmp_path / "run")
    assert summary["channels"] == 3
    split_run_folder(tmp_path / "run", settings, ledger=False)
    cfg = resolve_config(settings, {"image_channels": summary["channels"]}, "tiny")
    assert cfg.input_spec.image_channels == 3 and cfg.epochs == 1  # the tiny profile, as CI trains
    space = LabelSpace(result.class_names, result.critical_class)
    train, val, test = (load_split(tmp_path / "run", name) for name in ("train", "val", "test"))
    trained = train_model(train, val, space, cfg, tmp_path / "run", progress=False)

    model, meta = load_model(trained.best_checkpoint)
    assert InputSpec.from_dict(meta["input_spec"]).image_channels == 3  # the checkpoint says how to decode
    held_out = make_colour_pairs(tmp_path / "new", 8, seed=99, prefix="new_")  # never seen in training
    ids = {name: cid for cid, name in result.class_names.items()}
    new = [{"path": str(p), "label": ids[name]} for name, paths in held_out.items() for p in paths]
    frame = pd.concat([test[["path", "label"]], pd.DataFrame(new)], ignore_index=True)
    proba = predict_proba(model, frame, space, meta["input_spec"])
    truth = np.array([space.index_of(v) for v in frame["label"]])
    accuracy = float((proba.argmax(axis=1) == truth).mean())
    assert accuracy >= 0.9, f"colour model accuracy {accuracy:.2f} on {len(truth)} images (chance 0.5)"
