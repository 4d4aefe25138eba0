"""Minibatches for SGLD: a seeded order, replayed in a cycle, shared by all chains.

All chains see the same minibatch at the same step (they differ by their Langevin noise). That lets
the batched sampler feed one input batch to every chain, and makes the batched and sequential paths
consume identical data.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from selfmodels.errors import UserError, require


class BatchCycle:
    """An endless stream of batches (tuples of tensors, first dimension = examples).

    From tensors: epoch e uses the permutation ``randperm(n, generator)`` of a generator seeded with
    ``seed`` (or dataset order when ``shuffle`` is false), cut into consecutive batches of
    ``batch_size`` (the last one may be smaller, as with a ``DataLoader``). From a ``DataLoader``: its
    batches are read once and replayed in that order.
    """

    def __init__(self, tensors: Sequence[torch.Tensor] | None, batch_size: int, *, seed: int, shuffle: bool,
                 device: torch.device | str = "cpu", fixed_batches: list[tuple[torch.Tensor, ...]] | None = None):
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.device = torch.device(device)
        self.fixed = fixed_batches
        self.tensors = None if tensors is None else tuple(t.to(self.device) for t in tensors)

    @property
    def num_examples(self) -> int:
        if self.fixed is not None:
            return sum(int(b[0].shape[0]) for b in self.fixed)
        return int(self.tensors[0].shape[0])

    @property
    def batches_per_epoch(self) -> int:
        if self.fixed is not None:
            return len(self.fixed)
        return -(-self.num_examples // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        if self.fixed is not None:
            while True:
                yield from self.fixed
        n = self.num_examples
        generator = torch.Generator().manual_seed(self.seed)
        while True:
            order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
            order = order.to(self.device)
            for start in range(0, n, self.batch_size):
                idx = order[start:start + self.batch_size]
                yield tuple(t[idx] for t in self.tensors)


def as_batch_cycle(data: Dataset | DataLoader | Sequence[torch.Tensor], batch_size: int, *, seed: int,
                   shuffle: bool, device: torch.device | str = "cpu") -> BatchCycle:
    """Wrap a ``TensorDataset``, a tuple of tensors or a ``DataLoader`` as a :class:`BatchCycle`."""
    if isinstance(data, DataLoader):
        batches = [tuple(t.to(device) for t in (b if isinstance(b, (tuple, list)) else (b,))) for b in data]
        require(len(batches) > 0, "the LLC data loader is empty: give it at least one batch of (inputs, targets)")
        return BatchCycle(None, data.batch_size or int(batches[0][0].shape[0]), seed=seed, shuffle=False,
                          device=device, fixed_batches=batches)
    if isinstance(data, TensorDataset):
        tensors = data.tensors
    elif isinstance(data, (tuple, list)) and all(isinstance(t, torch.Tensor) for t in data):
        tensors = tuple(data)
    else:
        raise UserError(f"LLC data must be a TensorDataset, a tuple of tensors or a DataLoader, got {type(data).__name__}")
    require(len(tensors) >= 1, "LLC data has no tensors: give (inputs, targets)")
    n = int(tensors[0].shape[0]) if tensors[0].dim() > 0 else 0
    require(n > 0, "the LLC dataset is empty: give it at least one example")
    require(all(t.shape[0] == n for t in tensors), "LLC data tensors differ in their first (example) dimension")
    return BatchCycle(tensors, batch_size, seed=seed, shuffle=shuffle, device=device)
