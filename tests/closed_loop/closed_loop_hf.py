"""Tiny closed loops on pretrained-style subjects for the tests: a random Llama and a random GPT-2 built from configs
(3 blocks, width 64, vocabulary 97, random norm gains and biases; no download), with the loop i = 0, m = 1, j = 2."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from selfmodels.closed_loop.build import build_closed_loop
from selfmodels.closed_loop.config import LoopConfig
from selfmodels.forward.config import ForwardModelConfig

SUBJECT_TESTS = str(Path(__file__).resolve().parents[1] / "subjects")
if SUBJECT_TESTS not in sys.path:
    sys.path.append(SUBJECT_TESTS)
from tiny_subjects import VOCAB, hf_config, perturb  # noqa: E402

FAMILIES = ("llama", "gpt2")  # GPT-2 ties its LM head to the embedding; the Llama does not
SEQ = 12
FORWARD = ForwardModelConfig(n_layer=2, n_head=1, d_head=16)


def tiny_model(family: str, seed: int = 0):
    """A tiny random causal LM of ``family``, in eval mode (GPT-2's dropout off, as the closed loop runs it)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return perturb(AutoModelForCausalLM.from_config(hf_config(family)), seed).eval()


def tiny_subject(family: str, seed: int = 0):
    from selfmodels.subjects.hf_loading import open_model

    return open_model(tiny_model(family, seed), None, f"tiny-{family}")


def hf_loop(family: str, condition: str, seed: int = 0, source: int = 0, inject: int = 1, target: int = 2,
            shift: int = 3, subject=None):
    """A fresh closed loop of ``condition`` around a tiny subject (F seeded after the subject, as a run does)."""
    subject = subject or tiny_subject(family, seed)
    torch.manual_seed(seed)
    loop = LoopConfig(condition=condition, source=source, inject=inject, target=target, shift=shift)
    return build_closed_loop(subject, loop, FORWARD, seed)


def hf_ids(batch: int = 2, seed: int = 0, length: int = SEQ) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def save_tiny(directory: Path, family: str) -> Path:
    """A tiny random model of ``family`` saved with an offline BPE tokenizer (``tests/forward/hf_tiny_models``), for
    ``selfmodels closed-loop --subject DIR``."""
    forward_tests = str(Path(__file__).resolve().parents[1] / "forward")
    if forward_tests not in sys.path:
        sys.path.append(forward_tests)
    from hf_tiny_models import save_family

    return save_family(Path(directory), family)


WORDS = "the a fox dog lazy quick brown jumped over slept said end beginning then and of".split()
# `selfmodels closed-loop` at toy size (the --gpt.* flags only matter for our GPT)
TINY_FLAGS = ["--quick", "--corpus.vocab-size", "300", "--gpt.n-layer", "3", "--gpt.n-head", "2", "--gpt.d-model", "32",
              "--seq-len", "16", "--lm.steps", "3", "--lm.batch-size", "4", "--lm.eval-every", "3", "--eval-windows", "4",
              "--forward.d-head", "8", "--pair", "0", "2", "--inject", "1", "--quiet"]


def word_corpus(tmp_path: Path) -> str:
    """A small .txt corpus of the tiny tokenizer's words (500 lines of 12)."""
    import random

    rng = random.Random(0)
    path = Path(tmp_path) / "corpus.txt"
    path.write_text("\n".join(" ".join(rng.choice(WORDS) for _ in range(12)) + "." for _ in range(500)))
    return str(path)
