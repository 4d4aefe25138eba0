"""The battery's pass keeps every residual and is ClosedLoop.run's pass bit for bit; perturbations go where asked."""

from __future__ import annotations

import pytest
import torch

from closed_loop_tiny import CONDITION_NAMES, ids, tiny_loop, wake
from selfmodels.closed_loop.residuals import collect, loop_pass
from selfmodels.errors import UserError


@pytest.mark.parametrize("condition", CONDITION_NAMES)
@pytest.mark.parametrize("source,inject", [(0, 1), (1, 1), (-1, 0)])
@pytest.mark.parametrize("on", [True, False])
def test_the_pass_equals_closed_loop_run_bit_for_bit(condition, source, inject, on):
    closed = wake(tiny_loop(condition, source=source, inject=inject))
    x = ids()
    with torch.no_grad():
        reference = closed.run(x, inject=on)
        ours = loop_pass(closed, x, inject=on)
    assert torch.equal(ours.logits, reference.logits)
    read = ours.before_injection if source == inject else ours.residuals[source]  # i = m: F reads h_m before G(u)
    assert torch.equal(read, reference.source)
    assert torch.equal(ours.residuals[closed.target], reference.target)
    assert torch.equal(ours.prediction, reference.prediction)
    assert (ours.injected is None) == (reference.injected is None)
    if reference.injected is not None:
        assert torch.equal(ours.injected, reference.injected)
        assert torch.equal(ours.residuals[inject], ours.before_injection + ours.injected)
    else:
        assert torch.equal(ours.residuals[inject], ours.before_injection)
    assert sorted(ours.residuals) == list(range(-1, closed.gpt.cfg.n_layer))
    # every residual is the GPT's own block applied to the previous one (after the injection at m)
    with torch.no_grad():
        assert torch.equal(ours.residuals[-1], closed.gpt.embed(x))
        for k in range(closed.gpt.cfg.n_layer):
            previous = ours.residuals[k - 1]
            assert torch.equal(ours.residuals[k] if k != inject else ours.before_injection,
                               closed.gpt.run_blocks(previous, k, k + 1))


def test_a_perturbation_at_the_injection_leaves_f_and_everything_before_alone():
    closed = wake(tiny_loop("forward"))
    x = ids()
    with torch.no_grad():
        clean = loop_pass(closed, x)
        delta = torch.randn_like(clean.residuals[1])
        hit = loop_pass(closed, x, delta=delta, at="inject")
        early = loop_pass(closed, x, delta=delta, at="source")
    assert torch.equal(hit.prediction, clean.prediction) and torch.equal(hit.injected, clean.injected)
    assert torch.equal(hit.residuals[0], clean.residuals[0])
    assert torch.equal(hit.residuals[1], clean.residuals[1] + delta)
    assert torch.equal(early.residuals[0], clean.residuals[0] + delta)  # at i = 0: F reads the perturbed residual
    assert not torch.equal(early.prediction, clean.prediction) and not torch.equal(early.injected, clean.injected)


def test_collect_is_the_pass_over_batches_and_an_unknown_site_is_refused():
    closed = wake(tiny_loop("shifted"))
    x = ids(batch=5)
    got = collect(closed, x, True, batch_size=2)
    with torch.no_grad():
        whole = loop_pass(closed, x)
    for k, value in whole.residuals.items():
        torch.testing.assert_close(got.residuals[k], value, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.injected, whole.injected, rtol=1e-5, atol=1e-6)
    only = collect(closed, x, False, batch_size=5, indices=(0, 2))
    assert sorted(only.residuals) == [0, 2] and only.injected is None
    with pytest.raises(UserError, match="inject, source"):
        loop_pass(closed, x, delta=torch.zeros(5, 16, 32), at="middle")
