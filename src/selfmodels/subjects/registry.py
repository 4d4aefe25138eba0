"""Opening a subject by name, with the token stream it reads: the one door the pipeline goes through.

``--subject gpt`` is our GPT, trained here on the corpus with our byte-level BPE (and, when asked, a forward
model co-trained beside it, as the paper did); ``--subject smollm2`` is the packaged offline SmolLM2-135M; any
other name is a Hugging Face model id or local directory. Either way the caller gets a :class:`Subject`, the
tokenizer, the train / validation token streams (split by position) and where they came from; nothing
after this point needs to know which kind of subject it has.

Our GPT's data (BPE and token stream) and its trained weights are kept under
:func:`selfmodels.runtime.cache_dir`, each keyed by everything that determines it, so a second run with
the same settings reuses them and an interrupted training resumes from its checkpoint.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from selfmodels import distributed
from selfmodels.artifacts import atomic_path, load_tensors, read_json, sha256_file, write_json
from selfmodels.configs import to_dict
from selfmodels.curves import Mirror
from selfmodels.errors import UserError, require
from selfmodels.runtime import cache_dir
from selfmodels.stages import content_key
from selfmodels.subjects.base import Subject
from selfmodels.subjects.config import CorpusConfig, SubjectConfig  # defined there, torch-free
from selfmodels.subjects.lm_training import CoTrain  # what open_subject accepts

DATA_FORMAT = 3  # 2: our BPE is fitted on the training part only; 3: no chunk cut after a run of whitespace


@dataclass
class OpenedSubject:
    """A subject ready to observe, with its tokens. ``files``: artifacts worth copying into a run directory."""

    subject: Subject
    tokenizer: object
    train: torch.Tensor  # (N_train,) token ids
    val: torch.Tensor  # (N_val,)
    data: dict  # corpus, source, chars, tokens, tokenizer id
    training: dict | None  # our GPT's training record (None for a pretrained subject)
    files: dict[str, Path] = field(default_factory=dict)
    bos_id: int | None = None

    def token_strings(self) -> list[str]:
        """The decoded text of every id the subject embeds."""
        return [self.tokenizer.decode([i]) for i in range(self.subject.vocab_size)]


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
        return _our_gpt(cfg, corpus, device, seed, cotrain, progress, mirror)
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


# --- our GPT ---------------------------------------------------------------------------------------
def _data_key(corpus: CorpusConfig) -> dict:
    # DATA_FORMAT is part of the key: a change in how the tokenizer is fitted must not reuse old streams.
    return {"corpus": corpus.corpus, "max_chars": corpus.max_chars, "vocab_size": corpus.vocab_size,
            "val_fraction": corpus.val_fraction, "format": DATA_FORMAT}


def text_store(corpus: CorpusConfig) -> Path:
    """Where our BPE and the corpus's token streams are kept (:func:`prepare_text`), keyed by what determines them."""
    return cache_dir() / "forward-data" / content_key(_data_key(corpus))


def prepare_text(corpus_cfg: CorpusConfig, store: Path, progress: bool = True) -> tuple[object, torch.Tensor, torch.Tensor, dict]:
    """Our BPE and the (train, val) token streams of the corpus; kept under ``store`` (``tokenizer.json``,
    ``tokens.npy``, ``data.json``) and reused when present. The BPE is fitted on the training part only."""
    from selfmodels.data.bpe import encode_corpus, load_tokenizer, save_tokenizer, split_stream, train_bpe
    from selfmodels.data.corpora import load_corpus

    store = Path(store)
    tok_path, ids_path, info_path = store / "tokenizer.json", store / "tokens.npy", store / "data.json"
    if tok_path.is_file() and ids_path.is_file() and info_path.is_file():
        tokenizer = load_tokenizer(tok_path)
        tokens = torch.from_numpy(np.load(ids_path).astype(np.int64))
        info = read_json(info_path)
    else:
        corpus = load_corpus(corpus_cfg.corpus, max_chars=corpus_cfg.max_chars)
        # Fit the BPE on the text before the validation cut, so held-out text plays no part in it
        # (the token stream is split by position, so its last part comes from the text's last part).
        train_chars = int(len(corpus.text) * (1 - corpus_cfg.val_fraction))
        tokenizer = train_bpe(corpus.text[:train_chars], corpus_cfg.vocab_size)
        save_tokenizer(tokenizer, tok_path)
        tokens = encode_corpus(tokenizer, corpus, progress=progress)
        require(tokens.numel() > 0, f"corpus {corpus_cfg.corpus!r} gave no tokens: give a corpus with some text")
        with atomic_path(ids_path) as tmp:
            with open(tmp, "wb") as handle:
                np.save(handle, tokens.numpy().astype(np.int32))
        info = {"corpus": corpus.name, "source": corpus.source, "chars": len(corpus.text), "tokens": int(tokens.numel()),
                "tokenizer": "bpe:" + sha256_file(tok_path)}
        write_json(info_path, info)
    train, val = split_stream(tokens, corpus_cfg.val_fraction)
    return tokenizer, train, val, info


def _our_gpt(cfg: SubjectConfig, corpus_cfg: CorpusConfig, device: torch.device, seed: int, cotrain: CoTrain | None,
             progress: bool, mirror: Mirror | None = None) -> OpenedSubject:
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
    identity = {"data": _data_key(corpus_cfg), "gpt": to_dict(gpt_cfg), "lm": to_dict(cfg.lm), "seed": seed, "cotrain": companion}
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
