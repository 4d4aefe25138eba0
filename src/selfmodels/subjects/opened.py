"""What opening a subject gives: the subject, its tokenizer and the token streams it reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from selfmodels.subjects.base import Subject


@dataclass
class OpenedSubject:
    """A subject ready to observe, with its tokens. ``files``: artifacts worth copying into a run directory."""

    subject: Subject
    tokenizer: object
    train: torch.Tensor  # (N_train,) token ids
    val: torch.Tensor  # (N_val,)
    data: dict  # corpus, source, chars, tokens, tokenizer id
    training: dict | None  # our GPT's training record (None for a pretrained subject)
    files: dict[str, Path] = field(default_factory=dict)
    bos_id: int | None = None

    def token_strings(self) -> list[str]:
        """The decoded text of every id the subject embeds."""
        return [self.tokenizer.decode([i]) for i in range(self.subject.vocab_size)]
