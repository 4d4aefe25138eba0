"""The analysis driver over the subject interface, on a tiny GPT subject (seconds)."""

import json

import pytest
import torch

from selfmodels.errors import UserError
from selfmodels.forward.analysis.decomposition import decomposition_report
from selfmodels.forward.analyze import analyze_pair, forward_model_heads
from selfmodels.forward.model import ForwardModel, ForwardModelConfig
from selfmodels.nets.gpt import GPT, GPTConfig
from selfmodels.subjects.gpt import GPTSubject

CFG = GPTConfig(vocab_size=50, block_size=12, n_layer=3, n_head=4, d_model=16)
DH = CFG.d_model // CFG.n_head
STRINGS = [f" w{i}" if i % 7 else "." for i in range(CFG.vocab_size)]
PLOTS = {"attention": "attention_similarity.png", "spectrum": "residual_spectrum.png",
         "categories": "residual_categories.png", "entropy": "entropy_vs_residual.png"}


def _subject(seed: int = 0) -> GPTSubject:
    torch.manual_seed(seed)
    gpt = GPT(CFG)
    with torch.no_grad():  # non-trivial gains and biases (the attention output bias included)
        for p in gpt.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return GPTSubject(gpt.eval())


def _forward_model(seed: int = 1, perturb: float = 0.1, n_head: int = 2) -> ForwardModel:
    """A forward model; ``perturb`` = 0 keeps the fresh model, which is exactly the identity map."""
    torch.manual_seed(seed)
    fwd = ForwardModel(ForwardModelConfig(d_model=CFG.d_model, n_head=n_head, d_head=8))
    with torch.no_grad():
        for p in fwd.parameters():
            p.add_(perturb * torch.randn_like(p))
    return fwd.eval()


def _tokens(b: int = 5, seed: int = 2) -> torch.Tensor:
    return torch.randint(0, CFG.vocab_size, (b, CFG.block_size), generator=torch.Generator().manual_seed(seed))


def test_one_block_pair_decomposes_the_compared_block(tmp_path):
    subject, fwd, ids = _subject(), _forward_model(), _tokens()
    result = analyze_pair(subject, fwd, ids, 0, 1, STRINGS, tmp_path)
    assert set(result) == {"decomposition", "analysis", "plots"}
    dec, analysis = result["decomposition"], result["analysis"]
    assert analysis["compared_block"] == 1 and analysis["tokens"] == ids.numel()
    assert dec["reconstruction_error"] < 1e-6 and dec["max_abs_error"] < 1e-5
    assert len(dec["heads"]) == CFG.n_head and dec["head_null_fraction"] == pytest.approx(DH / CFG.d_model)
    assert dec["mlp_norm_share"] + dec["heads_norm_share"] == pytest.approx(1.0)
    # With one KV head per query head (our GPT), each group is its head.
    for head, group in zip(dec["heads"], dec["kv_groups"]):
        assert group["heads"] == [head["head"]] and group["norm"] == pytest.approx(head["norm"])
    # The residual is the subject's target minus the forward model's prediction.
    with torch.no_grad():
        res = subject.residuals(ids, [0, 1])
        residual = res[1] - fwd(res[0])
    parts = subject.block_parts(ids, 1, attention=False)
    again = decomposition_report(parts["input"], parts["output"], parts["heads"], parts["attn_bias"], parts["mlp_out"],
                                 residual, [w["o"] for w in subject.head_weights(1)], subject.n_kv_heads)
    assert again["mlp_cos_residual"] == pytest.approx(dec["mlp_cos_residual"], rel=1e-5)
    assert again["heads"][2]["residual_variance_fraction"] == pytest.approx(dec["heads"][2]["residual_variance_fraction"], rel=1e-5)
    json.dumps(result)  # JSON-ready (NaN allowed)


def test_decomposition_of_a_real_block_reconstructs_its_update():
    subject, ids = _subject(3), _tokens(3, seed=4)
    parts = subject.block_parts(ids, 2, attention=False)
    head_o = [w["o"] for w in subject.head_weights(2)]
    rep = decomposition_report(parts["input"], parts["output"], parts["heads"], parts["attn_bias"], parts["mlp_out"],
                               parts["mlp_out"], head_o, subject.n_kv_heads)
    assert rep["reconstruction_error"] < 1e-6
    assert rep["mlp_cos_residual"] == pytest.approx(1.0) and rep["mlp_norm_corr"] == pytest.approx(1.0)
    # Leaving the bias out breaks the reconstruction (the GPT's attention output projection has one).
    no_bias = decomposition_report(parts["input"], parts["output"], parts["heads"], None, parts["mlp_out"],
                                   parts["mlp_out"], head_o, subject.n_kv_heads)
    assert no_bias["reconstruction_error"] > 1e-3
    # A residual that is head 1's write lies in head 1's output subspace (null: d_head / d).
    rep = decomposition_report(parts["input"], parts["output"], parts["heads"], parts["attn_bias"], parts["mlp_out"],
                               parts["heads"][:, :, 1], head_o, subject.n_kv_heads)
    assert rep["heads"][1]["residual_variance_fraction"] == pytest.approx(1.0)
    assert rep["heads"][1]["cos_residual"] == pytest.approx(1.0)
    assert rep["heads"][0]["residual_variance_fraction"] < 1.0


def test_heads_of_a_kv_group_sum(tmp_path):
    subject, ids = _subject(), _tokens()
    subject.n_kv_heads = 2  # read as two KV groups of two consecutive heads (the driver takes it from the subject)
    dec = analyze_pair(subject, _forward_model(), ids, 0, 1, STRINGS, tmp_path)["decomposition"]
    assert [g["heads"] for g in dec["kv_groups"]] == [[0, 1], [2, 3]]
    assert [h["kv_group"] for h in dec["heads"]] == [0, 0, 1, 1]
    assert dec["group_null_fraction"] == pytest.approx(2 * DH / CFG.d_model)
    # Group 1's component is the sum of heads 2 and 3: a residual equal to it has cos 1 with the group.
    parts = subject.block_parts(ids, 1, attention=False)
    head_o = [w["o"] for w in subject.head_weights(1)]
    group = parts["heads"][:, :, 2] + parts["heads"][:, :, 3]
    rep = decomposition_report(parts["input"], parts["output"], parts["heads"], parts["attn_bias"], parts["mlp_out"],
                               group, head_o, 2)
    assert rep["kv_groups"][1]["cos_residual"] == pytest.approx(1.0)
    assert rep["kv_groups"][1]["norm"] == pytest.approx(group.norm(dim=-1).mean().item(), rel=1e-6)
    assert rep["kv_groups"][1]["residual_variance_fraction"] == pytest.approx(1.0)
    assert rep["kv_groups"][0]["residual_variance_fraction"] < 1.0
    assert rep["kv_groups"][1]["heads"] == [2, 3]


def test_identity_forward_model_scores_like_the_source(tmp_path):
    subject, ids = _subject(), _tokens()
    fwd = _forward_model(perturb=0.0)  # zero output projections: exactly the identity
    cka = analyze_pair(subject, fwd, ids, 0, 1, STRINGS, tmp_path)["analysis"]["cka"]
    assert list(cka) == ["prediction_vs_target", "post_attention", "source_vs_target", "source_vs_prediction"]
    assert cka["prediction_vs_target"] == pytest.approx(cka["source_vs_target"], abs=1e-9)
    assert cka["source_vs_prediction"] == pytest.approx(1.0, abs=1e-9)
    assert all(0 <= v <= 1 + 1e-9 for v in cka.values())


def _copy_of_head(subject: GPTSubject, block: int, head: int) -> ForwardModel:
    """A 1-head forward model whose attention is GPT head ``head`` of ``block`` and whose MLP is zero."""
    d = CFG.d_model
    fwd = ForwardModel(ForwardModelConfig(d_model=d, n_layer=1, n_head=1, d_head=DH))
    src, dst = subject.blocks[block], fwd.blocks[0]
    rows = torch.cat([torch.arange(i * d + head * DH, i * d + (head + 1) * DH) for i in range(3)])  # Q, K, V rows
    with torch.no_grad():
        dst.ln1.load_state_dict(src.ln1.state_dict())
        dst.attn.qkv.weight.copy_(src.attn.qkv.weight[rows])
        dst.attn.qkv.bias.copy_(src.attn.qkv.bias[rows])
        dst.attn.out.weight.copy_(src.attn.proj.weight[:, head * DH:(head + 1) * DH])
        dst.attn.out.bias.zero_()
        for p in dst.mlp.parameters():
            p.zero_()
    return fwd.eval()


def test_forward_model_is_compared_with_the_first_predicted_block(tmp_path):
    subject, ids = _subject(1), _tokens()
    fwd = _copy_of_head(subject, block=1, head=2)
    analysis = analyze_pair(subject, fwd, ids, 0, 2, STRINGS, tmp_path)["analysis"]  # blocks 1 and 2 predicted
    assert analysis["compared_block"] == 1
    for key in ("attention_cosine_per_example", "attention_cosine_batch_averaged"):
        assert analysis[key][2] == pytest.approx(1.0, abs=1e-5) and analysis[key][0] < 0.9999
    head = analysis["gauge"]["per_layer_head"][2]
    for key in ("q_cosine", "k_cosine", "v_cosine", "qk_circuit_cosine", "ov_circuit_cosine", "q_read_overlap", "o_write_overlap"):
        assert head[key] == pytest.approx(1.0, abs=1e-5), key
    assert analysis["gauge"]["per_layer_head"][0]["qk_circuit_cosine"] < 0.99
    assert analysis["gauge"]["mean_null_overlap"] == pytest.approx(DH / CFG.d_model)


def test_plots_are_written(tmp_path):
    result = analyze_pair(_subject(), _forward_model(), _tokens(), -1, 0, STRINGS, tmp_path / "plots")
    assert result["plots"] == {**PLOTS, "decomposition": "decomposition.png"}
    for name in result["plots"].values():
        assert (tmp_path / "plots" / name).read_bytes()[:4] == b"\x89PNG"


def test_two_block_pair_has_analyses_but_no_decomposition(tmp_path):
    result = analyze_pair(_subject(), _forward_model(), _tokens(), 0, 2, STRINGS, tmp_path)
    assert result["decomposition"] is None
    assert result["plots"] == PLOTS and not (tmp_path / "decomposition.png").exists()
    analysis = result["analysis"]
    assert analysis["compared_block"] == 1
    assert len(analysis["attention_cosine_per_example"]) == CFG.n_head
    assert set(analysis["entropy_correlation"]) == {"raw", "normalised_by_update_norm"}
    assert {"d_vs_overall", "d_pooled"} <= set(analysis["residual_categories"]["sentence_start"])
    for key in ("effective_rank_entropy_s2", "effective_rank_entropy_s"):
        assert 1 <= analysis[key] <= CFG.d_model


def test_entropy_correlation_is_normalised_by_the_whole_predicted_update(tmp_path):
    """For a 2-block pair the residual norm is divided by ‖target - source‖, not by the last block's update."""
    from selfmodels.forward.analysis.attention import attention_entropy
    from selfmodels.forward.analysis.residual import pearson

    subject, fwd, ids = _subject(), _forward_model(), _tokens()
    analysis = analyze_pair(subject, fwd, ids, -1, 1, STRINGS, tmp_path)["analysis"]
    with torch.no_grad():
        res = subject.residuals(ids, [-1, 1])
        r = (res[1] - fwd(res[-1]))[:, 1:].norm(dim=-1)
        update = (res[1] - res[-1])[:, 1:].norm(dim=-1)
        entropy = attention_entropy(subject.block_parts(ids, 0)["attention"]).mean(1)[:, 1:].float()
    assert analysis["entropy_correlation"]["normalised_by_update_norm"] == pytest.approx(pearson(r / update, entropy), rel=1e-5)
    assert analysis["entropy_correlation"]["raw"] == pytest.approx(pearson(r, entropy), rel=1e-5)


def test_positions_note_and_first_position(tmp_path):
    subject, fwd, ids = _subject(), _forward_model(), _tokens()
    note = analyze_pair(subject, fwd, ids, 0, 1, STRINGS, tmp_path)["analysis"]["positions"]
    assert "positions 1..T-1" in note and "position 0 excluded" in note
    assert "attends only to itself" in note and "attention sink" in note
    later = analyze_pair(subject, fwd, ids, 0, 1, STRINGS, tmp_path, first_position=3)["analysis"]
    assert "positions 3..T-1" in later["positions"] and "positions 0..2 excluded" in later["positions"]
    assert later["tokens"] == ids.numel()  # counts every token; only the residual structure skips positions


def test_modes_are_restored(tmp_path):
    subject, fwd = _subject(), _forward_model()
    subject.model.train()
    fwd.train()
    analyze_pair(subject, fwd, _tokens(), 0, 1, STRINGS, tmp_path)
    assert subject.model.training and fwd.training


def test_forward_model_heads_fold_the_layernorm_gain():
    fwd = _forward_model(n_head=2)
    b = fwd.blocks[0]
    x = torch.randn(5, CFG.d_model)
    with torch.no_grad():
        qkv = b.attn.qkv(b.ln1(x)) - b.attn.qkv.bias - b.ln1.bias @ b.attn.qkv.weight.T  # (5, 3*H*dh), no biases
    normed = torch.nn.functional.layer_norm(x, (CFG.d_model,), eps=b.ln1.eps)
    heads = forward_model_heads(fwd)
    inner = 2 * 8
    torch.testing.assert_close(normed @ heads[1]["q"].T, qkv[:, 8:16], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(normed @ heads[1]["v"].T, qkv[:, 2 * inner + 8:2 * inner + 16], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(heads[0]["o"], b.attn.out.weight[:, :8])


def test_bad_inputs_get_one_clear_message(tmp_path):
    subject, fwd = _subject(), _forward_model()
    with pytest.raises(UserError, match="at least 2 sequences"):
        analyze_pair(subject, fwd, _tokens(1), 0, 1, STRINGS, tmp_path)
    with pytest.raises(UserError, match="at least 2 sequences"):
        analyze_pair(subject, fwd, _tokens(2)[0], 0, 1, STRINGS, tmp_path)
    with pytest.raises(UserError, match="first_position"):
        analyze_pair(subject, fwd, _tokens(2), 0, 1, STRINGS, tmp_path, first_position=CFG.block_size - 1)
    with pytest.raises(UserError, match="first_position"):
        analyze_pair(subject, fwd, _tokens(2), 0, 1, STRINGS, tmp_path, first_position=-1)
    with pytest.raises(UserError, match="--target"):
        analyze_pair(subject, fwd, _tokens(2), 1, 0, STRINGS, tmp_path)
    with pytest.raises(UserError, match="--source"):
        analyze_pair(subject, fwd, _tokens(2), 2, 3, STRINGS, tmp_path)
    assert not any(tmp_path.iterdir())  # nothing written before the checks
