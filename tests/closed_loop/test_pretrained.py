"""The closed loop as a fine-tune of a pretrained subject (a tiny random Llama and GPT-2): every invariant of the loop
on our GPT holds there too. At step 0 every condition is the subject's own forward bit for bit (the closed-loop pass
calls the same blocks with the same arguments, then the same final norm and head, and G = 0 adds exact zeros); F's
target is on-policy; no MSE gradient reaches the network or G; causality; with G held at zero the subject and F
fine-tune exactly as open loop."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from closed_loop_hf import FAMILIES, SEQ, VOCAB, hf_ids, hf_loop
from closed_loop_tiny import CONDITION_NAMES, INJECTING, wake
from selfmodels.closed_loop.config import LoopConfig
from selfmodels.closed_loop.task import ClosedLoopTask
from selfmodels.closed_loop.trunk import SubjectTrunk
from selfmodels.errors import UserError
from selfmodels.subjects.config import LMTrainConfig
from selfmodels.subjects.lm_training import WindowDraws
from selfmodels.training import Schedule, train


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("condition", CONDITION_NAMES)
def test_every_condition_at_step_0_is_the_subjects_own_forward_bit_for_bit(family, condition):
    closed = hf_loop(family, condition)
    assert isinstance(closed.trunk, SubjectTrunk) and closed.gpt is closed.subject.model
    x = hf_ids()
    with torch.no_grad():
        own = closed.subject.model(input_ids=x, use_cache=False).logits
        assert torch.equal(closed(x), own) and torch.equal(closed(x, inject=False), own)
    reference = hf_loop(family, "open-loop")  # the same seed: the same F in every condition
    for name, tensor in reference.forward_model.state_dict().items():
        assert torch.equal(closed.forward_model.state_dict()[name], tensor), name


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("condition", INJECTING)
def test_a_non_zero_gate_changes_the_output_and_without_the_injection_the_subject_is_itself(family, condition):
    closed = wake(hf_loop(family, condition))
    x = hf_ids()
    with torch.no_grad():
        own = closed.subject.model(input_ids=x, use_cache=False).logits
        assert not torch.allclose(closed(x), own) and torch.equal(closed(x, inject=False), own)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("source, inject", [(0, 1), (1, 1), (-1, 0)])
def test_the_target_is_h_j_of_the_pass_with_the_injection_on(family, source, inject):
    closed = wake(hf_loop(family, "forward", source=source, inject=inject, target=2))
    subject, x = closed.subject, hf_ids()
    with torch.no_grad():
        p = closed.run(x)
        args = subject.block_arguments(x)
        h_i = subject.run_blocks(subject.residuals(x, [-1])[-1], 0, source + 1, args)
        h_m = subject.run_blocks(h_i, source + 1, inject + 1, args)
        u, _ = closed.signal(h_i, closed.forward_model(h_i))
        h_j = subject.run_blocks(h_m + closed.gate(u), inject + 1, 3, args)
        open_h_j = subject.residuals(x, [2])[2]
    assert torch.equal(p.source, h_i) and torch.equal(p.target, h_j)
    assert not torch.allclose(p.target, open_h_j)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("condition", CONDITION_NAMES)
def test_no_mse_gradient_reaches_the_subject_or_the_gate_and_the_lm_loss_does(family, condition):
    closed = wake(hf_loop(family, condition))
    closed.train()
    x = hf_ids()
    p = closed.run(x)
    mse = F.mse_loss(p.prediction, p.target) + (0.0 if p.signal_loss is None else p.signal_loss)
    mse.backward()
    for name, param in [*closed.network.named_parameters(), *closed.gate.named_parameters()]:
        assert param.grad is None, name
    assert all(param.grad is not None for param in closed.forward_model.parameters())
    closed.zero_grad(set_to_none=True)
    ce = F.cross_entropy(closed.run(x).logits.flatten(0, 1), torch.roll(x, -1, 1).flatten())
    ce.backward()
    embedding = closed.network.get_input_embeddings().weight
    assert embedding.grad is not None and embedding.grad.abs().sum() > 0  # the LM loss fine-tunes the subject
    gate = closed.gate.weight.grad
    assert gate is None if condition == "open-loop" else gate.abs().sum() > 0
    assert all(param.grad is None for param in closed.forward_model.parameters())  # F: its MSE only


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("condition", CONDITION_NAMES)
def test_perturbing_positions_after_t_changes_nothing_at_t(family, condition):
    closed = wake(hf_loop(family, condition, shift=3))
    x, t = hf_ids(), 6
    changed = x.clone()
    changed[:, t + 1 :] = (x[:, t + 1 :] + 1 + torch.arange(SEQ - t - 1)) % VOCAB
    with torch.no_grad():
        a, b = closed.run(x), closed.run(changed)
    torch.testing.assert_close(a.logits[:, : t + 1], b.logits[:, : t + 1], rtol=0, atol=1e-5)
    if a.injected is not None:
        torch.testing.assert_close(a.injected[:, : t + 1], b.injected[:, : t + 1], rtol=0, atol=1e-5)
    assert not torch.allclose(a.logits[:, t + 1 :], b.logits[:, t + 1 :])


def _task(family: str, condition: str) -> ClosedLoopTask:
    closed = hf_loop(family, condition)
    g = torch.Generator().manual_seed(0)
    stream = torch.where(torch.rand(3000, generator=g) < 0.2, torch.randint(0, VOCAB, (3000,), generator=g),
                         torch.arange(3000) % VOCAB)
    draws = WindowDraws(stream, SEQ, 4, [torch.Generator().manual_seed(0)])
    x = hf_ids(4, seed=5)
    lm = LMTrainConfig(steps=3, batch_size=4, lr=3e-3, eval_every=3)
    return ClosedLoopTask(closed, lm, LoopConfig(condition=condition, source=0, inject=1, target=2, shift=3), draws,
                          (x, torch.roll(x, -1, 1)))


def _weights(task: ClosedLoopTask) -> dict[str, torch.Tensor]:
    return {f"{part}.{k}": v.clone() for part in ("network", "forward_model")
            for k, v in getattr(task.closed, part).state_dict().items()}


@pytest.mark.parametrize("family", FAMILIES)
def test_with_the_gate_held_at_zero_the_subject_and_f_fine_tune_exactly_as_open_loop(family):
    reference = _task(family, "open-loop")
    before = _weights(reference)
    train(reference, Schedule(3), progress=False)
    expected = _weights(reference)
    assert any(not torch.equal(v, before[k]) for k, v in expected.items() if k.startswith("network"))  # fine-tuned
    held = _task(family, "forward")
    del held.optimizers["gate"]  # G is never stepped: it stays exactly zero
    train(held, Schedule(3), progress=False)
    assert not held.closed.gate.weight.any()
    assert all(torch.equal(_weights(held)[k], v) for k, v in expected.items())
    free = _task(family, "forward")  # the converse: a gate that learns moves the fine-tune away from open loop
    train(free, Schedule(3), progress=False)
    assert free.closed.gate.weight.any() and not all(torch.equal(_weights(free)[k], v) for k, v in expected.items())


@pytest.mark.parametrize("source, inject, target, words", [
    (0, 1, 3, "j (target) = 3 is out of range"),  # the subject has 3 blocks: indices -1 .. 2
    (1, 0, 2, "do not satisfy i <= m < j"),
])
def test_indices_are_checked_against_the_subjects_blocks(source, inject, target, words):
    with pytest.raises(UserError, match=re.escape(words)):
        hf_loop("llama", "forward", source=source, inject=inject, target=target)
