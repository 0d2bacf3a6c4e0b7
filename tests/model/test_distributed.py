"""Data-parallel training in real ``torchrun`` processes (2 CPU processes, gloo) on the tiny blob task: what the
ranks trained on, exact resume with two processes, and a failing rank named in the error."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from steelqc.tasks.model.distributed import DistributedTrainingError, launch, run_workers
from tests.helpers import LABELS, cfg

pytestmark = pytest.mark.slow  # each launch starts two Python processes (~5 s on 2 cores)

SETTINGS = dict(
    processes=2, epochs=2, scheduler="none", max_train_batches=3, balanced_sampler=False, cache_images=False
)  # no image cache: the module fixture runs before the per-test STEELQC_HOME exists


def without_timing(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k not in ("seconds", "images_per_second")} for h in history]


def rank_records(out: Path) -> dict[int, list[dict]]:
    return {
        r: [json.loads(line) for line in (out / "ddp" / f"rank-{r}.jsonl").read_text().splitlines()] for r in (0, 1)
    }


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory: pytest.TempPathFactory):
    """Two epochs in two processes, uninterrupted."""
    train_df, val_df = data
    out = tmp_path_factory.mktemp("ddp-straight")
    epochs: list[int] = []
    result = launch(train_df, val_df, LABELS, cfg(**SETTINGS), out, on_epoch=lambda e, m: epochs.append(e))
    return out, result, epochs


def test_two_gloo_processes_train_disjoint_shards(straight, data) -> None:
    out, result, epochs = straight
    assert epochs == [1, 2]  # rank 0's epochs reached the parent as they finished
    records = rank_records(out)
    assert {r["pid"] for r in records[0]} != {r["pid"] for r in records[1]}  # two processes
    for rank, lines in records.items():
        assert [(r["rank"], r["world_size"], r["backend"], r["epoch"]) for r in lines] == [
            (rank, 2, "gloo", 1),
            (rank, 2, "gloo", 2),
        ]
        assert all(r["images"] == len(r["indices"]) == 36 for r in lines)  # 3 batches of 12 each
    for epoch in (0, 1):
        a, b = records[0][epoch]["indices"], records[1][epoch]["indices"]
        assert set(a).isdisjoint(b) and len(set(a) | set(b)) == 72  # together: every training image once
    assert result.distributed["world_size"] == 2 and result.distributed["backend"] == "gloo"
    assert [r["images"] for r in result.distributed["ranks"]] == [72, 72]
    assert result.distributed["command"].startswith("torchrun --standalone --nproc_per_node 2 ")
    assert [h["epoch"] for h in result.history] == [1, 2] and result.best_checkpoint.is_file()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.pt", "last.pt"]


def test_resume_with_two_processes_continues_like_the_uninterrupted_run(straight, data, tmp_path: Path) -> None:
    train_df, val_df = data
    first = launch(train_df, val_df, LABELS, cfg(**{**SETTINGS, "epochs": 1}), tmp_path)
    epochs: list[int] = []
    resumed = launch(
        train_df, val_df, LABELS, cfg(**SETTINGS), tmp_path, on_epoch=lambda e, m: epochs.append(e), resume=True
    )
    assert first.epochs_run == 1 and resumed.resumed_from_epoch == 1 and epochs == [2]
    uninterrupted = straight[1]
    assert without_timing(resumed.history) == without_timing(uninterrupted.history)
    a = torch.load(uninterrupted.last_checkpoint, weights_only=True)["model_state"]
    b = torch.load(resumed.last_checkpoint, weights_only=True)["model_state"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [len(lines) for lines in rank_records(tmp_path).values()] == [2, 2]  # both launches' epochs recorded


def test_a_failing_rank_is_named_with_the_end_of_its_stderr(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(
        "import os, sys, torch.distributed as dist\n"
        "dist.init_process_group('gloo')\n"
        "if dist.get_rank() == 1:\n"
        "    print('the disk of rank one is full', file=sys.stderr)\n"
        "    sys.exit(3)\n"
        "dist.barrier()\n"
    )
    folder = tmp_path / "ddp"
    folder.mkdir()
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "--log-dir", str(folder / "logs"), "--redirects", "3", "--tee", "3", str(script),
    ]  # fmt: skip
    with pytest.raises(DistributedTrainingError) as failed:
        run_workers(command, folder, 2)
    message = str(failed.value)
    assert "rank 1 of 2 failed (exit code 3)" in message
    assert "the disk of rank one is full" in message
