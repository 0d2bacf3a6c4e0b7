"""`steelqc predict` streaming with the session's tiny champion: its decisions agree with `steelqc evaluate` on the
same images, a corrupt image gets an error record and the rest go on, every decision lands in the decision log
and the CSV, and an s3:// prefix is read through the inbox's S3 access (moto)."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import pytest

from steelqc.tasks.model.batch_predict import DECISION_LOG_FIELDS
from tests.helpers import Champion, run
from tests.integration.conftest import MotoS3

pytestmark = pytest.mark.slow

N_IMAGES = 24


@pytest.fixture
def subset(champion: Champion, tmp_path: Path) -> Path:
    """The first images of the champion's data with their train.csv rows: a small Severstal data set."""
    out = tmp_path / "subset"
    (out / "train_images").mkdir(parents=True)
    images = sorted((champion.data / "train_images").glob("*.jpg"))[:N_IMAGES]
    for image in images:
        shutil.copy(image, out / "train_images" / image.name)
    names = {p.name for p in images}
    lines = (champion.data / "train.csv").read_text().splitlines()
    rows = [line for line in lines[1:] if line.split(",", 1)[0] in names]
    (out / "train.csv").write_text("\n".join([lines[0], *rows]) + "\n")
    return out


def test_predict_agrees_with_evaluate_and_logs_every_decision(champion: Champion, subset: Path, tmp_path: Path) -> None:
    code, evaluated, stderr = run("evaluate", "--model", champion.uri, "--data", str(subset), "--json",
                                  home=champion.home)  # fmt: skip
    assert code == 0 and evaluated is not None, stderr[-3000:]
    metrics = json.loads(Path(evaluated["artifacts"]["metrics"]).read_text())
    by_image = dict(zip(metrics["predictions"]["image_id"], metrics["predictions"]["pred"], strict=True))
    assert len(by_image) == N_IMAGES

    decisions = tmp_path / "decisions"
    corrupt = subset / "train_images" / "zz_corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out_csv = tmp_path / "out" / "records.csv"
    code, predicted, stderr = run(
        "-c", str(_config(tmp_path, decisions)), "predict", "--model", champion.uri,
        str(subset / "train_images"), "--csv", str(out_csv), "--json", home=champion.home,
    )  # fmt: skip
    assert code == 0 and predicted is not None, stderr[-3000:]
    records = predicted["predictions"]
    assert [Path(r["image"]).name for r in records] == sorted([*by_image, corrupt.name])
    assert predicted["n_images"] == N_IMAGES + 1 and predicted["failed"] == 1
    assert predicted["format"] == "torch" and predicted["model_version"] == champion.summary["model_version"]
    assert predicted["images_per_second"] > 0 and "images/s" in stderr

    bad = next(r for r in records if r.get("error"))
    assert Path(bad["image"]) == corrupt and "unreadable image" in bad["error"] and bad["label"] is None

    # the same decisions as evaluate (which applies the same calibrated threshold)
    label_names = list(records[0]["probabilities"])  # the model's output order, as evaluate's indices
    for record in records:
        if record is bad:
            continue
        assert label_names.index(record["label"]) == by_image[Path(record["image"]).name], record["image"]
        assert record["sha256"] == hashlib.sha256(Path(record["image"]).read_bytes()).hexdigest()

    # the decision log: one line a record, with every field
    logs = sorted(decisions.glob("*.jsonl"))
    assert [str(p) for p in logs] == predicted["decision_log"]
    lines = [json.loads(line) for p in logs for line in p.read_text().splitlines()]
    assert len(lines) == len(records)
    for line, record in zip(lines, records, strict=True):
        assert tuple(line) == DECISION_LOG_FIELDS
        assert line["image"] == record["image"] and line["sha256"] == record["sha256"]
        assert line["decision"] == record["label"] and line["probabilities"] == record["probabilities"]
        assert line["model"] == champion.uri and line["model_version"] == predicted["model_version"]
        assert line["format"] == "torch" and line["threshold"] == predicted["threshold"]
        assert line["time"].endswith("Z") and line["time"][:10] == logs[0].stem
    assert lines[-1]["error"] == bad["error"]

    with out_csv.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [row["image"] for row in rows] == [r["image"] for r in records]
    assert [row["label"] for row in rows] == [r["label"] or "" for r in records]
    assert set(f"p_{n}" for n in label_names) <= set(rows[0])


def test_an_exported_model_predicts_what_evaluate_decides(champion: Champion, subset: Path, tmp_path: Path) -> None:
    code, evaluated, stderr = run("evaluate", "--model", champion.uri, "--data", str(subset), "--json",
                                  home=champion.home)  # fmt: skip
    assert code == 0 and evaluated is not None, stderr[-3000:]
    metrics = json.loads(Path(evaluated["artifacts"]["metrics"]).read_text())
    by_image = dict(zip(metrics["predictions"]["image_id"], metrics["predictions"]["pred"], strict=True))
    export_dir = tmp_path / "export"
    code, exported, stderr = run("export", "--model", champion.uri, "--out", str(export_dir), "--no-int8", "--json",
                                 home=champion.home)  # fmt: skip
    assert code == 0 and exported is not None, stderr[-3000:]
    for fmt in ("onnx", "openvino"):  # ONNX Runtime, the portable path, and OpenVINO
        code, predicted, stderr = run("predict", "--model", str(export_dir), str(subset / "train_images"),
                                      "--format", fmt, "--json", home=champion.home)  # fmt: skip
        assert code == 0 and predicted is not None, stderr[-3000:]
        assert predicted["format"] == fmt and predicted["model"] == str(export_dir)
        assert predicted["model_version"] == champion.summary["model_version"] and predicted["failed"] == 0
        records = predicted["predictions"]
        assert sorted(Path(r["image"]).name for r in records) == sorted(by_image)
        names = list(records[0]["probabilities"])
        for record in records:
            assert names.index(record["label"]) == by_image[Path(record["image"]).name], (fmt, record["image"])
            assert record["novelty"] is None
        lines = [json.loads(line) for p in predicted["decision_log"] for line in Path(p).read_text().splitlines()]
        assert sum(line["model"] == str(export_dir) and line["format"] == fmt for line in lines) == len(records)

    code, error, _ = run("predict", "--model", champion.uri, "x.jpg", "--format", "onnx", "--json", home=champion.home)
    assert code == 2 and "applies to an export directory" in error["error"]


def test_predict_reads_an_s3_prefix(champion: Champion, moto_s3: MotoS3, tmp_path: Path) -> None:
    images = sorted((champion.data / "train_images").glob("*.jpg"))[:3]
    s3 = moto_s3.client()
    s3.create_bucket(Bucket="plant")
    for image in images:
        s3.put_object(Bucket="plant", Key=f"line1/{image.name}", Body=image.read_bytes())
    s3.put_object(Bucket="plant", Key="line1/broken.jpg", Body=b"not an image")
    code, local, stderr = run("predict", "--model", champion.uri, *map(str, images), "--json", home=champion.home)
    assert code == 0 and local is not None, stderr[-3000:]
    code, remote, stderr = run("predict", "--model", champion.uri, "s3://plant/line1", "--json", home=champion.home)
    assert code == 0 and remote is not None, stderr[-3000:]
    by_uri = {r["image"]: r for r in remote["predictions"]}
    expected = sorted(["s3://plant/line1/broken.jpg", *(f"s3://plant/line1/{p.name}" for p in images)])
    assert [r["image"] for r in remote["predictions"]] == expected, "the listing's order"
    assert "unreadable image" in by_uri["s3://plant/line1/broken.jpg"]["error"] and remote["failed"] == 1
    for mine in local["predictions"]:
        theirs = by_uri[f"s3://plant/line1/{Path(mine['image']).name}"]
        assert (mine["label"], mine["sha256"]) == (theirs["label"], theirs["sha256"])
        assert mine["probabilities"] == pytest.approx(theirs["probabilities"], abs=1e-6)

    # one object named by its key, and a uri that names nothing: an error record, never a silent empty run
    one, nothing = f"s3://plant/line1/{images[0].name}", "s3://plant/line2"
    code, single, stderr = run("predict", "--model", champion.uri, one, nothing, "--json", home=champion.home)
    assert code == 0 and single is not None, stderr[-3000:]
    assert [r["image"] for r in single["predictions"]] == [one, nothing] and single["failed"] == 1
    assert single["predictions"][0]["label"] == by_uri[one]["label"]
    assert "no image object" in single["predictions"][1]["error"]


def _config(tmp_path: Path, decisions: Path) -> Path:
    path = tmp_path / "settings.yaml"
    path.write_text(f"decisions_dir: {decisions}\n")
    return path
