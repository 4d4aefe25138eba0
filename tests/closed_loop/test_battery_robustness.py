"""Robustness against limit cases: linear response for small perturbations, and blocks that are identity maps
pass a perturbation through unchanged (response 1, cosine 1), or, at the source with F the identity, as (I + W_G) δ."""

from __future__ import annotations

import torch

from closed_loop_tiny import ids, tiny_loop, wake
from selfmodels.closed_loop.battery_config import RobustnessSettings
from selfmodels.closed_loop.residuals import loop_pass
from selfmodels.closed_loop.robustness import directions, robustness


def _identity_blocks(closed, blocks):
    """Zero the attention and MLP output projections of ``blocks``: each becomes h -> h exactly."""
    with torch.no_grad():
        for k in blocks:
            block = closed.gpt.blocks[k]
            for linear in (block.attn.proj, block.fc_proj):
                linear.weight.zero_()
                linear.bias.zero_()
    return closed


def test_directions_are_seeded_unit_vectors():
    v = directions(16, 32, seed=3)
    torch.testing.assert_close(v.norm(dim=-1), torch.ones(16, dtype=torch.float64))
    assert torch.equal(v, directions(16, 32, seed=3)) and not torch.equal(v, directions(16, 32, seed=4))


def test_with_the_gate_at_zero_the_response_to_small_perturbations_is_linear():
    closed = tiny_loop("forward").double()  # G at zero; float64 so that r -> 0 is not rounding
    x, y = ids(3), ids(3, seed=1)
    small = robustness(closed, x, y, RobustnessSettings(directions=4, radii=[1e-6, 2e-6]), seed=0)
    for site in ("inject", "source"):
        a, b = small["sites"][site]["1e-06"], small["sites"][site]["2e-06"]
        # ||Δh_j|| / ||δ|| is the same at r and 2r: doubling δ doubles Δh_j
        assert abs(b["response_mean"] / a["response_mean"] - 1) < 1e-4, (site, a, b)
        assert abs(b["cosine_mean"] - a["cosine_mean"]) < 1e-4
        assert abs(a["loss_increase_mean"]) < 1e-4
    # and the same holds of the residual itself, per token: Δh_j(2δ) = 2 Δh_j(δ)
    with torch.no_grad():
        clean = loop_pass(closed, x)
        delta = 1e-6 * torch.randn_like(clean.residuals[1])
        once = loop_pass(closed, x, delta=delta).residuals[2] - clean.residuals[2]
        twice = loop_pass(closed, x, delta=2 * delta).residuals[2] - clean.residuals[2]
    assert float((twice - 2 * once).abs().max()) < 1e-4 * float(once.abs().max())  # second order: O(|δ|²)


def test_identity_blocks_after_the_injection_pass_the_perturbation_through():
    # blocks m+1..j (here block 2) identity maps: Δh_j = δ exactly, whatever G and F are
    closed = _identity_blocks(wake(tiny_loop("forward")).double(), [2])
    out = robustness(closed, ids(2), ids(2, seed=1), RobustnessSettings(directions=5, radii=[0.1, 1.0]), seed=0)
    for r in ("0.1", "1.0"):
        entry = out["sites"]["inject"][r]
        assert abs(entry["response_mean"] - 1) < 1e-10 and abs(entry["cosine_mean"] - 1) < 1e-10
        assert entry["response_sd"] < 1e-10


def test_at_the_source_the_perturbation_reaches_j_through_the_stream_and_the_gate():
    # blocks i+1..j identity, F the identity (a fresh ForwardModel), u = F(h_i): Δh_j = δ + G(h_i + δ) - G(h_i) = (I + W) δ
    closed = _identity_blocks(tiny_loop("forward").double(), [1, 2])
    with torch.no_grad():
        closed.gate.weight.copy_(0.3 * torch.randn(32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
        closed.gate.bias.fill_(0.2)
        x = ids(2)
        clean = loop_pass(closed, x)
        torch.testing.assert_close(clean.prediction, clean.residuals[0])  # F is the identity at init
        delta = torch.randn_like(clean.residuals[0])
        moved = loop_pass(closed, x, delta=delta, at="source").residuals[2] - clean.residuals[2]
    torch.testing.assert_close(moved, delta + delta @ closed.gate.weight.T, rtol=1e-10, atol=1e-10)
    out = robustness(closed, x, ids(2, seed=1), RobustnessSettings(directions=3, radii=[0.3]), seed=0)
    units = directions(3, 32, seed=0)
    expected = (units + units @ closed.gate.weight.T.detach()).norm(dim=-1).mean()  # ||(I + W) v|| per direction
    assert abs(out["sites"]["source"]["0.3"]["response_mean"] - float(expected)) < 1e-8
