"""Data-parallel pieces that need no process group: the shard samplers, the backend choice, the torchrun command,
the process count in the training settings."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from steelqc.tasks.config import Settings
from steelqc.tasks.data.datasets import make_sampler, set_loader_epoch
from steelqc.tasks.data.sharding import BalancedShardSampler, RecordingSampler, shard_sampler
from steelqc.tasks.model.distributed import shown_command, torchrun_command
from steelqc.tasks.model.parallel import choose_backend
from steelqc.tasks.model.train import ResumeError, TrainConfig, _check_resume, resolve_config, train_model
from tests.helpers import LABELS, cfg

LABELS_11 = [0, 0, 0, 0, 0, 0, 1, 1, 2, 2, 2]  # imbalanced, odd length


class Labelled(Dataset):
    def __init__(self, labels: list[int]):
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> int:
        return index


def test_balanced_shards_are_the_two_halves_of_one_draw() -> None:
    ranks = [BalancedShardSampler(LABELS_11, 3, seed=5, rank=r, world_size=2) for r in range(2)]
    whole = BalancedShardSampler(LABELS_11, 3, seed=5, rank=0, world_size=1)
    whole.num_samples = 12  # one process drawing what the two draw together
    draw, shards = list(whole), [list(s) for s in ranks]
    assert [len(s) for s in shards] == [6, 6] == [len(s) for s in ranks]  # same batches on every rank
    assert shards[0] == draw[0::2] and shards[1] == draw[1::2]
    assert shards[0] != shards[1]


def test_one_balanced_shard_draws_what_the_single_process_sampler_draws() -> None:
    single = make_sampler(LABELS_11, 3, seed=9)
    assert list(BalancedShardSampler(LABELS_11, 3, seed=9, rank=0, world_size=1)) == list(single)


def test_balanced_shards_balance_the_classes() -> None:
    labels = [0] * 90 + [1] * 10
    shard = BalancedShardSampler(labels, 2, seed=1, rank=1, world_size=2)
    shard.num_samples = 2000
    drawn = torch.tensor([labels[i] for i in shard])
    assert 0.4 < drawn.float().mean().item() < 0.6  # class 1 is 10 % of the data, about half of the draw


def test_shuffled_shards_are_disjoint_and_cover_the_data_each_epoch() -> None:
    data = Labelled([0, 1] * 6)
    samplers = [shard_sampler(data, balanced=False, seed=3, rank=r, world_size=2) for r in range(2)]
    seen = []
    for epoch in range(2):
        for sampler in samplers:
            sampler.set_epoch(epoch)
        shards = [list(s) for s in samplers]
        assert set(shards[0]).isdisjoint(shards[1]) and sorted(shards[0] + shards[1]) == list(range(12))
        seen.append(shards)
    assert seen[0] != seen[1]  # set_epoch reshuffles


def test_the_recording_sampler_keeps_what_a_loader_drew_and_reseeds_through_the_loader() -> None:
    data = Labelled(LABELS_11)
    sampler = shard_sampler(data, balanced=True, seed=4, rank=1, world_size=2)
    loader = DataLoader(data, batch_size=4, sampler=sampler)
    epochs = []
    for epoch in (0, 1, 0):
        set_loader_epoch(loader, seed=4, epoch=epoch, rank=1)
        batches = [b.tolist() for b in loader]
        assert [i for batch in batches for i in batch] == sampler.drawn and len(sampler.drawn) == 6
        epochs.append(list(sampler.drawn))
    assert epochs[0] == epochs[2] != epochs[1]  # the epoch's draw is a function of (seed, epoch)
    assert isinstance(sampler, RecordingSampler) and sampler.generator is sampler.sampler.generator


def test_backend_follows_the_device() -> None:
    assert choose_backend("auto", "cpu") == "gloo"
    assert choose_backend("auto", "cuda:1") == "nccl"
    assert choose_backend("gloo", "cuda:0") == "gloo"
    with pytest.raises(ValueError, match="nccl needs CUDA"):
        choose_backend("nccl", "cpu")
    with pytest.raises(ValueError, match="ddp_backend"):
        choose_backend("mpi", "cpu")


def test_the_parent_runs_torchrun_with_nproc_per_node(tmp_path: Path) -> None:
    command = torchrun_command(2, tmp_path / "job.json", tmp_path / "logs")
    assert command[:3] == [sys.executable, "-m", "torch.distributed.run"]
    shown = shown_command(command)
    assert shown.startswith("torchrun --standalone --nproc_per_node 2 ")
    assert shown.endswith(f"-m steelqc.tasks.model.distributed --job {tmp_path / 'job.json'}")


def test_processes_setting_reaches_the_config_and_the_fingerprint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEELQC_TRAIN__PROCESSES", "2")
    two = resolve_config(Settings(), {}, "tiny", (256, 1600))
    one = resolve_config(Settings(train={"processes": 1}), {}, "tiny", (256, 1600))
    assert (two.processes, one.processes) == (2, 1)
    assert "processes" in two.fingerprint_dict() and "processes" not in one.fingerprint_dict()
    assert two.fingerprint() != one.fingerprint()
    monkeypatch.setenv("STEELQC_TRAIN__PROCESSES", "0")
    with pytest.raises(ValueError, match="processes"):
        Settings()


def test_distillation_and_a_changed_process_count_are_refused() -> None:
    with pytest.raises(ValueError, match="distillation runs in one process"):
        cfg(processes=2, distill_from="models:/teacher/1")
    saved = {"cfg": cfg(processes=1).to_dict(), "label_space": LABELS.to_dict(), "data_digest": "d"}
    saved["fingerprint"] = cfg(processes=1).fingerprint()
    with pytest.raises(ResumeError, match="processes: checkpoint 1, now 2"):
        _check_resume(saved, cfg(processes=2), LABELS, "d")
    _check_resume(saved, cfg(processes=1), LABELS, "d")


def test_train_model_refuses_processes_without_a_process_group(tmp_path: Path) -> None:
    frame = {"path": ["a.png"], "label": [0]}
    with pytest.raises(ValueError, match="launches torchrun"):
        train_model(pd.DataFrame(frame), pd.DataFrame(frame), LABELS, cfg(processes=2), tmp_path)
    assert TrainConfig.from_dict(cfg(processes=2).to_dict()).processes == 2
