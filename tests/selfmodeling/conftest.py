"""Fixtures for the self-modeling tests: a tiny synthetic classification dataset shaped like MNIST's loader
output, and a snapshot of the files under a directory (to show that a finished run was not trained again)."""

import hashlib
from pathlib import Path

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


def _file_states(root: Path, skip: tuple[str, ...] = ()) -> dict[str, tuple[int, int, str]]:
    """Every file under ``root`` (names in ``skip`` left out) -> (inode, mtime in ns, SHA-1 of its bytes).

    Any write changes it: our atomic writes rename a new file into place (a new inode), an append changes
    the bytes and the time. Training a run even once rewrites its ``metrics.jsonl`` and weights."""
    return {str(p.relative_to(root)): (p.stat().st_ino, p.stat().st_mtime_ns, hashlib.sha1(p.read_bytes()).hexdigest())
            for p in sorted(Path(root).rglob("*")) if p.is_file() and p.name not in skip}


@pytest.fixture
def file_states():
    """``file_states(root, skip=())``: a snapshot of the files under ``root``; equal snapshots = nothing written."""
    return _file_states


def make_tiny_text_data(n_train: int = 64, vocab: int = 30, length: int = 10, seed: int = 0) -> TinyData:
    """Word ids shaped like the sentiment loader's output (task imdb): 2 classes, ids 0 = padding, 1 = unknown;
    class k draws most of its 3-9 words from its own half of the vocabulary, the rest are padding."""
    g = torch.Generator().manual_seed(seed)
    half = (vocab - 2) // 2

    def part(n):
        y = torch.arange(n) % 2
        own = 2 + y[:, None] * half + torch.randint(0, half, (n, length), generator=g)  # (n, L)
        other = torch.randint(2, vocab, (n, length), generator=g)
        ids = torch.where(torch.rand(n, length, generator=g) < 0.8, own, other)
        words = torch.randint(3, length, (n, 1), generator=g)
        ids[torch.arange(length)[None, :] >= words] = 0
        return TensorDataset(ids, y)

    split = {"val_is_test": True, "val_from": "the test set (as the paper)", "test_from": "generated", "sizes":
             {"train": n_train, "val": 16, "test": 16}, "text": {"max_len": length, "min_count": 1, "max_vocab": vocab,
                                                                "vocab_from": "train part only"}}
    test = part(16)
    return TinyData("imdb", "synthetic test text", part(n_train), test, test, 2, (length,), vocab, split,
                    ["<pad>", "<unk>"] + [f"w{i}" for i in range(2, vocab)])


@pytest.fixture
def tiny_text() -> TinyData:
    return make_tiny_text_data()
