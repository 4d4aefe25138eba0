"""Tiny models and token streams for the self-modeling-LM tests (seconds on one CPU core)."""

from __future__ import annotations

import torch

from selfmodels.nets.gpt import GPT, GPTConfig
from selfmodels.subjects.gpt import GPTSubject

VOCAB = 61
SEQ = 16


def tiny_gpt(seed: int = 0, layers: int = 3) -> GPTSubject:
    torch.manual_seed(seed)
    return GPTSubject(GPT(GPTConfig(vocab_size=VOCAB, block_size=SEQ, n_layer=layers, n_head=2, d_model=32)))


def token_stream(n: int = 4000) -> torch.Tensor:
    """A token stream with structure (a noisy counter), so a few steps of training move the loss."""
    g = torch.Generator().manual_seed(0)
    base = torch.arange(n) % VOCAB
    noise = torch.randint(0, VOCAB, (n,), generator=g)
    return torch.where(torch.rand(n, generator=g) < 0.2, noise, base)


def tiny_llama_subject(layers: int = 2):
    """A tiny random Llama (built locally, no download) as a subject."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from selfmodels.subjects.hf import HFSubject

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64)
    return HFSubject(LlamaForCausalLM(cfg).eval(), name="tiny-llama")
