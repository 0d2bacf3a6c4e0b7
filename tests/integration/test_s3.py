"""S3 inboxes and review queues against moto's S3 server (boto3 over HTTP, tests/integration/conftest.py)."""

from __future__ import annotations

import hashlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from steelqc.monitoring.inbox import InboxError, open_inbox, sha256_of
from steelqc.monitoring.ledger import Ledger
from steelqc.monitoring.review import ReviewQueueError, open_review_queue
from steelqc.tasks.config import Settings
from tests.helpers import free_port
from tests.integration.conftest import MotoS3


def png_bytes(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, size=(8, 8), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, "L").save(out, "PNG")
    return out.getvalue()


@pytest.fixture
def factory(moto_s3: MotoS3) -> MotoS3:
    """Bucket ``factory``: images under ``inbox/`` next to things the inbox must not list."""
    s3 = moto_s3.client()
    s3.create_bucket(Bucket="factory")
    objects = {
        "inbox/a.png": png_bytes(1),
        "inbox/line2/b.PNG": png_bytes(2),
        "inbox/copy-of-a.png": png_bytes(1),
        "inbox/notes.txt": b"not an image",
        "inbox/.hidden.png": png_bytes(3),
        "inbox/.tmp/c.png": png_bytes(3),
        "inbox/folder/": b"",
        "inbox2/d.png": png_bytes(4),
        "other/e.png": png_bytes(5),
    }
    for key, body in objects.items():
        s3.put_object(Bucket="factory", Key=key, Body=body)
    return moto_s3


def test_s3_inbox_lists_and_fetches_images_under_its_prefix(factory: MotoS3, tmp_path: Path) -> None:
    settings = Settings(s3_endpoint_url=factory.endpoint_url)
    inbox = open_inbox("s3://factory/inbox", settings)
    items = inbox.list_items()

    assert [i.uri for i in items] == [
        "s3://factory/inbox/a.png",
        "s3://factory/inbox/copy-of-a.png",
        "s3://factory/inbox/line2/b.PNG",
    ]
    assert [i.name for i in items] == ["a.png", "copy-of-a.png", "b.PNG"]
    assert items[0].size == len(png_bytes(1))
    assert items[0].stamp == hashlib.md5(png_bytes(1)).hexdigest()  # the ETag of a plain upload
    assert inbox.describe() == "s3://factory/inbox"

    into = tmp_path / "fetched"
    paths = [inbox.fetch(item, into) for item in items]
    assert [p.parent for p in paths] == [into] * 3 and len(set(paths)) == 3
    assert paths[2].read_bytes() == png_bytes(2)
    assert sha256_of(paths[0]) == hashlib.sha256(png_bytes(1)).hexdigest()
    assert sorted(p.name for p in into.iterdir()) == sorted(p.name for p in paths)  # no partial files left

    new, duplicates = Ledger.load(tmp_path / "ledger.json").pending(
        items, lambda item: sha256_of(inbox.fetch(item, into))
    )
    assert [i.name for i, _ in new] == ["a.png", "b.PNG"]
    assert [(d.item.name, d.first_uri) for d in duplicates] == [("copy-of-a.png", "s3://factory/inbox/a.png")]


def test_a_whole_bucket_is_an_inbox_too(factory: MotoS3) -> None:
    inbox = open_inbox("s3://factory", Settings(s3_endpoint_url=factory.endpoint_url))
    assert len(inbox.list_items()) == 5  # a, copy-of-a, b, d, e; never the hidden ones or the text file


def test_fetch_refuses_an_object_changed_since_listing(factory: MotoS3, tmp_path: Path) -> None:
    inbox = open_inbox("s3://factory/inbox/", Settings(s3_endpoint_url=factory.endpoint_url))
    item = inbox.list_items()[0]
    factory.client().put_object(Bucket="factory", Key="inbox/a.png", Body=png_bytes(7))
    with pytest.raises(InboxError, match=r"inbox/a\.png: changed since it was listed"):
        inbox.fetch(item, tmp_path / "fetched")
    assert list((tmp_path / "fetched").iterdir()) == []  # the partial download is removed


def test_missing_bucket_or_unreachable_server_is_a_clear_error(moto_s3: MotoS3) -> None:
    settings = Settings(s3_endpoint_url=moto_s3.endpoint_url)
    with pytest.raises(InboxError, match=r"s3://no-such-bucket/in: bucket 'no-such-bucket' does not exist"):
        open_inbox("s3://no-such-bucket/in", settings)
    with pytest.raises(ReviewQueueError, match=r"review queue s3://no-such-bucket/q: .*does not exist"):
        open_review_queue("s3://no-such-bucket/q", settings)

    nowhere = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(InboxError, match=re.escape(f"s3://factory/in: S3 at {nowhere} cannot be reached")):
        open_inbox("s3://factory/in", Settings(s3_endpoint_url=nowhere))


def picked(rows: list[tuple[str, bytes]], reasons: list[str]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "uri": uri,
                "sha256": hashlib.sha256(body).hexdigest(),
                "predicted": "ok",
                "confidence": 0.55,
                "critical_proba": 0.4,
                "novel": False,
                "reasons": reasons,
            }
            for uri, body in rows
        ]
    )


def test_review_queue_in_s3_is_written_read_back_and_idempotent(factory: MotoS3, tmp_path: Path) -> None:
    settings = Settings(s3_endpoint_url=factory.endpoint_url)
    local = tmp_path / "local.png"
    local.write_bytes(png_bytes(9))
    rows = picked(
        [("s3://factory/inbox/a.png", png_bytes(1)), ("s3://factory/inbox/line2/b.PNG", png_bytes(2))],
        ["least-confident"],
    )
    rows = pd.concat([rows, picked([(str(local), png_bytes(9))], ["novel"])], ignore_index=True)
    queue = open_review_queue("s3://factory/review/", settings)

    assert queue.add(rows, run_id="run-1") == 3

    s3 = factory.client()
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="factory", Prefix="review/")["Contents"])
    sha = rows["sha256"].tolist()
    assert keys == sorted([*(f"review/queue/{h}.json" for h in sha), f"review/images/{sha[2]}.png"])
    stored = json.loads(s3.get_object(Bucket="factory", Key=f"review/queue/{sha[0]}.json")["Body"].read())
    assert stored["image"] == "s3://factory/inbox/a.png"  # an S3 image is referenced, not copied
    assert (stored["reasons"], stored["monitoring_run"], stored["confidence"]) == (["least-confident"], "run-1", 0.55)
    uploaded = s3.get_object(Bucket="factory", Key=f"review/images/{sha[2]}.png")["Body"].read()
    assert uploaded == png_bytes(9)  # a local image is uploaded: labellers cannot reach this machine

    reopened = open_review_queue("s3://factory/review", settings)
    assert sorted(e["sha256"] for e in reopened.list()) == sorted(sha)
    assert reopened.add(rows, run_id="run-2") == 0
    again = rows.copy()
    again["reasons"] = [["drift-sample"]] * 3
    assert reopened.add(again, run_id="run-3") == 0
    entries = {e["sha256"]: e for e in reopened.list()}
    assert len(entries) == 3
    assert entries[sha[0]]["reasons"] == ["least-confident", "drift-sample"]
    assert entries[sha[0]]["monitoring_run"] == "run-1"
    assert len(s3.list_objects_v2(Bucket="factory", Prefix="review/")["Contents"]) == 4


def test_local_queue_downloads_an_s3_image_when_no_copy_is_given(factory: MotoS3, tmp_path: Path) -> None:
    settings = Settings(s3_endpoint_url=factory.endpoint_url)
    queue = open_review_queue(str(tmp_path / "review"), settings)
    assert queue.add(picked([("s3://factory/inbox/line2/b.PNG", png_bytes(2))], ["novel"]), run_id="r") == 1
    [entry] = queue.list()
    assert Path(entry["image"]).read_bytes() == png_bytes(2)
    assert Path(entry["image"]).parent == tmp_path / "review" / "images"
