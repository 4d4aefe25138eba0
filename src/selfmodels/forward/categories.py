"""Behavioural token categories for the per-category substitution breakdown.

Every category is a property of a prediction position t, judged from the token to be predicted
(``y_t``, the next token), the context (``x_{≤t}``) and the normal model's distribution there:

- ``punctuation``: ``y_t`` decodes, whitespace stripped, to one or more punctuation characters only;
- ``bracket_closing``: ``y_t``, whitespace stripped, starts with ``)``, ``]`` or ``}``;
- ``induction``: ``y_t`` already occurs among the last 20 context tokens ``x_{t-19..t}``;
- ``high_confidence`` / ``low_confidence``: the normal model's ``p(y_t)`` is > 0.5 / < 0.1;
- ``content_words`` / ``function_words``: ``y_t`` is a word token (contains a letter) among the
  rarest 20% / the most frequent 5% of the word-token types that occur in the training stream,
  ranked by training count.
"""

from __future__ import annotations

import unicodedata

import torch

INDUCTION_WINDOW = 20
CATEGORIES = ("punctuation", "bracket_closing", "induction", "high_confidence", "low_confidence", "content_words", "function_words")


def _is_punctuation(text: str) -> bool:
    text = text.strip()
    return bool(text) and all(unicodedata.category(ch).startswith("P") for ch in text)


class TokenCategories:
    """Per-vocabulary lookups (from token strings and training counts) and per-position masks."""

    def __init__(self, token_strings: list[str], train_counts: torch.Tensor):
        V = len(token_strings)
        self.punct = torch.tensor([_is_punctuation(s) for s in token_strings])  # (V,)
        self.closer = torch.tensor([s.strip()[:1] in (")", "]", "}") for s in token_strings])  # (V,)
        counts = train_counts.double()
        wordlike = torch.tensor([any(ch.isalpha() for ch in s) for s in token_strings]) & (counts[:V] > 0)
        ids = torch.nonzero(wordlike).flatten()
        ranked = ids[torch.argsort(counts[ids], descending=True, stable=True)]  # most frequent first
        n = len(ranked)
        self.function = torch.zeros(V, dtype=torch.bool)
        self.content = torch.zeros(V, dtype=torch.bool)
        if n:
            self.function[ranked[: max(1, round(0.05 * n))]] = True
            self.content[ranked[n - max(1, round(0.20 * n)) :]] = True

    def masks(self, x: torch.Tensor, y: torch.Tensor, logits_normal: torch.Tensor) -> dict[str, torch.Tensor]:
        """Boolean masks (B, T) for each category at inputs ``x`` (B, T), next tokens ``y`` (B, T)."""
        y_cpu = y.cpu()
        p_correct = logits_normal.float().softmax(-1).gather(-1, y[..., None])[..., 0].cpu()  # (B, T)
        B, T = x.shape
        # window[b, t, k] = x[b, t - k] for k < 20 (positions before the start never match).
        padded = torch.cat([torch.full((B, INDUCTION_WINDOW - 1), -1, dtype=x.dtype), x.cpu()], dim=1)  # (B, T+19)
        window = padded.unfold(1, INDUCTION_WINDOW, 1)  # (B, T, 20)
        return {
            "punctuation": self.punct[y_cpu],
            "bracket_closing": self.closer[y_cpu],
            "induction": (window == y_cpu[..., None]).any(-1),
            "high_confidence": p_correct > 0.5,
            "low_confidence": p_correct < 0.1,
            "content_words": self.content[y_cpu],
            "function_words": self.function[y_cpu],
        }
