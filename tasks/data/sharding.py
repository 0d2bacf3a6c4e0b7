"""Training samplers for data-parallel training: each of ``world_size`` processes draws its own shard of the
epoch's samples (README "Scaling").

* Class-balanced (``balanced_sampler``, the default recipe): every process draws the *same* seeded sequence of
  ``ceil(n / world_size) * world_size`` class-balanced samples (with replacement, as
  :func:`~steelqc.tasks.data.datasets.make_sampler` does for one process) and keeps every ``world_size``-th one
  from position ``rank``: the shards are disjoint positions of one draw, and together they are the draw one process
  would make of that length.
* Shuffled: :class:`torch.utils.data.DistributedSampler` (a permutation of the images, padded to a multiple of
  ``world_size`` by repeating its first images, then ``rank::world_size``).

Either way every process gets the same number of samples, hence the same number of batches: DDP needs every
process to take part in every gradient all-reduce. :class:`RecordingSampler` keeps the indices a process drew in
the current epoch (the record of which images each rank trained on).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler

from steelqc.tasks.data.datasets import inverse_frequency_weights


class BalancedShardSampler(Sampler[int]):
    """Rank ``rank``'s share of one class-balanced draw with replacement; reseed ``generator`` each epoch."""

    def __init__(self, labels: Sequence[int], num_classes: int, seed: int, rank: int, world_size: int):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must lie in [0, {world_size}), got {rank}")
        self.weights = inverse_frequency_weights(labels, num_classes)
        self.rank, self.world_size = int(rank), int(world_size)
        self.num_samples = math.ceil(len(labels) / self.world_size)
        self.generator = torch.Generator().manual_seed(int(seed))

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        total = self.num_samples * self.world_size
        draw = torch.multinomial(self.weights, total, replacement=True, generator=self.generator)
        return iter(draw[self.rank :: self.world_size].tolist())


class RecordingSampler(Sampler[int]):
    """Wraps a sampler and keeps the indices it yielded since the last :meth:`set_epoch` (``drawn``); other
    attributes (``generator``, ``set_epoch`` of the wrapped sampler) pass through."""

    def __init__(self, sampler: Sampler[int]):
        self.sampler = sampler
        self.drawn: list[int] = []

    def __len__(self) -> int:
        return len(self.sampler)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[int]:
        self.drawn = []
        for index in self.sampler:
            self.drawn.append(int(index))
            yield index

    def set_epoch(self, epoch: int) -> None:
        self.drawn = []
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __getattr__(self, name: str) -> Any:
        if name == "sampler":  # not yet set (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.sampler, name)


def shard_sampler(dataset: Dataset, balanced: bool, seed: int, rank: int, world_size: int) -> RecordingSampler:
    """The training sampler of process ``rank`` of ``world_size`` (see the module doc), recording what it draws."""
    if balanced:
        labels = getattr(dataset, "labels", None)
        if labels is None:
            raise ValueError("a balanced loader needs a dataset with a `labels` attribute")
        num_classes = getattr(getattr(dataset, "label_space", None), "num_classes", max(labels) + 1)
        return RecordingSampler(BalancedShardSampler(labels, num_classes, seed, rank, world_size))
    shuffled = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=int(seed))
    return RecordingSampler(shuffled)
