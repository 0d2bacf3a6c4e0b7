"""`steelqc review list|label|import` on a real review queue (filled by the drift monitor's own queue code), run as
real processes: votes, disputes, the move into the reviewed source, all-or-nothing imports, and two concurrent
labellers of one image."""

from __future__ import annotations

import fcntl
import getpass
import hashlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest

from steelqc.monitoring.review import open_review_queue
from steelqc.tasks.config import Settings
from tests.helpers import STEELQC, run, write_image


def fill_queue(home: Path, n: int, new: int | None = None) -> list[str]:
    """``n`` small images queued as the drift monitor queues them (``new`` of them new: all by default); their
    hashes, in order."""
    settings = Settings()
    rows = []
    for i in range(n):
        path = write_image(home.parent / "inbox" / f"img{i}.png", (16, 24), "PNG", seed=i)
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        rows.append({"uri": str(path), "sha256": sha, "predicted": "ok", "confidence": 0.5, "critical_proba": 0.4,
                     "novel": False, "reasons": ["least-confident"]})  # fmt: skip
    assert open_review_queue(settings.review_queue, settings).add(pd.DataFrame(rows), run_id="run-1") == (
        n if new is None else new
    )
    return [r["sha256"] for r in rows]


def reviewed_files(home: Path) -> list[Path]:
    return sorted(p for p in (home / "reviewed").rglob("*") if p.is_file())


def queued_files(home: Path) -> list[Path]:
    return sorted((home / "review" / "images").glob("*"))


def test_label_moves_an_image_into_reviewed(steelqc_home: Path) -> None:
    [sha, other] = fill_queue(steelqc_home, 2)

    code, listed, _ = run("review", "list", "--json")
    assert code == 0 and (listed["queued"], listed["reviewed"], listed["disputed"]) == (2, 0, 0)
    assert {e["sha256"] for e in listed["images"]} == {sha, other}

    code, out, _ = run("review", "label", sha[:8], "crack", "--json")
    assert code == 0, out
    [entry] = out["labelled"]
    assert entry["status"] == "reviewed" and entry["reviewed_as"] == "crack"
    assert entry["votes"] == {getpass.getuser(): "crack"}  # the OS user by default
    assert (out["queued"], out["reviewed"], out["disputed"]) == (1, 1, 0)
    target = steelqc_home / "reviewed" / "crack" / f"{sha}.png"
    assert entry["reviewed_image"] == str(target)
    assert reviewed_files(steelqc_home) == [target]
    assert hashlib.sha256(target.read_bytes()).hexdigest() == sha
    assert [p.stem for p in queued_files(steelqc_home)] == [other]
    record = json.loads((steelqc_home / "review" / "done" / f"{sha}.json").read_text())
    assert record["labels"][0]["at"].endswith("+00:00") and record["labels"][0]["reviewer"]

    code, out, _ = run("review", "label", sha, "crack", "--json")  # no longer queued
    assert code == 2 and "is not in the review queue" in out["error"]
    assert fill_queue(steelqc_home, 2, new=0) == [sha, other]  # the monitor queues a reviewed image never again
    assert reviewed_files(steelqc_home) == [target] and [p.stem for p in queued_files(steelqc_home)] == [other]


def test_two_votes_a_dispute_and_its_settlement(steelqc_home: Path, monkeypatch) -> None:
    monkeypatch.setenv("STEELQC_REVIEW_VOTES", "2")
    [sha] = fill_queue(steelqc_home, 1)

    code, out, _ = run("review", "label", "img0.png", "dent", "--reviewer", "ann", "--json")
    assert code == 0 and out["labelled"][0]["status"] == "queued"
    code, out, _ = run("review", "label", sha, "crack", "--reviewer", "bob", "--json")
    assert code == 0 and out["labelled"][0]["status"] == "disputed" and out["disputed"] == 1

    code, listed, _ = run("review", "list", "--disputed", "--json")
    assert [e["sha256"] for e in listed["images"]] == [sha]
    assert listed["images"][0]["votes"] == {"ann": "dent", "bob": "crack"}

    code, out, _ = run("review", "label", sha, "crack", "--reviewer", "ann", "--json")
    assert code == 0 and out["labelled"][0]["status"] == "reviewed"
    assert reviewed_files(steelqc_home) == [steelqc_home / "reviewed" / "crack" / f"{sha}.png"]
    assert run("review", "list", "--disputed", "--json")[1]["images"] == []


def test_an_unknown_class_is_a_clear_error(steelqc_home: Path) -> None:
    [sha] = fill_queue(steelqc_home, 1)
    code, out, err = run("review", "label", sha, "rust", "--json")
    assert code == 2 and "class 'rust' is not in the settings' class map" in out["error"]
    assert "rust" in err
    assert queued_files(steelqc_home) and not reviewed_files(steelqc_home)


def test_import_is_all_or_nothing(steelqc_home: Path, tmp_path: Path) -> None:
    shas = fill_queue(steelqc_home, 3)
    bad = tmp_path / "labels.csv"
    bad.write_text(f"image,label,reviewer\n{shas[0]},crack,ann\nimg1.png,dent,ann\nimg2.png,rust,ann\n")
    code, out, _ = run("review", "import", str(bad), "--json")
    assert code == 2 and (out["file"], out["row"]) == (str(bad), 4)
    assert "row 4" in out["error"] and "'rust'" in out["error"]
    assert len(queued_files(steelqc_home)) == 3 and not reviewed_files(steelqc_home)

    missing = tmp_path / "missing.csv"
    missing.write_text("image,label,reviewer\nnot-queued.png,crack,ann\n")
    code, out, _ = run("review", "import", str(missing), "--json")
    assert code == 2 and out["row"] == 2 and "not in the review queue" in out["error"]

    good = tmp_path / "good.csv"
    good.write_text(f"image,label,reviewer\n{shas[0]},crack,ann\nimg1.png,dent,bob\nimg2.png,ok,ann\n")
    code, out, _ = run("review", "import", str(good), "--json")
    assert code == 0 and out["rows"] == 3 and (out["queued"], out["reviewed"]) == (0, 3)
    assert {p.parent.name for p in reviewed_files(steelqc_home)} == {"crack", "dent", "ok"}
    assert queued_files(steelqc_home) == []


def opened(pid: int, path: Path) -> bool:
    """Whether process ``pid`` has ``path`` open (Linux /proc)."""
    try:
        return any(os.readlink(fd) == str(path) for fd in Path(f"/proc/{pid}/fd").iterdir())
    except OSError:  # exited, or a descriptor closed while listing
        return False


@contextmanager
def queue_lock(path: Path) -> Iterator[None]:
    """Hold the review queue's lock file, as a labelling process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        yield


def test_concurrent_labellers_of_one_image(steelqc_home: Path) -> None:
    """Four `steelqc review label` processes on one image, released together: all of them wait on the queue's lock
    (the test holds it until each has opened it), then exactly one labels the image and the others find it gone."""
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs Linux /proc to see the processes waiting")
    shas = fill_queue(steelqc_home, 3)
    env = {**os.environ, "STEELQC_HOME": str(steelqc_home)}
    lock = steelqc_home / "review" / ".lock"
    votes = (("crack", "ann"), ("scratch", "bob"), ("crack", "cy"), ("dent", "dee"))
    with queue_lock(lock):
        procs = [
            subprocess.Popen(
                [*STEELQC, "review", "label", shas[1], label, "--reviewer", who, "--json"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            for label, who in votes
        ]
        deadline = time.monotonic() + 120
        while not all(opened(p.pid, lock) for p in procs):
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "a labeller did not start"
            time.sleep(0.05)
    results = [(p.wait(timeout=120), json.loads(p.communicate()[0])) for p in procs]

    assert sorted(code for code, _ in results) == [0, 2, 2, 2]  # one moved it, the others found it gone
    assert all("is not in the review queue" in out["error"] for code, out in results if code == 2)
    reviewed = reviewed_files(steelqc_home)
    queued = queued_files(steelqc_home)
    assert [p.stem for p in reviewed] == [shas[1]]  # exactly one copy
    assert sorted(p.stem for p in reviewed + queued) == sorted(shas)  # nothing lost, nothing twice
    assert not list((steelqc_home / "reviewed").rglob(".*"))  # no temporary file left
    winner = next(out for code, out in results if code == 0)["labelled"][0]
    record = json.loads((steelqc_home / "review" / "done" / f"{shas[1]}.json").read_text())
    assert reviewed[0].parent.name == winner["reviewed_as"] == record["reviewed_as"]
    assert len(record["labels"]) == 1  # no other label went anywhere


def test_a_reviewed_crack_the_model_missed_raises_the_alert(steelqc_home: Path, webhook, monkeypatch) -> None:
    url, received = webhook
    monkeypatch.setenv("STEELQC_ALERT_WEBHOOK_URL", url)
    [missed, fine] = fill_queue(steelqc_home, 2)  # queued with the guess "ok"

    code, out, _ = run("review", "label", fine[:8], "ok", "--json")
    assert code == 0 and "alerts" not in out and received == []  # the model was right

    code, out, _ = run("review", "label", missed[:8], "crack", "--json")
    assert code == 0, out
    [alert] = out["alerts"]
    assert alert["kind"] == "missed-critical" and alert["notified"] is True
    [posted] = received
    assert "crack" in posted["title"] and missed in posted["text"] and "predicted: ok" in posted["text"]
