"""Token streams and activation collection for Hugging Face causal LMs, feeding the forward-model cache.

Text is tokenised with the model's own tokenizer (no special tokens added), split by position in the
token stream (first part train, last part validation, as the paper did), and packed into whole chunks
of ``seq_len + 1`` tokens: ``x = chunk[:, :-1]`` are the inputs, ``y = chunk[:, 1:]`` the next tokens.
Whether a BOS token leads each chunk is the ``bos`` choice, recorded in the run config and cache spec.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from selfmodels.errors import require
from selfmodels.forward.cache import ActivationCache, CacheSpec, write_cache
from selfmodels.nets.hf_adapter import HFAdapter, pack_tokens


def layer_key(k: int) -> str:
    """Cache / result name of the residual after decoder layer k."""
    return f"layer{k}"


def tokenize(tokenizer, text: str, piece_chars: int = 200_000) -> torch.Tensor:
    """The whole text as one 1-D token stream (tokenised in pieces cut at blank lines, so no single call
    is huge; a piece boundary at a paragraph break changes no token)."""
    pieces, start = [], 0
    while start < len(text):
        end = len(text) if start + piece_chars >= len(text) else text.rfind("\n\n", start, start + piece_chars)
        end = start + piece_chars if end <= start else end
        pieces.append(text[start:end])
        start = end
    ids = [torch.tensor(tokenizer(p, add_special_tokens=False)["input_ids"], dtype=torch.long) for p in pieces if p]
    stream = torch.cat(ids) if ids else torch.zeros(0, dtype=torch.long)
    require(stream.numel() > 0, "the corpus is empty: nothing to tokenise")
    return stream


def chunks(stream: torch.Tensor, seq_len: int, n: int, bos_id: int | None, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` packed chunks of ``seq_len + 1`` tokens -> inputs x (n, seq_len) and next tokens y (n, seq_len)."""
    packed = pack_tokens(stream, seq_len + 1, bos_id)  # (N, seq_len + 1)
    require(packed.shape[0] >= n, f"the {what} text gives only {packed.shape[0]} sequences of {seq_len + 1} tokens, "
                                  f"{n} needed: use a larger corpus or fewer sequences")
    packed = packed[:n]
    return packed[:, :-1], packed[:, 1:]


def pair_collector(adapter: HFAdapter, source: int, target: int) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
    """``ids (b, T) -> {layer{source}: (b,T,d), layer{target}: (b,T,d)}``, running no layer after ``target``."""
    device = next(adapter.model.parameters()).device

    def collect(ids: torch.Tensor) -> dict[str, torch.Tensor]:
        acts = adapter.collect(ids.to(device), [source, target])
        return {layer_key(source): acts[source].cpu(), layer_key(target): acts[target].cpu()}

    return collect


def cache_activations(adapter: HFAdapter, model_name: str, tokenizer_name: str, data_source: str,
                      sequences: torch.Tensor, source: int, target: int, directory: Path, dtype: str,
                      bos: bool, batch_size: int = 8, progress: bool = True) -> ActivationCache:
    """Write (or resume) the on-disk cache of the two layers' residuals for ``sequences`` (N, T)."""
    spec = CacheSpec(model=model_name, tokenizer=tokenizer_name, data_source=data_source,
                     layers=[layer_key(source), layer_key(target)], seq_len=sequences.shape[1],
                     d_model=adapter.d_model, dtype=dtype, extra={"bos": bos})
    return write_cache(directory, spec, sequences, pair_collector(adapter, source, target),
                       shard_sequences=128, batch_size=batch_size, progress=progress)
