"""The text a closed-loop run reads, as the network's tokens: the train and held-out token streams and the fixed
evaluation windows.

Our GPT reads the corpus through our byte-level BPE fitted on the corpus's training part (tokenizer and streams
cached under ``$SELFMODELS_CACHE/closed-loop-data``, :func:`load_data`); a pretrained subject reads the same corpus
through its own tokenizer (:func:`load_subject_data`, opened by :func:`selfmodels.subjects.registry.open_subject`).
Either way the last ``val_fraction`` of the token stream is held out; its first half is kept for the fresh observer
and the probes of the measurement battery, its second half gives the evaluation windows (consecutive, so their
text's UTF-8 length is the bytes the loss codes).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from selfmodels.configs import to_dict
from selfmodels.data.windows import consecutive_windows
from selfmodels.runtime import cache_dir
from selfmodels.stages import content_key
from selfmodels.subjects.base import Subject
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


def _loop_data(tokenizer, train: torch.Tensor, held_out: torch.Tensor, info: dict, seq_len: int,
               eval_windows: int) -> LoopData:
    half = held_out.numel() // 2
    x, y = consecutive_windows(held_out[half:], seq_len, eval_windows, what="evaluation (held-out)")
    n_bytes = len(tokenizer.decode(y.flatten().tolist()).encode("utf-8"))
    return LoopData(tokenizer, train, held_out, x, y, n_bytes, info)


def data_store(corpus: CorpusConfig):
    """Where our BPE and the corpus's token streams are kept for the closed-loop runs."""
    from selfmodels.subjects.text import DATA_FORMAT

    return cache_dir() / "closed-loop-data" / content_key({"corpus": to_dict(corpus), "format": DATA_FORMAT})


def load_data(corpus: CorpusConfig, seq_len: int, eval_windows: int, progress: bool = False) -> LoopData:
    """The corpus as our BPE's tokens, with ``eval_windows`` evaluation windows of ``seq_len`` tokens."""
    from selfmodels.subjects.text import prepare_text

    tokenizer, train, held_out, info = prepare_text(corpus, data_store(corpus), progress)
    return _loop_data(tokenizer, train, held_out, info, seq_len, eval_windows)


def load_subject_data(name: str, corpus: CorpusConfig, seq_len: int, eval_windows: int, device: torch.device,
                      progress: bool = False) -> tuple[Subject, LoopData]:
    """The pretrained subject ``name`` (a Hugging Face id or directory, or ``smollm2``), loaded in float32 on
    ``device`` to be fine-tuned, and the corpus as its own tokenizer's tokens, cut as :func:`load_data` cuts ours."""
    from selfmodels.subjects.registry import SubjectConfig, open_subject

    opened = open_subject(SubjectConfig(main=name, dtype="float32"), corpus, device, seed=0, progress=progress)
    return opened.subject, _loop_data(opened.tokenizer, opened.train, opened.val, opened.data, seq_len, eval_windows)
