"""Training samplers: a seeded, resumable shuffle (:class:`SeededRandomSampler`) and batches of about one length
(:class:`LengthGroupedSampler`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Sampler


class SeededRandomSampler(Sampler[int]):
    """A fresh permutation every epoch, seeded by ``seed + epoch``.

    Lightning calls ``set_epoch`` at each epoch start (as for ``DistributedSampler``), so the order of an
    epoch does not depend on how much randomness earlier epochs used: a run resumed from a checkpoint
    sees the same batches as an uninterrupted one.
    """

    def __init__(self, num_samples: int, seed: int):
        self.num_samples, self.seed, self.epoch = num_samples, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.num_samples, generator=generator).tolist())


class LengthGroupedSampler(SeededRandomSampler):
    """A seeded permutation every epoch in which each batch holds examples of about the same length, so dynamic
    padding pads little (Hugging Face Trainer's ``group_by_length``): the permutation is cut into groups of 50
    batches, each group sorted by length and cut into batches, and the full batches shuffled (the one short
    batch stays last, so the DataLoader's batches are these batches). Resumable as :class:`SeededRandomSampler`.

    Args:
        lengths: (N,) tokens of each example.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, group_batches: int = 50):
        super().__init__(len(lengths), seed)
        self.lengths, self.batch_size, self.group = torch.as_tensor(lengths), batch_size, batch_size * group_batches

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.num_samples, generator=generator)
        grouped = [g[torch.argsort(self.lengths[g], descending=True, stable=True)] for g in order.split(self.group)]
        batches = list(torch.cat(grouped).split(self.batch_size))
        short = [batches.pop()] if len(batches[-1]) < self.batch_size else []
        shuffled = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
        return iter(torch.cat(shuffled + short).tolist())
