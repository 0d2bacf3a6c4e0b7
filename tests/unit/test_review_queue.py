"""Labelling the review queue: votes, disputes, image lookup, label CSVs and batch plans (pure functions), and the
``reviewed`` source among the nightly sources."""

from __future__ import annotations

from pathlib import Path

import pytest

from steelqc.monitoring.monitor import nightly_fingerprint
from steelqc.monitoring.review_labels import (
    LabelError,
    LabelRow,
    add_vote,
    check_class,
    find_entry,
    parse_label_csv,
    plan,
    tally,
)
from steelqc.tasks.config import DEFAULT_CLASS_NAMES, NIGHTLY_DATA, Settings
from steelqc.tasks.data.sources import ingest_sources, parse_sources
from tests.helpers import write_image

SHA_A, SHA_B = "a" * 63 + "1", "ab" * 31 + "12"


def entries() -> dict[str, dict]:
    return {
        SHA_A: {"sha256": SHA_A, "image": f"/q/images/{SHA_A}.jpg", "source_uri": "/inbox/one.jpg"},
        SHA_B: {"sha256": SHA_B, "image": f"/q/images/{SHA_B}.png", "source_uri": "s3://b/in/two.png"},
    }


def vote(label: str, reviewer: str) -> dict:
    return {"label": label, "reviewer": reviewer, "at": "2024-01-01T00:00:00+00:00"}


def test_tally_one_vote_per_reviewer_and_disputes() -> None:
    assert tally([], 1) == ("queued", None, {})
    assert tally([vote("crack", "ann")], 1) == ("reviewed", "crack", {"ann": "crack"})
    assert tally([vote("crack", "ann")], 2)[0] == "queued"
    assert tally([vote("crack", "ann"), vote("crack", "ann")], 2)[0] == "queued"  # the same reviewer twice
    assert tally([vote("crack", "ann"), vote("crack", "bob")], 2)[:2] == ("reviewed", "crack")
    assert tally([vote("crack", "ann"), vote("dent", "bob"), vote("crack", "cy")], 2)[:2] == ("disputed", None)
    # a reviewer changing their vote settles the dispute
    settled = [vote("crack", "ann"), vote("dent", "bob"), vote("crack", "bob")]
    assert tally(settled, 2) == ("reviewed", "crack", {"ann": "crack", "bob": "crack"})


def test_add_vote_records_who_and_when_and_keeps_the_history() -> None:
    entry = entries()[SHA_A]
    first = add_vote(entry, "dent", "ann", "t1", 2)
    assert first["status"] == "queued" and not first["disputed"] and "labels" not in entry
    second = add_vote(first, "crack", "bob", "t2", 2)
    assert second["status"] == "disputed" and second["disputed"]
    assert second["labels"] == [
        {"label": "dent", "reviewer": "ann", "at": "t1"},
        {"label": "crack", "reviewer": "bob", "at": "t2"},
    ]
    third = add_vote(second, "crack", "ann", "t3", 2)
    assert (third["status"], third["reviewed_as"], third["reviewed_at"]) == ("reviewed", "crack", "t3")
    assert len(third["labels"]) == 3


def test_check_class_names_the_known_classes() -> None:
    assert check_class("crack", DEFAULT_CLASS_NAMES) == "crack"
    with pytest.raises(LabelError, match=r"class 'rust' is not in the settings' class map \(ok, crack, scratch"):
        check_class("rust", DEFAULT_CLASS_NAMES)


@pytest.mark.parametrize(
    ("key", "sha"),
    [
        (SHA_A, SHA_A),
        ("aaaaaa", SHA_A),
        ("abab", None),  # prefix too short
        (f"/q/images/{SHA_B}.png", SHA_B),
        ("s3://b/in/two.png", SHA_B),
        ("one.jpg", SHA_A),
        ("nothing.jpg", None),
    ],
)
def test_find_entry(key: str, sha: str | None) -> None:
    if sha is None:
        with pytest.raises(LabelError, match="is not in the review queue"):
            find_entry(entries(), key)
    else:
        assert find_entry(entries(), key)["sha256"] == sha


def test_find_entry_refuses_an_ambiguous_name() -> None:
    both = entries()
    both[SHA_B]["source_uri"] = "/other/one.jpg"
    with pytest.raises(LabelError, match="names 2 queued images"):
        find_entry(both, "one.jpg")


def test_parse_label_csv() -> None:
    rows = parse_label_csv("image,label,reviewer\none.jpg,crack,ann\n\n two.png , dent ,bob\n", "l.csv")
    assert rows == [LabelRow("one.jpg", "crack", "ann", 2), LabelRow("two.png", "dent", "bob", 4)]


@pytest.mark.parametrize(
    ("text", "row", "fault"),
    [
        ("img,label\n", 1, "the header must be image,label,reviewer"),
        ("", 1, "the header must be"),
        ("image,label,reviewer\n", None, "no label rows"),
        ("image,label,reviewer\na,crack,ann\nb,crack\n", 3, "row 3: 2 fields, expected 3"),
        ("image,label,reviewer\na,,ann\n", 2, "row 2: label is empty"),
        ("image,label,reviewer\na,crack, \n", 2, "row 2: reviewer is empty"),
    ],
)
def test_parse_label_csv_names_file_row_and_fault(text: str, row: int | None, fault: str) -> None:
    with pytest.raises(LabelError, match=fault) as caught:
        parse_label_csv(text, "labels.csv")
    assert (caught.value.file, caught.value.row) == ("labels.csv", row)
    assert str(caught.value).startswith("labels.csv")


def test_plan_folds_rows_in_order_and_checks_every_row_first() -> None:
    rows = [LabelRow("one.jpg", "crack", "ann", 2), LabelRow("two.png", "dent", "ann", 3)]
    changed = plan(entries(), rows, DEFAULT_CLASS_NAMES, 1, "t")
    assert {s: e["status"] for s, e in changed.items()} == {SHA_A: "reviewed", SHA_B: "reviewed"}

    bad = [*rows, LabelRow("two.png", "rust", "bob", 4)]
    with pytest.raises(LabelError, match=r"labels.csv, row 4: class 'rust'") as caught:
        plan(entries(), bad, DEFAULT_CLASS_NAMES, 1, "t", "labels.csv")
    assert caught.value.row == 4

    again = [LabelRow("one.jpg", "crack", "ann", 2), LabelRow("one.jpg", "crack", "bob", 3)]
    with pytest.raises(LabelError, match=r"row 3: image 'one.jpg' is not in the review queue"):
        plan(entries(), again, DEFAULT_CLASS_NAMES, 1, "t", "labels.csv")

    two = plan(entries(), again, DEFAULT_CLASS_NAMES, 2, "t")
    assert two[SHA_A]["status"] == "reviewed" and two[SHA_A]["votes"] == {"ann": "crack", "bob": "crack"}


def test_nightly_sources_add_the_reviewed_source_once_it_holds_an_image(steelqc_home: Path) -> None:
    settings = Settings()
    incoming = str(settings.incoming_dir.resolve())
    assert settings.nightly_sources == [incoming]
    (settings.reviewed_dir / "crack").mkdir(parents=True)
    (settings.reviewed_dir / "crack" / ".x.part").write_bytes(b"")
    assert settings.nightly_sources == [incoming]  # nothing but a hidden leftover
    write_image(settings.reviewed_dir / "crack" / "c.png", (8, 8), "PNG")
    assert settings.nightly_sources == [incoming, f"reviewed={settings.reviewed_dir.resolve()}"]
    named = Settings(data_sources=["a=/data/a", f"mine={settings.reviewed_dir}"])
    assert named.nightly_sources == ["a=/data/a", f"mine={settings.reviewed_dir}"]


def test_the_nightly_deployment_resolves_its_sources_when_a_run_starts(steelqc_home: Path) -> None:
    """`@nightly` (the deployment's data) is resolved at run time: an image reviewed after `steelqc serve` registered
    the deployment joins the next run, and the monitor's nightly fingerprint covers it."""
    settings = Settings()
    incoming = settings.incoming_dir
    for i, name in enumerate(["ok", "ok", "crack", "crack"]):
        write_image(incoming / name / f"{i}.png", (32, 32), "PNG", seed=i)
    assert settings.resolve_data("/some/dir") == "/some/dir"
    assert settings.resolve_data(NIGHTLY_DATA) == str(incoming.resolve())
    before = nightly_fingerprint(settings)
    assert before == ingest_sources(parse_sources(str(incoming.resolve())), settings).fingerprint

    write_image(settings.reviewed_dir / "scratch" / "r.png", (32, 32), "PNG", seed=9)
    sources = settings.resolve_data(NIGHTLY_DATA)
    assert sources == [str(incoming.resolve()), f"reviewed={settings.reviewed_dir.resolve()}"]
    after = nightly_fingerprint(settings)
    assert after not in (None, before)
    joined = ingest_sources(parse_sources(sources), settings)
    assert after == joined.fingerprint and sorted(joined.manifest["source"].unique()) == ["incoming", "reviewed"]
