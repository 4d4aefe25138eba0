"""The settings of the models we build (no torch here: ``--help`` and config files read them without it)."""

from __future__ import annotations

from dataclasses import dataclass

from selfmodels.configs import option
from selfmodels.errors import require


@dataclass
class GPTConfig:
    """Shape of the main GPT (the paper's toy: 4 layers x 4 heads x 256, context 128)."""

    vocab_size: int = option(4096, "vocabulary size (set from the tokenizer)")
    block_size: int = option(128, "context length in tokens")
    n_layer: int = option(4, "transformer blocks")
    n_head: int = option(4, "attention heads per block")
    d_model: int = option(256, "residual stream width")

    def validate(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "d_model"):
            require(getattr(self, name) >= 1, f"GPT {name} must be at least 1, got {getattr(self, name)}")
        require(self.d_model % self.n_head == 0, f"GPT d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")
