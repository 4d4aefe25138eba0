"""Our GPT as a subject: trained here on the corpus with our BPE, and kept under the key of its training.

A second run with the same data, shape, optimisation, seed and co-trained forward model reads the trained weights
back from ``cache_dir()/forward-gpt/<key>``; an interrupted training resumes from its checkpoint there.
"""

from __future__ import annotations

import dataclasses

import torch

from selfmodels import distributed
from selfmodels.artifacts import load_tensors, read_json, write_json
from selfmodels.configs import to_dict
from selfmodels.curves import Mirror
from selfmodels.errors import require
from selfmodels.runtime import cache_dir
from selfmodels.stages import content_key
from selfmodels.subjects.config import CorpusConfig, SubjectConfig  # defined there, torch-free
from selfmodels.subjects.lm_training import CoTrain
from selfmodels.subjects.opened import OpenedSubject
from selfmodels.subjects.text import data_key, prepare_text, text_store


def open_our_gpt(cfg: SubjectConfig, corpus_cfg: CorpusConfig, device: torch.device, seed: int, cotrain: CoTrain | None,
                  progress: bool, mirror: Mirror | None = None) -> OpenedSubject:
    """Our GPT on the corpus: trained here (rank 0 alone; with ``cotrain``'s forward model beside it), or read back
    from its cache (``cache_dir()/forward-gpt/<key>``, the key of everything that determines the training)."""
    from selfmodels.nets.gpt import GPT
    from selfmodels.subjects.gpt import GPTSubject
    from selfmodels.subjects.lm_training import train_lm
    from selfmodels.runtime import seed_everything

    require(not corpus_cfg.bos, "our GPT's BPE has no BOS token: run --subject gpt without --corpus.bos")
    data_dir = text_store(corpus_cfg)
    tokenizer, train, val, info = prepare_text(corpus_cfg, data_dir, progress)
    block = cfg.gpt.block_size
    require(train.numel() > block + 1 and val.numel() > block + 1,
            f"corpus {corpus_cfg.corpus!r} is too small ({train.numel() + val.numel()} tokens) for sequences of {block}")
    gpt_cfg = dataclasses.replace(cfg.gpt, vocab_size=tokenizer.get_vocab_size())
    companion = None if cotrain is None else {"source": cotrain.source, "target": cotrain.target, "lr": cotrain.lr,
                                               "weight_decay": cotrain.weight_decay, "grad_clip": cotrain.grad_clip, **cotrain.identity}
    identity = {"data": data_key(corpus_cfg), "gpt": to_dict(gpt_cfg), "lm": to_dict(cfg.lm), "seed": seed, "cotrain": companion}
    if cfg.snapshot_tokens:  # the same training; only a run with snapshots has them (none: the key as before)
        identity["snapshot_tokens"] = sorted(set(cfg.snapshot_tokens))
    key = content_key(identity)
    work = cache_dir() / "forward-gpt" / key
    done = work / "lm_result.json"
    if done.is_file():
        gpt = GPT(gpt_cfg)
        gpt.load_state_dict(load_tensors(work / "main.safetensors"))
        if cotrain is not None:
            cotrain.model.load_state_dict(load_tensors(work / "forward.safetensors"))
        training = {**read_json(done), "reused_from_cache": str(work)}
    else:
        seed_everything(seed)
        gpt = GPT(gpt_cfg)
        with distributed.solo():  # one process trains our GPT (rank 0, while the others wait in main_first), as always
            training = train_lm(gpt, train, val, cfg.lm, work, device, seed, cotrain, progress=progress, mirror=mirror,
                                snapshot_tokens=cfg.snapshot_tokens)
        write_json(done, training)
        training = {**training, "reused_from_cache": None}
    gpt.to(device).eval().requires_grad_(False)
    if cotrain is not None:
        cotrain.model.to(device).eval()
    training["tokens_seen"] = cfg.lm.steps * cfg.lm.batch_size * block
    files = {name: work / name for name in ("main.safetensors", "forward.safetensors", "metrics.jsonl", "token_snapshots.jsonl")
             if (work / name).is_file()}
    files["tokenizer.json"] = data_dir / "tokenizer.json"
    subject = GPTSubject(gpt, weights=work / "main.safetensors", tokenizer=tokenizer)
    return OpenedSubject(subject, tokenizer, train, val, info, training, files)
