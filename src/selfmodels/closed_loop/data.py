"""The text a closed-loop run reads: our byte-level BPE fitted on the corpus's training part, its token streams
(cached under ``$SELFMODELS_CACHE/closed-loop-data``) and the fixed held-out windows.

The held-out stream's (the last ``val_fraction`` of the tokens) first half is kept for the fresh observer and the
probes of the measurement battery (not built yet); its second half gives the evaluation windows (consecutive, so
their text's UTF-8 length is the bytes the loss codes).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from selfmodels.configs import to_dict
from selfmodels.data.windows import consecutive_windows
from selfmodels.runtime import cache_dir
from selfmodels.stages import content_key
from selfmodels.subjects.config import CorpusConfig


@dataclass
class LoopData:
    """``train`` and ``held_out`` token streams, the evaluation windows (N, T) and their text's bytes."""

    tokenizer: object
    train: torch.Tensor
    held_out: torch.Tensor
    eval_x: torch.Tensor
    eval_y: torch.Tensor
    eval_bytes: int
    info: dict


def load_data(corpus: CorpusConfig, seq_len: int, eval_windows: int, progress: bool = False) -> LoopData:
    """The corpus as our BPE's tokens, with ``eval_windows`` evaluation windows of ``seq_len`` tokens."""
    from selfmodels.subjects.text import DATA_FORMAT, prepare_text

    store = cache_dir() / "closed-loop-data" / content_key({"corpus": to_dict(corpus), "format": DATA_FORMAT})
    tokenizer, train, held_out, info = prepare_text(corpus, store, progress)
    half = held_out.numel() // 2
    x, y = consecutive_windows(held_out[half:], seq_len, eval_windows, what="evaluation (held-out)")
    n_bytes = len(tokenizer.decode(y.flatten().tolist()).encode("utf-8"))
    return LoopData(tokenizer, train, held_out, x, y, n_bytes, info)
