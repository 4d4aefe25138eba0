"""Tokenizers for the LM corpora: our own byte-level BPE, or a pretrained one by name.

The BPE is GPT-2 style: text is split into pre-tokens by the GPT-2 regex over UTF-8 bytes mapped to
printable characters (``ByteLevel``), so every string encodes without an unknown token and
``decode(encode(text)) == text``. Merges are learned with the ``tokenizers`` BPE trainer; the vocabulary
is the 256 bytes, the special token ``<|endoftext|>`` (id 0), and ``vocab_size - 257`` merges.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm.auto import tqdm

from selfmodels.artifacts import write_text
from selfmodels.data.hub import hub_offline
from selfmodels.errors import UserError, require

SPECIAL_TOKENS = ["<|endoftext|>"]
MIN_VOCAB = 256 + len(SPECIAL_TOKENS)
CHUNK_CHARS = 1_000  # encode_batch gets many short pieces: measured fastest here (1M chars in ~0.4 s)
BATCH_CHUNKS = 256  # pieces per encode_batch call (one progress-bar step)


def chunk_text(text: str, chunk_chars: int) -> list[str]:
    r"""Cut ``text`` into pieces of about ``chunk_chars`` whose concatenation is ``text``.

    Cuts are made only just before a non-space character that follows a single newline, itself after a
    non-space character (``"x\nY"`` is cut as ``"x\n" | "Y"``). The GPT-2-style pre-tokenizer (ours, and that
    of SmolLM2, GPT-2 and Llama-3 style byte-level BPEs) never joins a newline to the letter after it, and a
    one-character whitespace run is whole on both sides of such a cut, so encoding the chunks one by one
    gives exactly the tokens of encoding the whole text. (After a longer run such as ``"\n\n"`` a cut would
    change them: whole, the run splits as ``"\n" + "\n"`` because of the regex's ``\s+(?!\S)``; cut, it is
    one pre-token.) A text with no such point for ``4 * chunk_chars`` characters is left uncut there.
    """
    def safe(i: int) -> bool:
        return 2 <= i < len(text) and text[i - 1] == "\n" and not text[i].isspace() and not text[i - 2].isspace()

    chunks, start = [], 0
    while len(text) - start > chunk_chars:
        cut, limit = start + chunk_chars, min(start + 4 * chunk_chars, len(text))
        while cut < limit and not safe(cut):
            cut += 1
        if cut >= limit:  # no safe point nearby: keep going to the next one, however far
            cut = next((i + 1 for i in _newlines(text, limit) if safe(i + 1)), None)
            if cut is None:
                break
        chunks.append(text[start:cut])
        start = cut
    chunks.append(text[start:])
    return chunks


def _newlines(text: str, start: int):
    """Positions of the newlines in ``text`` from ``start`` on."""
    i = text.find("\n", start)
    while i != -1:
        yield i
        i = text.find("\n", i + 1)


def train_bpe(text: str, vocab_size: int = 4096, *, min_frequency: int = 2) -> Tokenizer:
    """Train a byte-level BPE with ``vocab_size`` ids on ``text`` (deterministic for a given text).

    ``min_frequency``: a pair must occur this often to be merged, so a small text may give fewer ids.
    """
    require(vocab_size >= MIN_VOCAB, f"vocab_size must be at least {MIN_VOCAB} (256 bytes + special tokens), got {vocab_size}")
    require(text.strip() != "", "cannot train a tokenizer on empty text")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tokenizer.train_from_iterator(chunk_text(text, CHUNK_CHARS), trainer=trainer)
    return tokenizer


def save_tokenizer(tokenizer: Tokenizer, path: str | Path) -> None:
    """Write the tokenizer as JSON (``tokenizers`` format), atomically."""
    write_text(path, tokenizer.to_str(pretty=False))


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Read a tokenizer saved by :func:`save_tokenizer`; missing or corrupt -> :class:`UserError`."""
    path = Path(path)
    require(path.is_file(), f"tokenizer file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
        json.loads(text)  # a clearer error than the Rust parser's for truncated files
        return Tokenizer.from_str(text)
    except Exception as exc:  # noqa: BLE001 - json and the Rust parser raise different types
        raise UserError(f"tokenizer file {path} is corrupt ({type(exc).__name__}: {exc}): delete it and train it again") from None


def pretrained_tokenizer(name: str, **kwargs):
    """``transformers.AutoTokenizer.from_pretrained(name)``: a hub name (needs internet or the local hub
    cache) or a local directory; extra keyword arguments (e.g. ``gguf_file``) are passed on."""
    from transformers import AutoTokenizer  # slow import, only needed here

    try:
        return AutoTokenizer.from_pretrained(name, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the download boundary: network, missing repo, bad files
        hint = ("HF_HUB_OFFLINE is set and it is not in the local cache: go online or give a local directory"
                if hub_offline() else "check the name, or give a local directory holding tokenizer files")
        raise UserError(f"could not load tokenizer {name!r} ({type(exc).__name__}: {exc}): {hint}") from None


def _encode_chunks(tokenizer, chunks: list[str]) -> list[list[int]]:
    if isinstance(tokenizer, Tokenizer):
        encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)  # _fast skips offsets (tokenizers >= 0.21)
        return [enc.ids for enc in encode(chunks, add_special_tokens=False)]
    return tokenizer(chunks, add_special_tokens=False)["input_ids"]  # a transformers tokenizer


def encode_corpus(tokenizer, corpus, *, progress: bool = True, chunk_chars: int = CHUNK_CHARS) -> torch.Tensor:
    """The whole corpus as one 1-D int64 token stream (``corpus`` is a ``Corpus`` or a string).

    The text is encoded in chunks of about ``chunk_chars`` characters (see :func:`chunk_text`) with
    ``encode_batch``; for our byte-level BPE the result equals encoding the text in one piece. No
    special tokens are added.
    """
    text = corpus if isinstance(corpus, str) else corpus.text
    require(text != "", "cannot encode an empty corpus")
    chunks = chunk_text(text, chunk_chars)
    ids: list[np.ndarray] = []
    for i in tqdm(range(0, len(chunks), BATCH_CHUNKS), desc="encode", unit="batch",
                  disable=not progress or len(chunks) <= BATCH_CHUNKS):
        ids.extend(np.asarray(seq, dtype=np.int64) for seq in _encode_chunks(tokenizer, chunks[i : i + BATCH_CHUNKS]))
    return torch.from_numpy(np.concatenate(ids))  # (T,)


def split_stream(tokens: torch.Tensor, val_fraction: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a token stream by position: the first ``1 - val_fraction`` for training, the rest for
    validation (``n_val = round(val_fraction * T)``; both parts non-empty)."""
    require(tokens.dim() == 1, f"split_stream wants a 1-D token stream, got shape {tuple(tokens.shape)}")
    require(0.0 < val_fraction < 1.0, f"val_fraction must be strictly between 0 and 1, got {val_fraction}")
    n_val = int(round(val_fraction * len(tokens)))
    require(0 < n_val < len(tokens), f"cannot hold out {val_fraction:g} of {len(tokens)} tokens: one part would be empty")
    return tokens[: len(tokens) - n_val], tokens[len(tokens) - n_val :]
