"""Map-style data loading shared by the tasks: deterministic per-epoch shuffling over ranks, resumable mid-epoch."""
from __future__ import annotations

import math
from typing import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class ResumableDistributedSampler(Sampler[int]):
    """A DistributedSampler whose order depends only on (seed, epoch) and that can skip the first batches.

    Every rank gets ``ceil(len / world)`` indices (the tail is padded with the head, as DistributedSampler does,
    unless ``drop_last``). ``skip_batches`` drops the first ``skip_batches * batch_size`` indices of this rank's share,
    which is how a resumed run continues where it stopped.
    """

    def __init__(self, dataset_len: int, rank: int = 0, world_size: int = 1, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False, batch_size: int = 1):
        if dataset_len <= 0:
            raise ValueError("ResumableDistributedSampler: the dataset is empty")
        self.n, self.rank, self.world = dataset_len, rank, world_size
        self.shuffle, self.seed, self.drop_last, self.batch_size = shuffle, seed, drop_last, batch_size
        self.epoch, self.skip = 0, 0
        if drop_last:
            self.per_rank = self.n // self.world
        else:
            self.per_rank = math.ceil(self.n / self.world)

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch, self.skip = epoch, skip_batches

    def indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        total = self.per_rank * self.world
        if total > len(order):
            order = (order * math.ceil(total / len(order)))[:total]
        order = order[:total]
        return order[self.rank:total:self.world]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices()[self.skip * self.batch_size:])

    def __len__(self) -> int:
        return max(0, self.per_rank - self.skip * self.batch_size)


def build_loader(dataset: Dataset, batch_size: int, *, train: bool, rank: int = 0, world_size: int = 1,
                 seed: int = 0, num_workers: int = 0, collate_fn: Callable | None = None,
                 shard_eval: bool = False, pin_memory: bool | None = None) -> DataLoader:
    """A DataLoader over a map-style dataset.

    Training: shuffled per epoch over ranks, ``drop_last`` batches, resumable (see the sampler).
    Evaluation: in order; every rank sees the whole set unless ``shard_eval``.
    Batches go to pinned memory when ``pin_memory`` (default: when CUDA is available), for asynchronous copies.
    """
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    if train or shard_eval:
        sampler = ResumableDistributedSampler(len(dataset), rank, world_size, shuffle=train, seed=seed,
                                              drop_last=False, batch_size=batch_size)
    else:
        sampler = None
    g = torch.Generator().manual_seed(seed + 7919 * rank)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False, num_workers=num_workers,
                      collate_fn=collate_fn, drop_last=train, pin_memory=pin_memory, generator=g,
                      persistent_workers=num_workers > 0 and not train)


def set_loader_epoch(loader: DataLoader, epoch: int, skip_batches: int = 0) -> None:
    """Prepare a loader from :func:`build_loader` for ``epoch``, skipping the batches a resumed run already saw."""
    sampler = loader.sampler
    if isinstance(sampler, ResumableDistributedSampler):
        sampler.set_epoch(epoch, skip_batches)
    elif skip_batches:
        raise ValueError("this loader cannot skip batches: build it with utils.data.build_loader")
    if loader.generator is not None and sampler is not None:
        # Worker seeds come from this generator: make them a function of (seed, rank, epoch) alone.
        loader.generator.manual_seed(sampler.seed * 31 + 7919 * sampler.rank + epoch * 1_000_033)
