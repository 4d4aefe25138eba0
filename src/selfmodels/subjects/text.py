"""Our byte-level BPE and the train / validation token streams of a corpus, kept under the key of their settings.

Our GPT (the forward pipeline's, the self-modeling LMs', the closed loop's) reads a corpus through a BPE fitted on
the corpus's training part; both the tokenizer and the token stream are kept in :func:`text_store` (under
:func:`selfmodels.runtime.cache_dir`), keyed by everything that determines them (:func:`data_key`), so a second
run with the same settings reuses them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from selfmodels.artifacts import atomic_path, read_json, sha256_file, write_json
from selfmodels.errors import require
from selfmodels.runtime import cache_dir
from selfmodels.stages import content_key
from selfmodels.subjects.config import CorpusConfig  # defined there, torch-free

DATA_FORMAT = 3  # 2: our BPE is fitted on the training part only; 3: no chunk cut after a run of whitespace


def data_key(corpus: CorpusConfig) -> dict:
    """Everything that determines our BPE and the token streams of ``corpus``."""
    # DATA_FORMAT is part of the key: a change in how the tokenizer is fitted must not reuse old streams.
    return {"corpus": corpus.corpus, "max_chars": corpus.max_chars, "vocab_size": corpus.vocab_size,
            "val_fraction": corpus.val_fraction, "format": DATA_FORMAT}


def text_store(corpus: CorpusConfig) -> Path:
    """Where our BPE and the corpus's token streams are kept (:func:`prepare_text`), keyed by what determines them."""
    return cache_dir() / "forward-data" / content_key(data_key(corpus))


def prepare_text(corpus_cfg: CorpusConfig, store: Path, progress: bool = True) -> tuple[object, torch.Tensor, torch.Tensor, dict]:
    """Our BPE and the (train, val) token streams of the corpus; kept under ``store`` (``tokenizer.json``,
    ``tokens.npy``, ``data.json``) and reused when present. The BPE is fitted on the training part only."""
    from selfmodels.data.bpe import encode_corpus, load_tokenizer, save_tokenizer, split_stream, train_bpe
    from selfmodels.data.corpora import load_corpus

    store = Path(store)
    tok_path, ids_path, info_path = store / "tokenizer.json", store / "tokens.npy", store / "data.json"
    if tok_path.is_file() and ids_path.is_file() and info_path.is_file():
        tokenizer = load_tokenizer(tok_path)
        tokens = torch.from_numpy(np.load(ids_path).astype(np.int64))
        info = read_json(info_path)
    else:
        corpus = load_corpus(corpus_cfg.corpus, max_chars=corpus_cfg.max_chars)
        # Fit the BPE on the text before the validation cut, so held-out text plays no part in it
        # (the token stream is split by position, so its last part comes from the text's last part).
        train_chars = int(len(corpus.text) * (1 - corpus_cfg.val_fraction))
        tokenizer = train_bpe(corpus.text[:train_chars], corpus_cfg.vocab_size)
        save_tokenizer(tokenizer, tok_path)
        tokens = encode_corpus(tokenizer, corpus, progress=progress)
        require(tokens.numel() > 0, f"corpus {corpus_cfg.corpus!r} gave no tokens: give a corpus with some text")
        with atomic_path(ids_path) as tmp:
            with open(tmp, "wb") as handle:
                np.save(handle, tokens.numpy().astype(np.int32))
        info = {"corpus": corpus.name, "source": corpus.source, "chars": len(corpus.text), "tokens": int(tokens.numel()),
                "tokenizer": "bpe:" + sha256_file(tok_path)}
        write_json(info_path, info)
    train, val = split_stream(tokens, corpus_cfg.val_fraction)
    return tokenizer, train, val, info
