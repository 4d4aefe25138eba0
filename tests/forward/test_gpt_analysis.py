"""The GPT's attention path and the analyses of a forward model on our GPT (tiny models, seconds)."""

import pytest
import torch

from selfmodels.errors import UserError

from selfmodels.forward.gpt_analyze import analyze_gpt_pair, gpt_block_heads
from selfmodels.forward.hf_analyze import forward_model_heads
from selfmodels.forward.model import ForwardModel, ForwardModelConfig
from selfmodels.nets.gpt import GPT, GPTConfig

CFG = GPTConfig(vocab_size=50, block_size=12, n_layer=2, n_head=2, d_model=16)


def _gpt(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    gpt = GPT(CFG)
    with torch.no_grad():  # non-trivial LayerNorm gains and biases, so folding them matters
        for p in gpt.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return gpt.eval()


def test_attention_path_matches_the_normal_path():
    gpt = _gpt()
    idx = torch.randint(0, CFG.vocab_size, (3, CFG.block_size))
    with torch.no_grad():
        logits = gpt(idx)
        logits_a, patterns = gpt(idx, return_attention=True)
        h = gpt.embed(idx)
        h_a, pats = gpt.run_blocks(h, 0, 2, return_attention=True)
        _, loss = gpt(idx, idx)
        _, loss_a, _ = gpt(idx, idx, return_attention=True)
    torch.testing.assert_close(logits_a, logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h_a, gpt.run_blocks(h, 0, 2), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss_a, loss)
    assert len(patterns) == len(pats) == CFG.n_layer
    for a in patterns:
        assert a.shape == (3, CFG.n_head, CFG.block_size, CFG.block_size)
        torch.testing.assert_close(a.sum(-1), torch.ones(3, CFG.n_head, CFG.block_size))
        assert (a.triu(1) == 0).all() and (a >= 0).all()  # causal: no weight on later keys
        assert (a[..., 0, 0] == 1).all()  # the first query sees only itself


def _copy_of_head(gpt: GPT, block: int, head: int) -> ForwardModel:
    """A 1-head forward model whose attention is GPT head ``head`` of ``block`` and whose MLP is zero."""
    d, dh = CFG.d_model, CFG.d_model // CFG.n_head
    fwd = ForwardModel(ForwardModelConfig(d_model=d, n_layer=1, n_head=1, d_head=dh))
    src, dst = gpt.blocks[block], fwd.blocks[0]
    rows = torch.cat([torch.arange(i * d + head * dh, i * d + (head + 1) * dh) for i in range(3)])  # Q, K, V rows
    with torch.no_grad():
        dst.ln1.load_state_dict(src.ln1.state_dict())
        dst.attn.qkv.weight.copy_(src.attn.qkv.weight[rows])
        dst.attn.qkv.bias.copy_(src.attn.qkv.bias[rows])
        dst.attn.out.weight.copy_(src.attn.proj.weight[:, head * dh:(head + 1) * dh])
        dst.attn.out.bias.zero_()
        for p in dst.mlp.parameters():
            p.zero_()
    return fwd.eval()


def test_forward_model_copying_a_head_matches_it(tmp_path):
    gpt = _gpt(1)
    fwd = _copy_of_head(gpt, block=1, head=1)
    tokens = torch.randint(0, CFG.vocab_size, (4, CFG.block_size))
    strings = [f" w{i}" if i % 7 else "." for i in range(CFG.vocab_size)]
    analysis, plots = analyze_gpt_pair(gpt, fwd, tokens, source=0, target=1, token_strings=strings, plot_dir=tmp_path)
    for key in ("attention_cosine_per_example", "attention_cosine_batch_averaged"):
        assert abs(analysis[key][1] - 1.0) < 1e-5 and analysis[key][0] < 0.9999
    head = analysis["gauge"]["per_layer_head"][1]
    for key in ("q_cosine", "k_cosine", "v_cosine", "qk_circuit_cosine", "ov_circuit_cosine", "q_read_overlap", "o_write_overlap"):
        assert abs(head[key] - 1.0) < 1e-5, key
    assert analysis["gauge"]["per_layer_head"][0]["qk_circuit_cosine"] < 0.99
    assert analysis["compared_block"] == "block1" and analysis["tokens"] == tokens.numel()
    assert set(analysis["cka"]) == {"prediction_vs_target", "post_attention", "source_vs_target", "source_vs_prediction"}
    assert all(0 <= v <= 1 + 1e-9 for v in analysis["cka"].values())
    for key in ("effective_rank_entropy_s2", "effective_rank_entropy_s"):
        assert 1 <= analysis[key] <= CFG.d_model
    assert {"d_vs_overall", "d_pooled"} <= set(analysis["residual_categories"]["sentence_start"])
    assert set(analysis["entropy_correlation"]) == {"raw", "normalised_by_update_norm"}
    assert all((tmp_path / name).is_file() for name in plots.values())


def test_gpt_heads_are_slices_of_the_fused_qkv_with_the_gain_folded_in():
    gpt = _gpt(2)
    heads = gpt_block_heads(gpt, 0)
    dh = CFG.d_model // CFG.n_head
    b = gpt.blocks[0]
    x = torch.randn(5, CFG.d_model)
    with torch.no_grad():
        q_all = b.attn.qkv(b.ln1(x))[:, :CFG.d_model] - b.attn.qkv.bias[:CFG.d_model]  # (5, d) without qkv bias
        normed = (x - x.mean(-1, keepdim=True)) / (x.var(-1, unbiased=False, keepdim=True) + b.ln1.eps).sqrt()
        q_fold = normed @ heads[1]["q"].T + (b.ln1.bias @ b.attn.qkv.weight[dh:2 * dh].T)  # ln1 bias enters as a constant
    torch.testing.assert_close(q_fold, q_all[:, dh:2 * dh], rtol=1e-4, atol=1e-5)
    fwd = _copy_of_head(gpt, 0, 0)
    for key in "qkvo":
        torch.testing.assert_close(forward_model_heads(fwd)[0][key], heads[0][key])


def test_bad_inputs_get_one_clear_message(tmp_path):
    gpt = _gpt()
    fwd = _copy_of_head(gpt, 0, 0)
    strings = [str(i) for i in range(CFG.vocab_size)]
    with pytest.raises(UserError, match="at least 2 sequences"):
        analyze_gpt_pair(gpt, fwd, torch.zeros(1, 8, dtype=torch.long), -1, 0, strings, tmp_path)
    with pytest.raises(UserError, match="--target"):
        analyze_gpt_pair(gpt, fwd, torch.zeros(2, 8, dtype=torch.long), 1, 0, strings, tmp_path)
