"""A subject from whatever the caller holds: a name, a model object, or a subject already made.

:func:`as_subject` is what ``selfmodels.open_subject`` is, and what the library's entry points
(``selfmodels.forward.fit``, ...) call on their ``subject`` argument:

- a name: ``smollm2`` (the packaged offline SmolLM2-135M), a Hugging Face model id or a local directory, loaded as
  ``--subject NAME`` loads it (:func:`selfmodels.subjects.hf_loading.load_causal_lm`) on ``device`` in ``dtype``;
- a Hugging Face causal LM object (with its tokenizer): observed as it is, in its dtype and on its device(s), a
  ``device_map`` included (:func:`selfmodels.subjects.hf_loading.open_model`);
- our :class:`~selfmodels.nets.gpt.GPT` (with the tokenizer its ids come from): a
  :class:`~selfmodels.subjects.gpt.GPTSubject`;
- a TransformerLens ``HookedTransformer``: a :class:`~selfmodels.subjects.transformer_lens.HookedSubject`;
- a :class:`~selfmodels.subjects.base.Subject`: returned as it is (given a tokenizer if one is passed).

An object is never moved or cast: ``device`` and ``dtype`` apply to a name only. Anything else is refused with one
message naming what was given.
"""

from __future__ import annotations

import torch

from selfmodels.errors import UserError
from selfmodels.subjects.base import Subject

GPT_NAME = "gpt"


def as_subject(model, tokenizer=None, *, name: str | None = None, device: str | torch.device | None = None,
               dtype: torch.dtype | str | None = None) -> Subject:
    """A :class:`Subject` for ``model`` (a name, a model object or a subject; see the module docstring)."""
    if isinstance(model, str):
        return _by_name(model, tokenizer, name, device, dtype)
    if device is not None or dtype is not None:
        raise UserError(f"device= and dtype= apply to a model opened by name; a {type(model).__name__} object is observed "
                        "where it is and in its dtype: move or cast it yourself (model.to(...)) before opening it")
    if isinstance(model, Subject):
        if tokenizer is not None:
            model.tokenizer = tokenizer
        return model
    from selfmodels.nets.gpt import GPT

    if isinstance(model, GPT):
        from selfmodels.subjects.gpt import GPTSubject

        return GPTSubject(model, name=name or GPT_NAME, tokenizer=tokenizer)
    if type(model).__name__ == "HookedTransformer":  # TransformerLens, an optional extra: not imported to ask
        from selfmodels.subjects.transformer_lens import HookedSubject

        return HookedSubject(model, tokenizer=tokenizer, name=name)
    from selfmodels.subjects.hf_loading import open_model

    return open_model(model, tokenizer, name)  # refuses what is not a decoder-only causal LM


def _by_name(model: str, tokenizer, name: str | None, device, dtype) -> Subject:
    from selfmodels.subjects.hf_loading import load_causal_lm

    if model == GPT_NAME:
        raise UserError("'gpt' is our GPT trained on a corpus by the pipeline: pass subject='gpt' to selfmodels.forward.fit "
                        "(it trains it there), or open a trained GPT object with selfmodels.open_subject(gpt, tokenizer)")
    if tokenizer is not None:
        raise UserError(f"a model opened by name ({model!r}) comes with its own tokenizer: pass tokenizer= with a model object")
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.removeprefix("torch."), None)
        if not isinstance(dtype, torch.dtype):
            raise UserError("dtype must be a torch dtype or its name (float32, bfloat16, float16)")
    subject = load_causal_lm(model, device or "cpu", dtype or torch.float32)
    if name:
        subject.name = name
    return subject
