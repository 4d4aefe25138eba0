"""The analyses against analytic and limit cases."""

import math

import pytest
import torch
from hf_tiny_models import VOCAB, tiny_llama

from selfmodels.forward.analysis import plots
from selfmodels.forward.analysis.attention import attention_entropy, attention_similarity
from selfmodels.forward.analysis.cka import linear_cka
from selfmodels.forward.analysis.decomposition import (
    decomposition_report, decompose_update, subspace_variance_fraction,
)
from selfmodels.forward.analysis.gauge import head_comparison, principal_cosines, weight_cosine
from selfmodels.forward.analysis.residual import (
    category_effects, cohens_d_pooled, effect_vs_overall, effective_rank_entropy_s, effective_rank_entropy_s2,
    pearson, spectrum_summary, token_categories, variance_ranks,
)
from selfmodels.subjects.hf import HFSubject


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# --- decomposition ---------------------------------------------------------------------------------
@pytest.mark.parametrize("bias", [False, True], ids=["no_bias", "o_proj_bias"])
def test_decomposition_reconstructs_the_layer_update(bias):
    model = tiny_llama(attention_bias=bias)
    subject = HFSubject(model, "tiny-llama")
    ids = torch.randint(0, VOCAB, (2, 12), generator=_gen())
    parts = subject.block_parts(ids, 2, attention=False)
    heads = parts["heads"]  # (2, 12, 4, 64)
    dec = decompose_update(parts["input"], parts["output"], heads, parts["attn_bias"] if bias else None, parts["mlp_out"])
    assert dec["heads"].shape == (24, 4, 64)
    assert dec["reconstruction_error"] < 1e-6
    # The per-head contributions sum to o_proj's output (minus its bias).
    torch.testing.assert_close(dec["heads"].sum(1) + dec["bias"], parts["attn_out"].reshape(-1, 64), atol=1e-5, rtol=1e-5)


def test_decomposition_report_limit_cases():
    model = tiny_llama()
    subject = HFSubject(model, "tiny-llama")
    ids = torch.randint(0, VOCAB, (2, 12), generator=_gen(1))
    parts = subject.block_parts(ids, 1, attention=False)
    heads = parts["heads"]  # (2, 12, 4, 64)
    head_o = [w["o"] for w in subject.head_weights(1)]  # (64, 16) each

    def report(residual):
        return decomposition_report(parts["input"], parts["output"], heads, None, parts["mlp_out"], residual,
                                    head_o, subject.n_kv_heads)

    # A residual equal to the MLP output: cos 1 and norm correlation 1 with the MLP.
    rep = report(parts["mlp_out"])
    assert rep["mlp_cos_residual"] == pytest.approx(1.0)
    assert rep["mlp_norm_corr"] == pytest.approx(1.0)
    assert rep["mlp_norm_share"] + rep["heads_norm_share"] == pytest.approx(1.0)
    assert len(rep["kv_groups"]) == 2 and rep["kv_groups"][1]["heads"] == [2, 3]
    # A residual equal to head 3's contribution lies entirely in head 3's output subspace.
    rep = report(heads[:, :, 3])
    assert rep["heads"][3]["residual_variance_fraction"] == pytest.approx(1.0)
    assert rep["heads"][3]["cos_residual"] == pytest.approx(1.0)
    assert rep["kv_groups"][1]["residual_variance_fraction"] == pytest.approx(1.0)


def test_subspace_fraction_of_an_isotropic_residual_is_the_null():
    residual = torch.randn(20000, 32, generator=_gen())
    columns = torch.randn(32, 4, generator=_gen(1))
    assert subspace_variance_fraction(residual, columns) == pytest.approx(4 / 32, abs=0.01)


# --- CKA -----------------------------------------------------------------------------------------
def test_linear_cka_invariances():
    x = torch.randn(300, 16, generator=_gen())
    q = torch.linalg.qr(torch.randn(16, 16, generator=_gen(1))).Q
    assert linear_cka(x, x @ q) == pytest.approx(1.0, abs=1e-9)
    assert linear_cka(x, 3.7 * x + 2.0) == pytest.approx(1.0, abs=1e-9)
    assert linear_cka(x, torch.randn(300, 16, generator=_gen(2))) < 0.15
    # CKA(X, Y) is symmetric and the same for (B, T, d) and flattened inputs.
    y = torch.randn(300, 8, generator=_gen(3)) + x[:, :8]
    assert linear_cka(x, y) == pytest.approx(linear_cka(y, x))
    assert linear_cka(x.reshape(3, 100, 16), y.reshape(3, 100, 8)) == pytest.approx(linear_cka(x, y))


# --- residual structure --------------------------------------------------------------------------
def test_effective_ranks_and_variance_ranks_on_known_spectra():
    flat = torch.ones(10)
    assert effective_rank_entropy_s2(flat) == pytest.approx(10.0)
    assert effective_rank_entropy_s(flat) == pytest.approx(10.0)
    one = torch.tensor([5.0, 0, 0, 0])
    assert effective_rank_entropy_s2(one) == pytest.approx(1.0)
    # S = (2, 1): variances (4, 1) -> exp(H(.8, .2)); singular values -> exp(H(2/3, 1/3)). They differ.
    s = torch.tensor([2.0, 1.0])
    h = lambda p: -sum(x * math.log(x) for x in p)  # noqa: E731
    assert effective_rank_entropy_s2(s) == pytest.approx(math.exp(h([0.8, 0.2])))
    assert effective_rank_entropy_s(s) == pytest.approx(math.exp(h([2 / 3, 1 / 3])))
    # Variances 40, 30, 20, 10 %: 50% needs 2 PCs, 90% needs 3, 95% needs 4.
    ranks = variance_ranks(torch.tensor([40.0, 30, 20, 10]).sqrt())
    assert ranks == {"50%": 2, "90%": 3, "95%": 4}


def test_spectrum_of_a_rank_two_residual():
    basis = torch.randn(2, 20, generator=_gen())
    residual = torch.randn(500, 2, generator=_gen(1)) @ basis + 5.0  # the constant offset is centred away
    summary = spectrum_summary(residual)
    assert summary["variance_ranks"]["95%"] <= 2
    assert summary["effective_rank_entropy_s2"] <= 2.0 + 1e-6
    assert summary["max_rank"] == 20


def test_effect_sizes_on_a_hand_made_case():
    values = torch.tensor([1.0, 1.0, 3.0, 3.0])
    mask = torch.tensor([False, False, True, True])
    # overall mean 2, std (unbiased) sqrt(4/3): paper's d = (3 - 2) / sqrt(4/3).
    assert effect_vs_overall(values, mask) == pytest.approx(1 / math.sqrt(4 / 3))
    # two groups with zero spread would give an infinite pooled d: add spread.
    values = torch.tensor([0.0, 2.0, 2.0, 4.0])
    # groups {0, 2} and {2, 4}: means 1 and 3, each variance 2 -> pooled sd sqrt(2), d = 2 / sqrt(2).
    assert cohens_d_pooled(values, mask) == pytest.approx(2 / math.sqrt(2))
    assert pearson(torch.arange(5.0), 2 * torch.arange(5.0) + 1) == pytest.approx(1.0)
    effects = category_effects(values, {"upper": mask})
    assert effects["upper"]["tokens"] == 2 and effects["upper"]["mean"] == pytest.approx(3.0)


def test_token_categories():
    tokens = [["Hello", " world", ".", " The", " (", "x", ")", " ok"]]
    attention = torch.zeros(1, 1, 8, 8)
    attention[0, 0, :, 0] = 1.0  # every row fully focused on the first token
    masks = token_categories(tokens, attention)
    assert masks["sentence_start"][0].tolist() == [True, False, False, True, False, False, False, False]
    assert masks["after_punctuation"][0].tolist() == [False, False, False, True, False, False, False, False]
    assert masks["after_opener"][0].tolist() == [False, False, False, False, False, True, False, False]
    assert masks["before_closer"][0].tolist() == [False, False, False, False, False, True, False, False]
    assert masks["focused_attention"].all()


# --- attention -----------------------------------------------------------------------------------
def _uniform_causal(b, h, t):
    a = torch.ones(t, t).tril()
    return (a / a.sum(-1, keepdim=True)).expand(b, h, t, t).clone()


def test_attention_similarity_identical_and_per_example_vs_averaged():
    a = _uniform_causal(3, 2, 6)
    sim = attention_similarity(a[:, :1], a)
    assert torch.allclose(sim["per_example"], torch.ones(1, 2), atol=1e-6)
    assert torch.allclose(sim["batch_averaged"], torch.ones(1, 2), atol=1e-6)
    # Two examples whose patterns are swapped between the models: each sequence's patterns are
    # orthogonal (off the first row, which every causal pattern shares), but the batch averages agree.
    t = 4
    prev = torch.zeros(t, t)
    prev[0, 0] = 1
    prev[torch.arange(1, t), torch.arange(0, t - 1)] = 1  # attend to the previous token
    diag = torch.eye(t)  # attend to yourself
    layer = torch.stack([prev, diag])[:, None]  # (2, 1, t, t)
    forward = torch.stack([diag, prev])[:, None]
    sim = attention_similarity(forward, layer)
    assert sim["batch_averaged"].item() == pytest.approx(1.0)
    assert sim["per_example"].item() == pytest.approx(1 / t)  # only the first row agrees


def test_attention_entropy():
    a = _uniform_causal(1, 1, 4)
    assert torch.allclose(attention_entropy(a)[0, 0], torch.log(torch.arange(1, 5).double()))


# --- gauge -----------------------------------------------------------------------------------------
def test_gauge_invariant_comparisons_see_through_a_rotation():
    d, dh = 32, 8
    q, k, v = (torch.randn(dh, d, generator=_gen(i)) for i in range(3))
    o = torch.randn(d, dh, generator=_gen(3))
    rot = torch.linalg.qr(torch.randn(dh, dh, generator=_gen(4))).Q  # orthogonal gauge transform
    rotated = {"q": rot @ q, "k": rot @ k, "v": rot @ v, "o": o @ rot.T}
    cmp = head_comparison(rotated, {"q": q, "k": k, "v": v, "o": o})
    assert cmp["qk_circuit_cosine"] == pytest.approx(1.0)
    assert cmp["ov_circuit_cosine"] == pytest.approx(1.0)
    assert cmp["q_read_overlap"] == pytest.approx(1.0) and cmp["o_write_overlap"] == pytest.approx(1.0)
    assert abs(cmp["q_cosine"]) < 0.5  # raw weights no longer line up
    assert cmp["null_overlap"] == pytest.approx(dh / d)
    assert weight_cosine(q, q) == pytest.approx(1.0)
    e = torch.eye(4)
    assert principal_cosines(e[:, :2], e[:, 1:3]).tolist() == pytest.approx([1.0, 0.0])


# --- plots -----------------------------------------------------------------------------------------
def test_plots_write_png_files(tmp_path):
    a = _uniform_causal(2, 2, 5)
    names = [plots.plot_attention_similarity(attention_similarity(a[:, :1], a), tmp_path / "attn.png")]
    residual = torch.randn(200, 16, generator=_gen())
    summary = spectrum_summary(residual)
    from selfmodels.forward.analysis.residual import singular_values
    names.append(plots.plot_residual_spectrum(singular_values(residual), summary, tmp_path / "spec.png"))
    names.append(plots.plot_category_effects({"a": {"d_vs_overall": 0.3, "d_pooled": 0.4}}, tmp_path / "cat.png"))
    names.append(plots.plot_entropy_scatter(torch.rand(100), torch.rand(100), 0.1, tmp_path / "ent.png"))
    for name in names:
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_head_weights_fold_the_norm_gains():
    from selfmodels.forward.analyze import forward_model_heads
    from selfmodels.forward.model import ForwardModel, ForwardModelConfig

    model = tiny_llama()
    subject = HFSubject(model, "tiny-llama")
    block = subject.blocks[1]
    with torch.no_grad():
        block.input_layernorm.weight.uniform_(0.5, 1.5)  # a non-trivial gain to fold in
        x = torch.randn(5, 64, generator=_gen())
        unit = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + block.input_layernorm.variance_epsilon)
        q_all = block.self_attn.q_proj(block.input_layernorm(x))  # (5, H*dh)
        k_all = block.self_attn.k_proj(block.input_layernorm(x))  # (5, KV*dh)
    heads = subject.head_weights(1)
    torch.testing.assert_close(unit @ heads[3]["q"].T, q_all[:, 48:64])
    torch.testing.assert_close(unit @ heads[3]["k"].T, k_all[:, 16:32])  # head 3 is in KV group 1
    fwd = ForwardModel(ForwardModelConfig(d_model=64, n_head=2, d_head=8))
    with torch.no_grad():
        fwd.blocks[0].ln1.weight.uniform_(0.5, 1.5)
        fwd.blocks[0].ln1.bias.zero_()
        normed = torch.nn.functional.layer_norm(x, (64,))
        qkv = fwd.blocks[0].attn.qkv(fwd.blocks[0].ln1(x)) - fwd.blocks[0].attn.qkv.bias
    fh = forward_model_heads(fwd)
    torch.testing.assert_close(normed @ fh[1]["q"].T, qkv[:, 8:16])
    torch.testing.assert_close(normed @ fh[1]["v"].T, qkv[:, 32 + 8:32 + 16])
