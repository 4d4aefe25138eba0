"""Token windows cut from a 1-D token stream: the one place sequences are made for every language model.

A window of length T predicts T tokens: inputs ``x = s[a : a+T]`` and next tokens ``y = s[a+1 : a+T+1]``.
With a BOS token, the window's first input is BOS and it predicts ``s[a : a+T]`` from ``[BOS] + s[a : a+T-1]``
(the paper's Llama inputs had no BOS; the choice is recorded by the caller).

- :func:`consecutive_windows`: windows one after another from the start of a stream (evaluation: every
  token of the covered text is predicted exactly once);
- :func:`spread_windows`: ``n`` of those windows spread evenly over the whole stream (activation caches: an
  ordered corpus is sampled from beginning to end, not only its first part);
- :func:`random_windows`: windows at random starts drawn from a generator (training the main model);
- :func:`window_count` and :func:`cut_windows`: the counting and cutting the others share (the activation
  stream cuts its windows with them too).
"""

from __future__ import annotations

import torch

from selfmodels.errors import require


def window_count(stream: torch.Tensor, seq_len: int, bos_id: int | None) -> int:
    """How many whole non-overlapping windows the stream holds (each needs its next-token targets)."""
    require(stream.dim() == 1, f"a token stream is 1-D, got shape {tuple(stream.shape)}")
    require(seq_len >= 2, f"sequence length must be at least 2, got {seq_len}")
    # Without BOS a window needs one token past its end (its last target); with BOS it predicts its own T tokens.
    return (stream.numel() - (1 if bos_id is None else 0)) // seq_len


def cut_windows(stream: torch.Tensor, starts: torch.Tensor, seq_len: int, bos_id: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next tokens of the windows starting at ``starts`` (n,): (n, T) each."""
    offsets = torch.arange(seq_len)
    if bos_id is None:
        x = stream[starts[:, None] + offsets]  # (n, T)
        y = stream[starts[:, None] + offsets + 1]
    else:
        y = stream[starts[:, None] + offsets]  # (n, T): the stream tokens predicted
        x = torch.cat([torch.full((len(starts), 1), bos_id, dtype=stream.dtype), y[:, :-1]], dim=1)
    return x, y


def consecutive_windows(stream: torch.Tensor, seq_len: int, n: int | None = None, bos_id: int | None = None,
                        what: str = "token") -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` (all, if None) non-overlapping windows from the start: inputs (n, T), next tokens (n, T)."""
    total = window_count(stream, seq_len, bos_id)
    require(total >= 1, f"the {what} stream ({stream.numel()} tokens) is shorter than one window of {seq_len + 1}: "
                        "use a larger corpus or a shorter sequence length")
    n = total if n is None else min(n, total)
    return cut_windows(stream, torch.arange(n) * seq_len, seq_len, bos_id)


def spread_windows(stream: torch.Tensor, seq_len: int, n: int, bos_id: int | None = None,
                   what: str = "token") -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` whole non-overlapping windows spread evenly over the stream (all of them if it holds fewer)."""
    total = window_count(stream, seq_len, bos_id)
    require(total >= 1, f"the {what} stream ({stream.numel()} tokens) is shorter than one window of {seq_len + 1}: "
                        "use a larger corpus or a shorter sequence length")
    pick = torch.linspace(0, total - 1, min(n, total)).long()
    return cut_windows(stream, pick * seq_len, seq_len, bos_id)


def random_windows(stream: torch.Tensor, seq_len: int, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` windows at uniformly random starts: inputs (n, T), next tokens (n, T)."""
    require(stream.numel() > seq_len + 1, f"the token stream ({stream.numel()} tokens) is shorter than one window of {seq_len + 1}")
    starts = torch.randint(0, stream.numel() - seq_len - 1, (n,), generator=generator)
    return cut_windows(stream, starts, seq_len, None)
