"""The objective: discrepancies against analytic values, w = 0 bit for bit, gradient flow, detaching, random targets."""

from __future__ import annotations

import math

import pytest
import torch

from selfmodels.errors import UserError
from selfmodels.lm_selfmodeling.objective import AuxiliaryObjective, check_objective, discrepancy
from selfmodels.lm_selfmodeling.run import ObjectiveConfig, build_objective
from selfmodels.lm_selfmodeling.sites import capture, logits_of
from selfmodels.subjects.lm_training import train_language_model
from selfmodels.subjects.lm_training import LMTrainConfig

from lm_tiny import SEQ, tiny_gpt


def test_discrepancies_match_their_definitions():
    t = torch.tensor([[[3.0, 4.0]]])
    p = torch.tensor([[[0.0, 0.0]]])
    assert discrepancy(p, t, "mse").item() == pytest.approx(12.5)  # (9 + 16) / 2
    assert discrepancy(p, t, "scaled-mse").item() == pytest.approx(1.0)  # predicting zero costs exactly 1
    assert discrepancy(2 * t, t, "cosine").item() == pytest.approx(0.0, abs=1e-7)
    assert discrepancy(-t, t, "cosine").item() == pytest.approx(2.0)
    assert discrepancy(torch.tensor([[[4.0, -3.0]]]), t, "cosine").item() == pytest.approx(1.0)  # orthogonal
    # scale-free: scaling prediction and target together leaves scaled-mse and cosine unchanged, mse by c²
    g = torch.Generator().manual_seed(0)
    p, t = torch.randn(2, 5, 8, generator=g), torch.randn(2, 5, 8, generator=g)
    for loss in ("scaled-mse", "cosine"):
        assert discrepancy(10 * p, 10 * t, loss).item() == pytest.approx(discrepancy(p, t, loss).item(), rel=1e-5)
    assert discrepancy(10 * p, 10 * t, "mse").item() == pytest.approx(100 * discrepancy(p, t, "mse").item(), rel=1e-5)


@pytest.mark.parametrize("args, words", [
    (("nope", 1.0, "mse", "both"), "unknown method"),
    (("self-model", -1.0, "mse", "both"), "non-negative"),
    (("self-model", float("nan"), "mse", "both"), "non-negative"),
    (("self-model", 1.0, "l1", "both"), "unknown self-model loss"),
    (("forward", 1.0, "mse", "sideways"), "is not one of source, target, both, none"),
])
def test_bad_objective_is_one_user_error(args, words):
    with pytest.raises(UserError, match=words):
        check_objective(*args)


def _train(method: str, stream, steps: int = 6, **objective) -> dict:
    subject = tiny_gpt()
    obj = build_objective(ObjectiveConfig(method=method, **objective), subject)
    cfg = LMTrainConfig(steps=steps, batch_size=4, lr=3e-3, eval_every=3)
    val = (stream[:SEQ * 4].view(4, SEQ), stream[1 : SEQ * 4 + 1].view(4, SEQ))
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        train_language_model(subject, obj, objective.get("strength", 0.0), cfg, stream, val, SEQ, tmp, seed=0, progress=False)
    return subject.model.state_dict()


@pytest.mark.parametrize("method, extra", [
    ("self-model", {}), ("self-model", {"site": "mlp:1", "detach_target": False}), ("random-target", {}),
    ("activation-l2", {"site": "resid:0"}), ("forward", {"source": 0, "target": 1, "flow": "both"}),
])
def test_strength_zero_trains_exactly_like_the_plain_lm(stream, method, extra):
    plain = _train("baseline", stream)
    other = _train(method, stream, strength=0.0, **extra)
    assert plain.keys() == other.keys()
    for key in plain:
        assert torch.equal(plain[key], other[key]), key
    moved = _train(method, stream, strength=1.0, **extra)  # and a positive strength does change the model
    assert any(not torch.equal(plain[k], moved[k]) for k in plain)


def test_forward_form_with_no_gradient_flow_leaves_the_main_model_alone(stream):
    """flow = none: only the co-trained forward model learns from A; the LM ends bit-identical to the plain LM."""
    plain = _train("baseline", stream)
    other = _train("forward", stream, strength=5.0, source=0, target=1, flow="none")
    assert all(torch.equal(plain[k], other[k]) for k in plain)


def _aux_grads(flow: str) -> dict[int, bool]:
    """Which blocks of a 3-block GPT get gradient from the forward form's term alone (pair 0 -> 1)."""
    subject = tiny_gpt()
    obj = AuxiliaryObjective("forward", "head-input", "mse", forward_model=torch.nn.Linear(32, 32), source=0, target=1, flow=flow)
    subject.model.zero_grad()
    with capture(subject, obj.sites()) as acts:
        logits_of(subject, torch.randint(0, 61, (2, SEQ)))
    obj.term(acts).backward()
    return {k: any(p.grad is not None and p.grad.abs().sum() > 0 for p in b.parameters())
            for k, b in enumerate(subject.model.blocks)}


def test_gradient_flow_is_explicit():
    assert _aux_grads("none") == {0: False, 1: False, 2: False}
    assert _aux_grads("source") == {0: True, 1: False, 2: False}  # block 1 lies between source and target
    assert _aux_grads("target") == {0: True, 1: True, 2: False}  # the target h1 depends on blocks 0 and 1
    assert _aux_grads("both") == {0: True, 1: True, 2: False}


def test_detached_target_and_random_target():
    subject = tiny_gpt()
    ids = torch.randint(0, 61, (3, SEQ))
    for method, detach in (("self-model", True), ("self-model", False), ("random-target", True)):
        obj = AuxiliaryObjective(method, "resid:1", detach_target=detach, d_model=32, site_width=32)
        with capture(subject, obj.sites()) as acts:
            logits_of(subject, ids)
        pred, target = obj.prediction_and_target(acts)
        assert pred.shape == target.shape == (3, SEQ, 32)
        assert target.requires_grad is (not detach)
        expected = acts["resid:1"].roll(1, dims=0) if method == "random-target" else acts["resid:1"]
        assert torch.equal(target, expected)
        if method == "random-target":  # sequence b's target is sequence b-1's activation, never its own
            assert torch.equal(target[1], acts["resid:1"][0]) and not torch.equal(target[1], acts["resid:1"][1])


def test_activation_l2_term_is_the_mean_square():
    subject = tiny_gpt()
    obj = AuxiliaryObjective("activation-l2", "mlp:0")
    with capture(subject, obj.sites()) as acts:
        logits_of(subject, torch.randint(0, 61, (2, SEQ)))
    a = acts["mlp:0"]
    assert a.shape == (2, SEQ, 128)
    assert obj.term(acts).item() == pytest.approx(a.pow(2).mean().item())
    assert math.isfinite(obj.term(acts).item())
