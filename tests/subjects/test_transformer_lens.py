"""What is particular to a TransformerLens ``HookedTransformer`` as a subject; the subject contract itself (residuals
against its own hook points, early stop, split, skip, splice, block parts, head weights, bad indices and ids,
description) runs on it in ``tests/subjects/test_contract.py`` (kinds ``tl-mha``, ``tl-gqa``, ``tl-parallel``). Here:
observation in eval mode with every mode restored, the identity from the weights in memory, what is refused, and the
forward pipeline from the library. Tiny random models from TransformerLens' own config, no download; the extra is
installed by ``make setup``, so nothing here skips."""

from __future__ import annotations

import pytest
import torch
from tiny_subjects import VOCAB, hooked_transformer

import selfmodels
from selfmodels.errors import UserError
from selfmodels.subjects.transformer_lens import HookedSubject


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture()
def ids():
    return torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(3))


def test_observation_runs_in_eval_mode_and_restores_every_mode(ids):
    model = hooked_transformer("tl-mha")
    subject = selfmodels.open_subject(model)
    model.train()
    model.blocks[1].eval()  # a mixed state, restored module by module
    seen = []
    handle = model.blocks[0].register_forward_pre_hook(lambda module, args: seen.append(module.training))
    try:
        with torch.no_grad():
            subject.residuals(ids, [2])
            split = subject.split(0, 1)
            split.suffix(split.middle(split.prefix(ids)))
            with subject.skip(0, 1):
                model(ids)
    finally:
        handle.remove()
    assert seen and not any(seen), "a block ran in train mode during observation"
    assert model.training and model.blocks[0].training and not model.blocks[1].training


def test_identity_is_the_weights_in_memory():
    first = selfmodels.open_subject(hooked_transformer("tl-mha")).describe()
    assert selfmodels.open_subject(hooked_transformer("tl-mha")).describe()["weights_sha256"] == first["weights_sha256"]
    assert selfmodels.open_subject(hooked_transformer("tl-mha", seed=1)).describe()["weights_sha256"] != first["weights_sha256"]
    changed = hooked_transformer("tl-mha")
    subject = selfmodels.open_subject(changed)
    before = subject.describe()["weights_sha256"]
    with torch.no_grad():
        changed.blocks[0].mlp.W_in.add_(1.0)  # in place, after opening: the digest follows the weights
    assert subject.describe()["weights_sha256"] not in (before, first["weights_sha256"]) and before == first["weights_sha256"]


def test_what_is_not_a_hooked_transformer_or_cannot_restart_from_a_residual_is_refused():
    with pytest.raises(UserError, match="needs a transformer_lens.HookedTransformer, not Linear"):
        HookedSubject(torch.nn.Linear(2, 2))
    model = hooked_transformer("tl-mha")
    model.cfg.positional_embedding_type = "shortformer"  # positions added inside every attention: no residual restart
    with pytest.raises(UserError, match="shortformer positional embeddings"):
        HookedSubject(model)


def test_the_forward_pipeline_runs_on_a_hooked_transformer(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    inner = Tokenizer(models.WordLevel({chr(ord("a") + i): i for i in range(26)}, unk_token="a"))
    inner.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    text = tmp_path / "letters.txt"
    generator = torch.Generator().manual_seed(0)
    text.write_text("".join(chr(ord("a") + int(i)) for i in torch.randint(0, 26, (6000,), generator=generator)))
    subject = selfmodels.open_subject(hooked_transformer("tl-mha"), PreTrainedTokenizerFast(tokenizer_object=inner))
    fit = selfmodels.forward.fit(subject, 0, 2, corpus=str(text), out=tmp_path / "run", seq_len=16, train_sequences=12,
                                 eval_sequences=4, eval_batch=4, model={"d_head": 16, "swiglu_hidden": 32},
                                 baseline={"steps": "same"}, train={"steps": 4, "batch_size": 4, "log_every": 2,
                                                                    "checkpoint_every": 4})
    assert fit.results["subject"]["family"] == "transformer_lens" and fit.evaluation["kl_skipped"] > 0
