"""The LLC samples the GPT and G only (F and the signal fixed and unchanged), weight spread and residual norms are
their definitions, and the drift flag follows the LM self-modeling rule."""

from __future__ import annotations

import pytest
import torch

from closed_loop_tiny import VOCAB, ids, tiny_loop, wake
from selfmodels.closed_loop.complexity import drift_flag, loop_llc, residual_norms, sampled_parameters, weight_spread
from selfmodels.closed_loop.residuals import collect, loop_pass
from selfmodels.complexity.config import LLCConfig


@pytest.mark.parametrize("path", ["sequential", "vmap"])
@pytest.mark.parametrize("condition", ["forward", "autoencoder"])
def test_the_llc_samples_the_gpt_and_gate_only_and_changes_nothing(condition, path):
    closed = wake(tiny_loop(condition))
    closed.forward_model.requires_grad_(True)
    before = {k: v.clone() for k, v in closed.state_dict().items()}
    flags = {k: p.requires_grad for k, p in closed.named_parameters()}
    windows = torch.randint(0, VOCAB, (8, 17), generator=torch.Generator().manual_seed(0))
    out = loop_llc(closed, windows, LLCConfig(chains=1, draws=6, batch_size=4, epsilon=1e-4, gamma=100.0,
                                             init_loss_batches=1, batched=path))
    gpt_and_gate = sum(p.numel() for p in closed.gpt.parameters()) + sum(p.numel() for p in closed.gate.parameters())
    # the estimator's own count of what its chains moved: the GPT's and G's weights, F and the signal held fixed
    assert out["llc_sampled_params"] == gpt_and_gate == sampled_parameters(closed)
    assert len(out["llc_per_chain"]) == 1 and out["llc_loss_at_wstar"] > 0
    for k, v in closed.state_dict().items():  # no weight moved, F's included
        assert torch.equal(v, before[k]), k
    assert {k: p.requires_grad for k, p in closed.named_parameters()} == flags  # the caller's flags are back


def test_open_loop_samples_the_gpt_alone_on_every_path():
    # open loop never applies G: G has no gradient, so it is not sampled (vmap would refuse an unused input)
    closed = tiny_loop("open-loop")
    windows = torch.randint(0, VOCAB, (8, 17), generator=torch.Generator().manual_seed(2))
    for path in ("sequential", "vmap"):
        out = loop_llc(closed, windows, LLCConfig(chains=2, draws=3, batch_size=4, init_loss_batches=1, batched=path))
        assert out["llc_sampled_params"] == sum(p.numel() for p in closed.gpt.parameters())
        assert out["llc_path"] == path


def test_weight_spread_is_the_sd_of_the_head_and_of_each_blocks_matrices():
    closed = wake(tiny_loop("forward"))
    out = weight_spread(closed)
    assert out["unembedding_sd"] == pytest.approx(float(closed.gpt.lm_head.weight.detach().std()))
    block = closed.gpt.blocks[1]
    matrices = torch.cat([block.attn.qkv.weight.flatten(), block.attn.proj.weight.flatten(), block.fc.weight.flatten(),
                          block.fc_proj.weight.flatten()])
    assert out["block_weight_sd"][1] == pytest.approx(float(matrices.detach().std()))
    assert out["block_weight_sd_mean"] == pytest.approx(sum(out["block_weight_sd"]) / 3)


def test_residual_norms_measure_each_block_s_write_and_the_injection_apart():
    closed = wake(tiny_loop("forward"))
    x = ids(3)
    norms = residual_norms(collect(closed, x, True, batch_size=2), closed.inject)
    with torch.no_grad():
        p = loop_pass(closed, x)
    assert len(norms["resid_norm"]) == 4 and len(norms["update_norm"]) == 3
    assert norms["resid_norm"][2] == pytest.approx(float(p.residuals[1].norm(dim=-1).mean()), rel=1e-5)  # h_1, injected
    assert norms["resid_norm_before_injection"] == pytest.approx(float(p.before_injection.norm(dim=-1).mean()), rel=1e-5)
    block_1 = (p.before_injection - p.residuals[0]).norm(dim=-1).mean()  # block 1's write, without G(u)
    block_2 = (p.residuals[2] - p.residuals[1]).norm(dim=-1).mean()  # block 2 reads h_1 after the injection
    assert norms["update_norm"][1] == pytest.approx(float(block_1), rel=1e-5)
    assert norms["update_norm"][2] == pytest.approx(float(block_2), rel=1e-5)


def test_the_drift_flag_is_the_lm_self_modeling_rule():
    base = {"resid_norm": [1.0, 2.0], "update_norm": [1.0, 1.0]}
    assert not drift_flag({"resid_norm": [1.9, 3.9], "update_norm": [0.3, 1.0]}, base)["drift"]
    high = drift_flag({"resid_norm": [2.1, 2.0], "update_norm": [1.0, 1.0]}, base)
    assert high["drift"] and high["drift_resid_ratio_max"] == pytest.approx(2.1)
    low = drift_flag({"resid_norm": [1.0, 2.0], "update_norm": [1.0, 0.1]}, base)
    assert low["drift"] and low["drift_update_ratio_min"] == pytest.approx(0.1)
