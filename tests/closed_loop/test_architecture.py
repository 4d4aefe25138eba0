"""The closed loop's pass: it starts as the open-loop GPT bit for bit, its target is on-policy, the MSE reaches
only F (and a signal's own module), every condition is causal, and each signal is the function its entry names."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from closed_loop_tiny import CONDITION_NAMES, INJECTING, SEQ, VOCAB, ids, tiny_loop, wake


@pytest.mark.parametrize("condition", CONDITION_NAMES)
def test_every_condition_at_step_0_is_the_open_loop_gpt_bit_for_bit(condition):
    closed = tiny_loop(condition)
    x = ids()
    plain = closed.gpt(x)
    assert torch.equal(closed(x), plain) and torch.equal(closed(x, inject=False), plain)
    reference = tiny_loop("open-loop")  # the same seed: the same GPT and F in every condition
    assert torch.equal(reference(x), plain)
    for name, tensor in reference.forward_model.state_dict().items():
        assert torch.equal(closed.forward_model.state_dict()[name], tensor), name


@pytest.mark.parametrize("condition", INJECTING)
def test_a_non_zero_gate_changes_the_output_of_every_injecting_condition(condition):
    # the converse of the step-0 equality: the injection is wired in, so the equality above is not vacuous
    closed = wake(tiny_loop(condition))
    x = ids()
    assert not torch.allclose(closed(x), closed.gpt(x))
    assert torch.equal(closed(x, inject=False), closed.gpt(x))  # without the injection: the GPT, whatever G is


def test_open_loop_never_injects_whatever_the_gate():
    closed = wake(tiny_loop("open-loop"))
    x = ids()
    p = closed.run(x)
    assert p.signal is None and p.injected is None and torch.equal(p.logits, closed.gpt(x))


@pytest.mark.parametrize("condition", INJECTING)
@pytest.mark.parametrize("source, inject", [(0, 1), (1, 1), (-1, 0)])
def test_the_target_is_h_j_of_the_pass_with_the_injection_on(condition, source, inject):
    closed = wake(tiny_loop(condition, source=source, inject=inject, target=2))
    gpt, x = closed.gpt, ids()
    with torch.no_grad():
        p = closed.run(x)
        h_i = gpt.run_blocks(gpt.embed(x), 0, source + 1)
        h_m = gpt.run_blocks(h_i, source + 1, inject + 1)  # with i = m: h_m is h_i, read before the injection
        u, _ = closed.signal(h_i, closed.forward_model(h_i))
        h_j = gpt.run_blocks(h_m + closed.gate(u), inject + 1, 3)
        open_h_j = gpt.run_blocks(gpt.embed(x), 0, 3)
    assert torch.equal(p.source, h_i) and torch.equal(p.target, h_j)
    assert not torch.allclose(p.target, open_h_j)  # the injection is in the target


@pytest.mark.parametrize("condition", CONDITION_NAMES)
def test_no_mse_gradient_reaches_the_network_or_the_gate(condition):
    closed = wake(tiny_loop(condition))
    p = closed.run(ids())
    mse = F.mse_loss(p.prediction, p.target) + (0.0 if p.signal_loss is None else p.signal_loss)
    mse.backward()
    for name, param in [*closed.gpt.named_parameters(), *closed.gate.named_parameters()]:
        assert param.grad is None, name
    assert all(param.grad is not None and param.grad.abs().sum() > 0 for param in closed.forward_model.parameters())
    for param in closed.signal.trainable():  # the autoencoder learns from its own loss
        assert param.grad is not None and param.grad.abs().sum() > 0


@pytest.mark.parametrize("lm_into_forward", [False, True])
def test_the_lm_loss_reaches_f_only_with_the_explicit_option(lm_into_forward):
    closed = wake(tiny_loop("forward", lm_into_forward=lm_into_forward))
    x = ids()
    p = closed.run(x)
    F.cross_entropy(p.logits.flatten(0, 1), torch.roll(x, -1, 1).flatten()).backward()
    reached = [param.grad is not None and param.grad.abs().sum() > 0 for param in closed.forward_model.parameters()]
    assert any(reached) == lm_into_forward
    assert closed.gate.weight.grad.abs().sum() > 0 and closed.gpt.tok_emb.weight.grad is not None


@pytest.mark.parametrize("condition", CONDITION_NAMES)
def test_perturbing_positions_after_t_changes_nothing_at_t(condition):
    closed = wake(tiny_loop(condition, shift=3))
    x, t = ids(), 8
    changed = x.clone()
    changed[:, t + 1 :] = (x[:, t + 1 :] + 1 + torch.arange(SEQ - t - 1)) % VOCAB
    with torch.no_grad():
        a, b = closed.run(x), closed.run(changed)
    torch.testing.assert_close(a.logits[:, : t + 1], b.logits[:, : t + 1], rtol=0, atol=1e-6)
    if a.injected is not None:
        torch.testing.assert_close(a.injected[:, : t + 1], b.injected[:, : t + 1], rtol=0, atol=1e-6)
    assert not torch.allclose(a.logits[:, t + 1 :], b.logits[:, t + 1 :])  # the later positions did change


def test_shifted_gives_position_t_the_prediction_for_t_minus_k_and_zeros_before_k():
    k = 3
    closed = wake(tiny_loop("shifted", shift=k))
    with torch.no_grad():
        p = closed.run(ids())
    assert torch.equal(p.signal[:, :k], torch.zeros_like(p.signal[:, :k]))
    assert torch.equal(p.signal[:, k:], p.prediction[:, :-k])


def test_a_shift_past_the_window_injects_zeros():
    closed = wake(tiny_loop("shifted", shift=SEQ + 5))
    with torch.no_grad():
        p = closed.run(ids())
    assert p.signal.shape == p.prediction.shape and not p.signal.any()


def test_the_controls_are_the_functions_their_entries_name():
    x = torch.randn(2, SEQ, 32)
    projection = tiny_loop("random-projection").signal
    R = projection.projection
    assert not projection.trainable() and torch.equal(projection(x, x)[0], x @ R.T)
    assert abs(float(R.var()) - 1 / 32) < 0.3 / 32  # entries N(0, 1/d)
    frozen = tiny_loop("forward-frozen").signal
    assert not frozen.trainable() and not torch.allclose(frozen(x, x)[0], x)  # not the identity F starts as
    auto = tiny_loop("autoencoder").signal
    assert auto.encode.out_features == 16  # 16 at d <= 64
    assert [p.shape for p in auto.trainable()] == [(16, 32), (16,), (32, 16), (32,)]  # d -> b -> d, no skip path
    u, loss = auto(x, x)
    assert not u.requires_grad and loss.requires_grad  # injected detached, trained on its reconstruction


def test_the_condition_modules_leave_the_global_generator_alone():
    states = []
    for condition in CONDITION_NAMES:
        tiny_loop(condition)
        states.append(torch.get_rng_state())
    assert all(torch.equal(s, states[0]) for s in states)
