"""Fixtures for the self-modeling tests: a tiny synthetic classification dataset shaped like MNIST's loader output."""

import pytest
import torch
from torch.utils.data import TensorDataset

# The real container, not a test-local class: worker processes unpickle it, and a class defined in a
# conftest cannot be found by name there when several conftest modules are loaded.
from selfmodels.data.classification import ClassificationData as TinyData


def make_tiny_data(n_train: int = 96, classes: int = 3, shape=(1, 4, 4), seed: int = 0) -> TinyData:
    """Linearly separable-ish blobs: class k has mean +1 on pixel k."""
    g = torch.Generator().manual_seed(seed)

    def part(n):
        y = torch.arange(n) % classes
        x = 0.5 * torch.randn(n, *shape, generator=g)
        x.view(n, -1)[torch.arange(n), y] += 1.0
        return TensorDataset(x, y)

    return TinyData("mnist", "synthetic test data", part(n_train), part(24), part(24), classes, tuple(shape), None,
                    {"sizes": {"train": n_train, "val": 24, "test": 24}})


@pytest.fixture
def tiny_data() -> TinyData:
    return make_tiny_data()
