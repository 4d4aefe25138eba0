"""Opening a subject by name, with the token stream it reads: the one door the pipeline goes through.

``--subject gpt`` is our GPT, trained here on the corpus with our byte-level BPE (and, when asked, a forward
model co-trained beside it, as the paper did); ``--subject smollm2`` is the packaged offline SmolLM2-135M; any
other name is a Hugging Face model id or local directory. Either way the caller gets a :class:`Subject`, the
tokenizer, the train / validation token streams (split by position) and where they came from; nothing
after this point needs to know which kind of subject it has.

Our GPT is trained (or read back from its cache) by :mod:`selfmodels.subjects.our_gpt`, on the token streams of
:mod:`selfmodels.subjects.text`; a pretrained subject is loaded by :mod:`selfmodels.subjects.hf_loading`.
"""

from __future__ import annotations

import torch

from selfmodels.curves import Mirror
from selfmodels.errors import UserError, require
from selfmodels.subjects.base import Subject
from selfmodels.subjects.config import CorpusConfig, SubjectConfig  # defined there, torch-free
from selfmodels.subjects.lm_training import CoTrain  # what open_subject accepts
from selfmodels.subjects.opened import OpenedSubject  # what it returns
from selfmodels.subjects.our_gpt import open_our_gpt


def model_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.float32 if device.type == "cpu" else torch.bfloat16  # bf16 is several times slower on CPU
    return getattr(torch, name)


def open_subject(cfg: SubjectConfig, corpus: CorpusConfig, device: torch.device, seed: int,
                 cotrain: CoTrain | None = None, progress: bool = True, mirror: Mirror | None = None,
                 held: Subject | None = None) -> OpenedSubject:
    """The subject named by ``cfg.main`` and its train / validation token streams. ``mirror`` receives our GPT's
    training curve when it is trained here (not when it is reused from the cache). ``held``: a subject the caller
    already holds (:func:`selfmodels.open_subject`), observed as it is (its device, dtype and weights; ``cfg.main``
    only names it), read with its own ``tokenizer``."""
    cfg.validate()
    corpus.validate()
    if held is not None:
        require(cotrain is None, f"co-training a forward model needs a subject trained here; {held.name!r} is held as it is")
        require(getattr(held, "tokenizer", None) is not None,
                f"subject {held.name!r} has no tokenizer: open it with selfmodels.open_subject(model, tokenizer)")
        return _pretrained(cfg, corpus, device, progress, held)
    if cfg.trained_here:
        return open_our_gpt(cfg, corpus, device, seed, cotrain, progress, mirror)
    if cotrain is not None:
        raise UserError(f"co-training a forward model needs a subject trained here (--subject gpt); {cfg.main!r} is "
                        "pretrained: train the forward model from its activations instead (--training cache)")
    return _pretrained(cfg, corpus, device, progress)


def _pretrained(cfg: SubjectConfig, corpus_cfg: CorpusConfig, device: torch.device, progress: bool,
                held: Subject | None = None) -> OpenedSubject:
    from selfmodels.data.bpe import encode_corpus, split_stream
    from selfmodels.data.corpora import load_corpus
    from selfmodels.subjects.hf_loading import load_causal_lm, tokenizer_size

    subject = held if held is not None else load_causal_lm(cfg.main, device, model_dtype(cfg.dtype, device))
    bos_id = subject.tokenizer.bos_token_id if corpus_cfg.bos else None
    require(not corpus_cfg.bos or bos_id is not None, f"the tokenizer of {cfg.main} has no BOS token: run without --corpus.bos")
    corpus = load_corpus(corpus_cfg.corpus, max_chars=corpus_cfg.max_chars)
    tokens = encode_corpus(subject.tokenizer, corpus, progress=progress)
    train, val = split_stream(tokens, corpus_cfg.val_fraction)
    info = subject.source_info()
    data = {"corpus": corpus.name, "source": corpus.source, "chars": len(corpus.text), "tokens": int(tokens.numel()),
            "tokenizer": f"{cfg.main} tokenizer ({tokenizer_size(subject.tokenizer)} tokens; weights {info['weights_sha256'][:12]})"}
    return OpenedSubject(subject, subject.tokenizer, train, val, data, None, bos_id=bos_id)
