"""The settings of a subject and of our GPT's training (no torch here: ``--help`` and config files read them without it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from selfmodels.configs import OptimizerSettings, option
from selfmodels.errors import require
from selfmodels.nets.config import GPTConfig

if TYPE_CHECKING:
    from selfmodels.training import Schedule

GPT_NAME = "gpt"  # our GPT, trained here
LOG_EVERY = 10  # steps between lines of metrics.jsonl


@dataclass
class CorpusConfig:
    """The text a subject reads and how it becomes tokens."""

    corpus: str = option("offline", "corpus: offline (KJV + Wikipedia sample, no internet), kjv, wikipedia, fineweb-edu (online) "
                                    "or a .txt path (on the command line: --corpus)", cli=False)
    max_chars: int | None = option(None, "keep only the first N characters of the corpus")
    vocab_size: int = option(4096, "vocabulary of the byte-level BPE fitted on the corpus (our GPT only)")
    val_fraction: float = option(0.1, "the last fraction of the token stream held out for validation")
    bos: bool = option(False, "start every window with the tokenizer's BOS token (the paper: no BOS)")

    def validate(self) -> None:
        require(self.corpus.strip() != "", "--corpus is empty: give offline, kjv, wikipedia, fineweb-edu or a .txt path")
        require(0.0 < self.val_fraction < 1.0, f"--val-fraction must be strictly between 0 and 1, got {self.val_fraction}")


@dataclass
class LMTrainConfig(OptimizerSettings):
    """Optimisation of the main model (paper: AdamW lr 3e-4, wd 0.01, clip 1.0, batch 64 x 128, 10K steps)."""

    lr: float = option(3e-4, "main model learning rate")
    eval_every: int = option(500, "steps between validation-loss evaluations (and checkpoints)")
    eval_batches: int = option(8, "validation batches per evaluation")

    def validate(self) -> None:
        super().validate()
        require(self.eval_every >= 1, f"--eval-every must be at least 1, got {self.eval_every}")

    def schedule(self) -> Schedule:
        from selfmodels.training import Schedule

        return Schedule(self.steps, log_every=LOG_EVERY, eval_every=self.eval_every, checkpoint_every=self.eval_every)


@dataclass
class SubjectConfig:
    """Which model the forward models observe, and (for our GPT) how it is trained."""

    main: str = option(GPT_NAME, "subject: gpt (ours, trained here), smollm2 (offline SmolLM2-135M) or a Hugging Face model id / "
                                 "directory (on the command line: --subject)", cli=False)
    gpt: GPTConfig = field(default_factory=GPTConfig)
    lm: LMTrainConfig = field(default_factory=LMTrainConfig)
    dtype: str = option("auto", "subject weights: auto (float32 on CPU, bfloat16 on CUDA), float32 or bfloat16",
                        choices=("auto", "float32", "bfloat16"))
    snapshot_tokens: list[int] = option([], "our GPT: when its training has seen each of these many tokens, keep its weights, "
                                            "held-out and training loss and every block's skip KL (empty: none; a "
                                            "pretrained subject ignores it, as it does --subject.lm.*)")

    @property
    def trained_here(self) -> bool:
        return self.main == GPT_NAME

    def validate(self) -> None:
        require(self.main.strip() != "", "--subject is empty: give gpt, smollm2 or a Hugging Face model id")
        if self.trained_here:
            self.gpt.validate()
            self.lm.validate()
            most = self.lm.steps * self.lm.batch_size * self.gpt.block_size
            for tokens in self.snapshot_tokens:
                require(1 <= tokens <= most, f"--subject.snapshot-tokens {tokens}: our GPT sees {most:,} tokens in all "
                                             f"({self.lm.steps:,} steps x {self.lm.batch_size} x {self.gpt.block_size}): give "
                                             "counts from 1 to that, or more --subject.lm.steps")
