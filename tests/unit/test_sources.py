"""Several data sources: parsing ``NAME=DIR``, joining class maps by name, the ``source`` column."""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path

import pytest

from steelqc.tasks.config import Settings
from steelqc.tasks.data.ingest import IngestError, dataset_fingerprint, ingest, load_manifest
from steelqc.tasks.data.prepare import split_run_folder
from steelqc.tasks.data.sources import (
    DataSource,
    class_id_map,
    ingest_sources,
    parse_source,
    parse_sources,
    sources_to_folder,
)
from steelqc.tasks.data.split import load_split
from tests.helpers import write_image


def folders(root: Path, counts: dict[str, int], seed: int = 0) -> Path:
    """A class-folder data set with ``counts`` small images per class folder."""
    for name, n in counts.items():
        for i in range(n):
            write_image(root / name / f"{i:03d}.png", (8, 16), "PNG", seed=seed + 100 * i + len(name))
    return root


def test_name_equals_dir_and_bare_dir(tmp_path: Path) -> None:
    assert parse_source("plant-a=/data/a") == DataSource("plant-a", Path("/data/a"))
    assert parse_source(str(tmp_path / "line_2")) == DataSource("line_2", tmp_path / "line_2")
    odd = tmp_path / "my data"
    assert parse_source(str(odd)).name == "my-data"  # named after the folder, made a valid name


def test_a_bare_folder_with_an_equals_sign_stays_a_folder(tmp_path: Path) -> None:
    weird = tmp_path / "a b=c"
    weird.mkdir()
    assert parse_source(str(weird)).path == weird


@pytest.mark.parametrize(
    ("specs", "fault"),
    [
        (["a=/x", "a=/y"], "given twice"),
        (["a=/x", "b=/x"], "folder /x given twice"),
        (["a="], "names no folder"),
        (["bad name=/nowhere"], "is not a source name"),
        ([], "no data source"),
    ],
)
def test_bad_source_lists_say_what_is_wrong(specs: list[str], fault: str) -> None:
    with pytest.raises(IngestError, match=fault):
        parse_sources(specs)


def test_classes_are_joined_by_name_with_the_settings_ids() -> None:
    settings = Settings()  # ok 0, crack 1, scratch 2, dent 3, other 4
    # class folders number alphabetically: OK 0, dent 1, scratch 2
    assert class_id_map({0: "OK", 1: "dent", 2: "scratch"}, settings, "plant-b") == {0: 0, 1: 3, 2: 2}


def test_a_class_the_settings_do_not_know_is_an_error_naming_source_and_class() -> None:
    with pytest.raises(IngestError, match=r"source 'plant-b': class 'rust' is not in the settings' class map"):
        class_id_map({0: "ok", 1: "rust"}, Settings(), "plant-b")


def test_two_sources_are_joined_by_class_name(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    a = folders(tmp_path / "a", {"ok": 3, "crack": 3})
    b = folders(tmp_path / "b", {"ok": 2, "dent": 3, "scratch": 2}, seed=7)  # alone: dent 1, scratch 2
    result = ingest_sources(parse_sources([f"plant-a={a}", f"plant-b={b}"]), settings)
    manifest = result.manifest
    assert result.class_names == {0: "ok", 1: "crack", 2: "scratch", 3: "dent"}
    assert len(manifest) == 13  # nothing dropped
    dent = manifest[manifest["label_name"] == "dent"]
    assert set(dent["label"]) == {3} and set(dent["classes"]) == {"3"} and set(dent["source"]) == {"plant-b"}
    assert manifest["source"].value_counts().to_dict() == {"plant-a": 6, "plant-b": 7}
    assert manifest["image_id"].is_unique and manifest["image_id"].str.startswith(("plant-a/", "plant-b/")).all()
    assert result.by_class() == {"ok": 5, "crack": 3, "scratch": 2, "dent": 3}


def test_an_unknown_class_folder_in_one_of_several_sources_is_an_error(tmp_path: Path) -> None:
    a = folders(tmp_path / "a", {"ok": 1, "crack": 1})
    b = folders(tmp_path / "b", {"ok": 1, "rust": 1})
    with pytest.raises(IngestError, match="source 'b': class 'rust'"):
        ingest_sources(parse_sources([str(a), str(b)]), Settings(home=tmp_path / "home"))


def test_the_critical_class_must_be_in_some_source(tmp_path: Path) -> None:
    a = folders(tmp_path / "a", {"ok": 1, "dent": 1})
    b = folders(tmp_path / "b", {"ok": 1, "scratch": 1})
    with pytest.raises(IngestError, match="critical class 'crack' is in none of the sources"):
        ingest_sources(parse_sources([str(a), str(b)]), Settings(home=tmp_path / "home"))


def test_one_source_is_ingested_as_a_lone_folder_always_was(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    data = folders(tmp_path / "plant", {"crack": 3, "dent": 3})
    alone = ingest(data, settings)
    named = ingest_sources(parse_sources([f"p1={data}"]), settings)
    assert alone.class_names == named.class_names == {1: "crack", 2: "dent"}  # folder numbering, as before
    assert alone.fingerprint == named.fingerprint
    assert set(alone.manifest["source"]) == {"plant"} and set(named.manifest["source"]) == {"p1"}


def test_the_fingerprint_covers_every_source(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    a = folders(tmp_path / "a", {"ok": 2, "crack": 2})
    b = folders(tmp_path / "b", {"ok": 2, "crack": 2}, seed=5)
    both = ingest_sources(parse_sources([str(a), str(b)]), settings).fingerprint
    write_image(b / "crack" / "new.png", (8, 16), "PNG", seed=99)
    grown = ingest_sources(parse_sources([str(a), str(b)]), settings)
    assert grown.fingerprint != both
    assert grown.fingerprint == dataset_fingerprint(grown.manifest, grown.class_names)


def test_the_written_manifest_and_summary_name_each_source(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    a = folders(tmp_path / "a", {"ok": 2, "crack": 2})
    b = folders(tmp_path / "b", {"crack": 1, "scratch": 2})
    (b / "notes.txt").write_text("not an image")
    _, summary = sources_to_folder(parse_sources([str(a), f"west={b}"]), settings, out=tmp_path / "out")
    manifest = load_manifest(summary["manifest"])
    assert manifest.groupby("source")["label_name"].apply(sorted).to_dict() == {
        "a": ["crack", "crack", "ok", "ok"],
        "west": ["crack", "scratch", "scratch"],
    }
    west = summary["sources"]["west"]
    assert (west["valid"], west["quarantined"], west["format"]) == (3, 1, "folders")
    assert west["by_class"] == {"ok": 0, "crack": 1, "scratch": 2}
    assert summary["valid"] == 7 and summary["quarantined"] == 1


def test_a_severstal_source_and_a_class_folder_source_share_class_ids(tmp_path: Path) -> None:
    from steelqc.tasks.data.synth import generate_dataset  # noqa: PLC0415

    settings = Settings(home=tmp_path / "home", image_height=32, image_width=192)
    generate_dataset(tmp_path / "sev", 10, seed=1, shape=(32, 192), mix={0: 0.5, 1: 0.5})
    b = folders(tmp_path / "b", {"crack": 2, "other": 2})  # alone: crack 1, other 2
    result = ingest_sources(parse_sources([f"sev={tmp_path / 'sev'}", f"fold={b}"]), settings)
    assert result.class_names == settings.class_names and result.format == "mixed"
    by_source = result.manifest.groupby(["source", "label_name"])["label"].unique().to_dict()
    assert {k: list(v) for k, v in by_source.items() if k[0] == "fold"} == {
        ("fold", "crack"): [1],
        ("fold", "other"): [4],
    }
    assert by_source[("sev", "crack")].tolist() == [1]
    assert (result.manifest.loc[result.manifest["source"] == "fold", "pixels_crack"] == 0).all()


def _review(image: Path, settings: Settings, label: str) -> Path:
    """``image`` as `steelqc review` files it: ``reviewed/<class>/<sha256><ext>``."""
    target = settings.reviewed_dir / label / f"{hashlib.sha256(image.read_bytes()).hexdigest()}{image.suffix}"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(image, target)
    return target


def test_the_reviewed_label_wins_over_the_old_source_and_is_recorded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(home=tmp_path / "home")
    a = folders(tmp_path / "a", {"ok": 3, "crack": 3, "scratch": 3})
    b = folders(tmp_path / "b", {"ok": 3, "crack": 3}, seed=7)
    relabelled = _review(a / "scratch" / "000.png", settings, "crack")  # people say: a crack, not a scratch
    confirmed = _review(b / "ok" / "001.png", settings, "ok")
    _, before = sources_to_folder(parse_sources([f"plant-a={a}", f"plant-b={b}"]), settings, out=tmp_path / "r1")
    first = split_run_folder(Path(before["out"]), settings)  # the ledger remembers each image's split by content
    sha = hashlib.sha256(relabelled.read_bytes()).hexdigest()
    splits = {s: set(load_split(before["out"], s)["sha256"]) for s in ("train", "val", "test")}
    was_in = next(s for s, hashes in splits.items() if sha in hashes)

    with caplog.at_level(logging.WARNING, logger="steelqc.tasks.data.sources"):
        sources = parse_sources([f"plant-a={a}", f"plant-b={b}", f"reviewed={settings.reviewed_dir}"])
        result, summary = sources_to_folder(sources, settings, out=tmp_path / "r2")

    manifest = result.manifest
    assert manifest["sha256"].is_unique and len(manifest) == before["valid"]  # two rows replaced, none added
    row = manifest.loc[manifest["sha256"] == sha].iloc[0]
    assert (row["source"], row["label_name"]) == ("reviewed", "crack")
    assert "plant-a/scratch/000.png" not in set(manifest["image_id"])
    assert summary["relabelled_by_review"] == [
        {"image_id": "plant-a/scratch/000.png", "source": "plant-a", "sha256": sha, "from": "scratch",
         "to": "crack", "reviewed_image_id": f"reviewed/crack/{relabelled.name}"}
    ]  # fmt: skip
    assert summary["confirmed_by_review"] == 1
    assert hashlib.sha256(confirmed.read_bytes()).hexdigest() in set(
        manifest.loc[manifest["source"] == "reviewed", "sha256"]
    )
    assert summary["sources"]["plant-a"]["by_class"]["scratch"] == 2 and summary["by_class"]["crack"] == 7
    assert "plant-a/scratch/000.png scratch -> crack" in caplog.text
    split = split_run_folder(Path(summary["out"]), settings)
    assert sha in set(load_split(summary["out"], was_in)["sha256"]) and split["ledger_added"] == 0
    assert first["ledger_added"] == before["valid"]


def test_the_reviewed_source_drops_the_masks_of_the_rows_it_replaces(tmp_path: Path) -> None:
    from steelqc.tasks.data.synth import generate_dataset  # noqa: PLC0415

    settings = Settings(home=tmp_path / "home", image_height=32, image_width=192)
    generate_dataset(tmp_path / "sev", 8, seed=1, shape=(32, 192), mix={0: 0.25, 1: 0.75})
    alone = ingest_sources(parse_sources([f"sev={tmp_path / 'sev'}"]), settings)
    crack = alone.manifest[alone.manifest["label_name"] == "crack"].iloc[0]
    assert (alone.masks["image_id"] == crack["image_id"]).any()
    _review(Path(crack["path"]), settings, "scratch")
    folders(tmp_path / "b", {"crack": 1})

    result = ingest_sources(
        parse_sources([f"sev={tmp_path / 'sev'}", f"b={tmp_path / 'b'}", f"labelled={settings.reviewed_dir}"]), settings
    )  # the settings' reviewed folder, whatever its name

    gone = f"sev/{crack['image_id']}"
    assert gone not in set(result.manifest["image_id"]) and gone not in set(result.masks["image_id"])
    assert len(result.masks) > 0 and [r["to"] for r in result.replaced_by_review] == ["scratch"]
