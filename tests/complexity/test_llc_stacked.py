"""The stacked-MLP path: same gradients and traces as autograd / vmap, chosen only where it applies."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from selfmodels.complexity.llc import LLCConfig, cross_entropy, estimate_llc
from selfmodels.complexity.losses import cross_entropy_with_logit_gradient
from selfmodels.complexity.sgld import SGLDChains
from selfmodels.complexity.stacked_mlp import StackedMLP, Unsupported
from selfmodels.nets.classifiers import MLPClassifier


class FunctionalMLP(nn.Module):
    """An MLP whose activations are function calls in forward (traced as call_function nodes)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 9), nn.Linear(9, 3)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(x + self.lin(x))


MLPS = {
    "relu": lambda: nn.Sequential(nn.Flatten(), nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 3)),
    "mixed": lambda: nn.Sequential(nn.Flatten(), nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 9, bias=False),
                                   nn.GELU(), nn.Linear(9, 7), nn.Sigmoid(), nn.Dropout(0.3), nn.Linear(7, 3)),
    "two_activations_in_a_row": lambda: nn.Sequential(nn.Flatten(), nn.Linear(6, 12), nn.ReLU(), nn.Tanh(),
                                                      nn.Linear(12, 3)),
    "activation_before_first_linear": lambda: nn.Sequential(nn.Flatten(), nn.ReLU(), nn.Linear(6, 3)),
    "single_linear_then_activation": lambda: nn.Sequential(nn.Flatten(), nn.Linear(6, 3), nn.Tanh()),
    "gelu_tanh_approximation": lambda: nn.Sequential(nn.Flatten(), nn.Linear(6, 12), nn.GELU(approximate="tanh"),
                                                     nn.Linear(12, 3)),
    "paper_mlp_class": lambda: MLPClassifier(6, 12, 3),
}


def _data(n=48):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 2, 3, generator=g, dtype=torch.float64)
    return x, torch.randint(0, 3, (n,), generator=g)


def squared_margin(logits, targets):
    """A loss without a closed-form logit gradient in the library: the stacked path uses autograd."""
    return ((logits - logits.gather(-1, targets.unsqueeze(-1))) ** 2).mean()


@pytest.mark.parametrize("loss_fn", [cross_entropy, squared_margin])
@pytest.mark.parametrize("name", sorted(MLPS))
def test_losses_and_gradients_equal_autograd_per_chain(name, loss_fn):
    torch.manual_seed(1)
    model = MLPS[name]().double().eval()
    x, y = _data()
    x_before = x.clone()
    chains = SGLDChains(model, loss_fn, chains=3, epsilon=1e-3, gamma=10.0, nbeta=5.0, seeds=[0, 1, 2],
                        path="stacked")
    for _ in range(2):  # move the chains apart so that each chain's gradient is its own
        chains.step((x, y))
    losses, grads = chains.stacked.losses_and_grads(chains.params, x, (y,))
    assert torch.equal(x, x_before)  # in-place activations never touch the caller's batch
    for c in range(3):
        copy = MLPS[name]().double().eval()
        copy.load_state_dict(chains.parameters_of_chain(c))
        loss = loss_fn(copy(x), y)
        expected = torch.autograd.grad(loss, list(copy.parameters()))
        assert losses[c].item() == pytest.approx(loss.item(), rel=1e-12)
        for g, e in zip(grads, expected):
            torch.testing.assert_close(g[c], e, rtol=1e-10, atol=1e-13)


def test_closed_form_cross_entropy_gradient_equals_autograd():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(4, 32, 5, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 5, (32,), generator=g)
    losses, grad = cross_entropy_with_logit_gradient(logits.detach(), y)
    expected = torch.stack([torch.nn.functional.cross_entropy(logits[c], y) for c in range(4)])
    torch.testing.assert_close(losses, expected.detach(), rtol=1e-13, atol=0)
    (expected_grad,) = torch.autograd.grad(expected.sum(), logits)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", ["relu", "mixed"])
def test_stacked_and_vmap_give_the_same_traces(name):
    torch.manual_seed(2)
    model = MLPS[name]().double().eval()
    base = dict(epsilon=1e-3, gamma=100.0, chains=3, draws=30, batch_size=16, seed=5)
    stacked = estimate_llc(model, _data(), cross_entropy, LLCConfig(batched="stacked", **base), progress=False)
    vmapped = estimate_llc(model, _data(), cross_entropy, LLCConfig(batched="vmap", **base), progress=False)
    assert stacked.diagnostics["path"] == "stacked" and vmapped.diagnostics["path"] == "vmap"
    torch.testing.assert_close(stacked.loss_traces, vmapped.loss_traces, rtol=1e-10, atol=1e-12)


def test_auto_uses_stacked_for_mlps_and_vmap_otherwise():
    x, y = _data()
    config = LLCConfig(epsilon=1e-3, gamma=100.0, chains=2, draws=4, batch_size=16)
    mlp = estimate_llc(FunctionalMLP().double(), (x.flatten(1), y), cross_entropy, config, progress=False)
    assert mlp.diagnostics["path"] == "stacked" and "fallback_reasons" not in mlp.diagnostics
    residual = estimate_llc(Residual().double(), (x.flatten(1), y), cross_entropy, config, progress=False)
    assert residual.diagnostics["path"] == "vmap"
    assert "stacked" in residual.diagnostics["fallback_reasons"]


def test_asking_for_stacked_on_a_model_it_cannot_run_is_a_user_error():
    from selfmodels.errors import UserError

    x, y = _data()
    config = LLCConfig(epsilon=1e-3, gamma=100.0, chains=2, draws=4, batch_size=16, batched="stacked")
    with pytest.raises(UserError, match="batched=stacked cannot run this model.*does not simply continue"):
        estimate_llc(Residual().double(), (x.flatten(1), y), cross_entropy, config, progress=False)


def _frozen():
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3))
    model[0].weight.requires_grad_(False)
    return model


@pytest.mark.parametrize("build, reason", [
    (lambda: Residual(), "does not simply continue"),
    (lambda: nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4), nn.Linear(4, 3)), "buffers"),
    (lambda: nn.Sequential(nn.Linear(6, 4), nn.Dropout(0.5), nn.Linear(4, 3)).train(), "dropout in train mode"),
    (lambda: nn.Sequential(nn.Linear(6, 4), nn.Softmax(dim=-1), nn.Linear(4, 3)), "unsupported module Softmax"),
    (lambda: nn.Sequential(nn.ReLU()), "no Linear layer"),
    (_frozen, "frozen"),
])
def test_models_it_cannot_express_are_refused_with_a_reason(build, reason):
    model = build()
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    with pytest.raises(Unsupported, match=reason):
        StackedMLP(model, names, cross_entropy)
