"""Sites (names, capture, widths) on our GPT and a tiny Hugging Face model; measures against analytic cases."""

from __future__ import annotations

import math

import pytest
import torch

from selfmodels.errors import UserError
from selfmodels.lm_selfmodeling import measure
from selfmodels.lm_selfmodeling.objective import AuxiliaryObjective
from selfmodels.lm_selfmodeling.sites import capture, logits_of, parse_site, site_indices, site_width

from lm_tiny import SEQ, tiny_gpt


def test_unknown_site_lists_the_valid_ones():
    with pytest.raises(UserError, match=r"valid sites: head-input, resid:-1 .. resid:2, mlp:0 .. mlp:2"):
        parse_site("resid:3", 3)
    with pytest.raises(UserError, match="unknown site 'attn:0'"):
        parse_site("attn:0", 3)
    assert parse_site("mlp:2", 3) == ("mlp", 2)
    assert site_indices("head-input", 4) == {3} and site_indices("mlp:1", 4) == {0, 1} and site_indices("resid:-1", 4) == {-1}


def test_gpt_sites_are_the_activations_they_name():
    subject = tiny_gpt()
    gpt = subject.model
    ids = torch.randint(0, 61, (2, SEQ))
    with torch.no_grad(), capture(subject, ["head-input", "resid:-1", "resid:1", "mlp:2"]) as acts:
        logits = logits_of(subject, ids)
    with torch.no_grad():
        h = gpt.embed(ids)
        h1 = gpt.run_blocks(h, 0, 2)
        h2 = gpt.run_blocks(h1, 2, 3)
        b = gpt.blocks[2]
        mlp_hidden = torch.nn.functional.gelu(b.fc(b.ln2(h1 + b.attn(b.ln1(h1)))))
    torch.testing.assert_close(acts["resid:-1"], h)
    torch.testing.assert_close(acts["resid:1"], h1)
    torch.testing.assert_close(acts["head-input"], gpt.ln_f(h2))
    torch.testing.assert_close(acts["mlp:2"], mlp_hidden)
    torch.testing.assert_close(logits, gpt(ids))
    assert site_width(subject, "mlp:0") == 128 and site_width(subject, "head-input") == 32
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in gpt.modules()) == 0  # hooks removed


def test_hf_subject_sites_and_a_short_fine_tune(tmp_path):
    """The objective goes through the subject interface: a tiny Llama predicts its own MLP hidden layer."""
    from lm_tiny import tiny_llama_subject
    from selfmodels.subjects.lm_training import train_language_model
    from selfmodels.subjects.lm_training import LMTrainConfig

    subject = tiny_llama_subject()
    assert site_width(subject, "mlp:1") == 128
    obj = AuxiliaryObjective("self-model", "mlp:1", d_model=64, site_width=128)
    ids = torch.randint(0, 97, (2, SEQ))
    with torch.no_grad(), capture(subject, obj.sites()) as acts:
        logits_of(subject, ids)
    assert acts["mlp:1"].shape == (2, SEQ, 128) and acts["head-input"].shape == (2, SEQ, 64)
    before = {k: v.clone() for k, v in subject.model.state_dict().items()}
    stream = torch.randint(0, 97, (2000,), generator=torch.Generator().manual_seed(0))
    val = (stream[: 4 * SEQ].view(4, SEQ), stream[1 : 4 * SEQ + 1].view(4, SEQ))
    out = train_language_model(subject, obj, 1.0, LMTrainConfig(steps=3, batch_size=2, lr=1e-3, eval_every=3), stream, val,
                               SEQ, tmp_path, seed=0, progress=False)
    assert math.isfinite(out["val_loss"]) and out["train_aux"] is not None and out["train_aux"] > 0
    assert any(not torch.equal(before[k], v) for k, v in subject.model.state_dict().items())


def test_bits_per_byte():
    assert measure.bits_per_byte(math.log(2), 100, 100) == pytest.approx(1.0)  # one bit per byte-token
    assert measure.bits_per_byte(2.0, 10, 40) == pytest.approx(20 / (40 * math.log(2)))


def test_lm_metrics_of_a_uniform_model():
    """Zeroed unembedding: uniform next-token distribution, loss ln V exactly."""
    subject = tiny_gpt()
    with torch.no_grad():
        subject.model.lm_head.weight.zero_()
    x = torch.randint(0, 61, (3, SEQ))
    out = measure.lm_metrics(subject, x, x, n_bytes=3 * SEQ, batch_size=2)
    assert out["val_loss"] == pytest.approx(math.log(61), rel=1e-6)
    assert out["bits_per_byte"] == pytest.approx(math.log2(61), rel=1e-6)


def test_weight_spread_and_norms_limit_cases():
    subject = tiny_gpt(layers=2)
    with torch.no_grad():
        w = subject.model.lm_head.weight
        w.copy_(torch.tensor([1.0, -1.0]).repeat(w.numel() // 2).view_as(w))
        for block in subject.model.blocks:  # blocks that write nothing: h_k = h_{k-1}
            block.attn.proj.weight.zero_(); block.attn.proj.bias.zero_()
            block.fc_proj.weight.zero_(); block.fc_proj.bias.zero_()
    spread = measure.weight_spread(subject)
    n = w.numel()
    assert spread["unembedding_sd"] == pytest.approx(math.sqrt(n / (n - 1)))
    assert len(spread["block_weight_sd"]) == 2
    x = torch.randint(0, 61, (4, SEQ))
    norms = measure.residual_norms(subject, x, batch_size=3)
    assert norms["update_norm"] == [0.0, 0.0]
    emb = subject.model.embed(x).norm(dim=-1).mean().item()
    assert norms["resid_norm"] == pytest.approx([emb] * 3, rel=1e-5)


def test_objective_fit_of_a_perfect_self_model():
    """Predicting the head's own input with the identity: mse 0, cosine 1."""
    subject = tiny_gpt()
    obj = AuxiliaryObjective("self-model", "head-input", d_model=32, site_width=32)
    with torch.no_grad():
        obj.aux_head.weight.copy_(torch.eye(32)); obj.aux_head.bias.zero_()
    fit = measure.objective_fit(subject, obj, torch.randint(0, 61, (3, SEQ)), batch_size=2)
    assert fit["fit_mse"] == pytest.approx(0.0, abs=1e-10) and fit["fit_cosine"] == pytest.approx(1.0, abs=1e-6)
    assert fit["fit_scaled_mse"] == pytest.approx(0.0, abs=1e-10)
