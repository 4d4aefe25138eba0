"""Classification datasets for the self-modeling experiments: one registry, one loader.

``load_classification(task)`` returns train / validation / test tensors plus a record of where they
came from (``source``) and how the validation set was made (``split``). The validation set is a
stratified, seeded ``val_fraction`` of the training set; ``val_is_test=True`` instead reuses the test
set as the validation set, which is what the paper did (kept for exact replication).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import TensorDataset

from selfmodels.data import images, sentiment
from selfmodels.data.hub import HubUnavailable, check_source, load_hub_dataset, use_hub_first
from selfmodels.data.splits import Prepared, RawSplits, stratified_split
from selfmodels.errors import UserError, require


@dataclass
class ClassificationData:
    """Tensors for one task. Images: float32 (N, C, H, W) normalised to [-1, 1]; text: int64 (N, L)
    word ids, 0 = padding, 1 = unknown. Labels: int64 (N,)."""

    task: str
    source: str
    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    num_classes: int
    input_shape: tuple[int, ...]
    vocab_size: int | None
    split: dict
    vocab: list[str] | None = None  # text only: the word of each id (id 0 "<pad>", id 1 "<unk>")

    def describe(self) -> dict:
        """What a run records in ``config.json`` and shows in its report: task, source, split, shapes."""
        return {"task": self.task, "source": self.source, "split": self.split, "num_classes": self.num_classes,
                "input_shape": list(self.input_shape), "vocab_size": self.vocab_size}


@dataclass(frozen=True)
class TaskSpec:
    """Everything that differs between tasks. ``load_hub(hub)`` loads the task through the hub door
    ``hub`` (called like :func:`~selfmodels.data.hub.load_hub_dataset`). ``prepare`` sees the training
    part first, so anything fitted to data (a vocabulary) is fitted on the training part only."""

    name: str
    num_classes: int
    hub_repo: str
    load_hub: Callable[[Callable[..., Any]], RawSplits]
    load_offline: Callable[[], RawSplits]
    prepare: Callable[[RawSplits, object, object, object], Prepared]  # (raw, train_x, val_x, test_x)


def _prepare_images(raw: RawSplits, train, val, test) -> Prepared:
    return Prepared(images.normalise(train), images.normalise(val), images.normalise(test))


def _no_offline_cifar() -> RawSplits:
    raise UserError(
        "cifar10 needs internet: no package ships CIFAR-10, so it is loaded from the Hugging Face hub "
        "(uoft-cs/cifar10). Connect, unset HF_HUB_OFFLINE and use --source hub or auto; "
        "for an offline run pick mnist, fashion-mnist or imdb"
    )


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("mnist", 10, "ylecun/mnist", lambda hub: images.load_hub_images("ylecun/mnist", "image", hub=hub),
                 images.load_mnist_offline, _prepare_images),
        TaskSpec("fashion-mnist", 10, "zalando-datasets/fashion_mnist",
                 lambda hub: images.load_hub_images("zalando-datasets/fashion_mnist", "image", hub=hub),
                 images.load_fashion_mnist_offline, _prepare_images),
        TaskSpec("cifar10", 10, "uoft-cs/cifar10", lambda hub: images.load_hub_images("uoft-cs/cifar10", "img", hub=hub),
                 _no_offline_cifar, _prepare_images),
        TaskSpec("imdb", 2, "stanfordnlp/imdb", lambda hub: sentiment.load_imdb_hub(hub=hub), sentiment.load_rotten_tomatoes,
                 sentiment.prepare_text),
    )
}


def task_names() -> list[str]:
    """The known task names, in registry order."""
    return list(TASKS)


def get_task(task: str) -> TaskSpec:
    """The registry entry for ``task``; an unknown name is a :class:`UserError` listing the known ones."""
    if task not in TASKS:
        raise UserError(f"unknown task {task!r}: choose one of {', '.join(TASKS)}")
    return TASKS[task]


def load_raw(spec: TaskSpec, source: str, *, hub: Callable[..., Any] = load_hub_dataset) -> RawSplits:
    """Load a task's raw train/test parts from the hub or its offline default, as ``source`` says.

    ``auto`` tries the hub unless HF_HUB_OFFLINE is set, and falls back to the offline default when the
    hub cannot be reached; the fallback and its reason are recorded in the returned ``source``. ``hub``
    is the door to the hub (:func:`~selfmodels.data.hub.load_hub_dataset` unless given).
    """
    check_source(source)
    if not use_hub_first(source):
        return spec.load_offline()
    try:
        return spec.load_hub(hub)
    except HubUnavailable as exc:
        if source == "hub":
            raise
        raw = spec.load_offline()
        raw.source += f" (hub unavailable: {str(exc).split(':')[0]})"
        return raw


def load_classification(task: str, *, source: str = "auto", val_fraction: float = 0.1,
                        val_is_test: bool = False, seed: int = 0,
                        hub: Callable[..., Any] = load_hub_dataset) -> ClassificationData:
    """Load ``task`` and make its train / val / test tensors.

    - ``source``: ``auto`` (hub when reachable, else offline), ``hub`` or ``offline``.
    - ``val_fraction``: the stratified share of the training set held out as validation (seeded by
      ``seed``); ignored when ``val_is_test`` is set, in which case val *is* the test set (the paper).
    - ``hub``: the door to the hub, called as ``hub(repo)`` for the task's dataset splits;
      :func:`~selfmodels.data.hub.load_hub_dataset` unless given (e.g. an in-memory ``DatasetDict``
      stand-in, or one that raises :class:`~selfmodels.data.hub.HubUnavailable`).

    Each part keeps its source's order, unshuffled: the offline MNIST subset is sorted by label, so the first
    512 training images are all 0s and 1s. The training loops and the LLC draw batches through seeded
    permutations; take a random subset (``torch.randperm``) before looking at a prefix.
    """
    spec = get_task(task)
    check_source(source)
    if not val_is_test:
        require(0.0 < val_fraction < 1.0, f"val_fraction must be strictly between 0 and 1, got {val_fraction}")
    raw = load_raw(spec, source, hub=hub)

    if val_is_test:
        train_x, train_y = raw.train_x, np.asarray(raw.train_y)
        val_x, val_y = raw.test_x, np.asarray(raw.test_y)
    else:
        keep, held = stratified_split(raw.train_y, val_fraction, seed)
        train_x, train_y = raw.train_x[keep], np.asarray(raw.train_y)[keep]
        val_x, val_y = raw.train_x[held], np.asarray(raw.train_y)[held]
    prepared = spec.prepare(raw, train_x, val_x, raw.test_x)

    def labels(y) -> torch.Tensor:
        return torch.as_tensor(np.asarray(y, dtype=np.int64))  # (N,)

    train = TensorDataset(prepared.train, labels(train_y))
    test = TensorDataset(prepared.test, labels(raw.test_y))
    # With val_is_test the validation set is the test set itself: one object (no second copy in memory,
    # and a training loop can see that evaluating it once serves both).
    val = test if val_is_test else TensorDataset(prepared.val, labels(val_y))
    split = {
        "val_is_test": val_is_test,
        "val_fraction": None if val_is_test else val_fraction,
        "val_from": "the test set (as the paper)" if val_is_test
        else f"stratified {val_fraction:g} of the training set (seed {seed})",
        "test_from": raw.test_from,
        "seed": seed,
        "sizes": {"train": len(train), "val": len(val), "test": len(test)},
        **raw.extra,
    }
    return ClassificationData(
        task=task, source=raw.source, train=train, val=val, test=test, num_classes=spec.num_classes,
        input_shape=tuple(prepared.train.shape[1:]),
        vocab_size=None if prepared.vocab is None else len(prepared.vocab),
        split=split, vocab=prepared.vocab,
    )
