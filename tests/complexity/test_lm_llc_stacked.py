"""The stacked GPT path (complexity.stacked_gpt): autograd's gradients, the sequential path's traces, and the
models it passes over."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.func import functional_call

from selfmodels.complexity.llc import LLCConfig
from selfmodels.complexity.lm_llc import LogitsOf, gpt_logits_explicit_attention, lm_llc, next_token_cross_entropy
from selfmodels.complexity.sgld import SGLDChains
from selfmodels.complexity.stacked_gpt import StackedGPT
from selfmodels.complexity.stacked_mlp import Unsupported
from selfmodels.errors import UserError
from selfmodels.nets.gpt import GPT, GPTConfig


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one intra-op thread (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _gpt(dtype=torch.float32, seed=0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, d_model=8)).to(dtype)


def _chains_around(model: nn.Module, chains: int, spread: float, seed: int = 1) -> tuple[list[str], list[torch.Tensor]]:
    """Names and (C, *shape) parameters: chain c is w* plus its own Gaussian perturbation (so the chains differ)."""
    g = torch.Generator().manual_seed(seed)
    names, params = [], []
    for name, p in model.named_parameters():
        names.append(name)
        noise = torch.randn(chains, *p.shape, generator=g, dtype=torch.float64).to(p.dtype)
        params.append(p.detach().unsqueeze(0) + spread * noise)
    return names, params


def _squared_logits_plus_cross_entropy(logits, targets):
    """A loss without the closed-form logit gradient: the stacked path takes it through autograd."""
    return (logits ** 2).mean() + next_token_cross_entropy(logits, targets)


@pytest.mark.parametrize("loss_fn", [next_token_cross_entropy, _squared_logits_plus_cross_entropy])
@pytest.mark.parametrize("explicit_attention", [False, True])
def test_stacked_gradients_equal_autograd_chain_by_chain(explicit_attention, loss_fn):
    """Every chain's loss and gradient equal autograd through GPT.forward on that chain's weights (float64),
    with T shorter than the context; ``into + scale * gradient`` lands in the given buffers."""
    gpt = _gpt(torch.float64)
    model = LogitsOf(gpt, gpt_logits_explicit_attention if explicit_attention else None)
    names, params = _chains_around(model, chains=3, spread=0.3)
    g = torch.Generator().manual_seed(2)
    x, y = torch.randint(0, 11, (4, 7), generator=g), torch.randint(0, 11, (4, 7), generator=g)
    stacked = StackedGPT(model, names, loss_fn)
    assert stacked.explicit_attention is explicit_attention
    base = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]
    into = [b.clone() for b in base]
    losses, _ = stacked.losses_and_grads(params, x, (y,), into=into, scale=-0.5)
    for c in range(3):
        leaves = [p[c].clone().requires_grad_(True) for p in params]
        loss = loss_fn(functional_call(model, dict(zip(names, leaves)), (x,)), y)
        grads = torch.autograd.grad(loss, leaves)
        assert float(losses[c]) == pytest.approx(float(loss.detach()), rel=1e-12)
        for name, grad, got, start in zip(names, grads, into, base):
            torch.testing.assert_close(got[c], start[c] - 0.5 * grad, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("rows_per_pass", [1, 14, 30])
def test_windows_in_passes_give_the_one_pass_losses_and_gradients(rows_per_pass):
    """The mean cross-entropy in passes of at most rows_per_pass chain tokens (2 chains x 7 tokens: 1, 1 and
    2 windows per pass, the last pass of 5 windows smaller) equals one pass over the batch (float64)."""
    gpt = _gpt(torch.float64)
    names, params = _chains_around(gpt, chains=2, spread=0.2)
    g = torch.Generator().manual_seed(4)
    x, y = torch.randint(0, 11, (5, 7), generator=g), torch.randint(0, 11, (5, 7), generator=g)
    one_pass = StackedGPT(gpt, names, next_token_cross_entropy, rows_per_pass=10_000).losses_and_grads(params, x, (y,))
    passes = StackedGPT(gpt, names, next_token_cross_entropy, rows_per_pass=rows_per_pass).losses_and_grads(params, x, (y,))
    torch.testing.assert_close(passes[0], one_pass[0], rtol=1e-12, atol=0.0)
    for got, expected in zip(passes[1], one_pass[1]):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-13)


def test_the_bare_gpt_is_stacked_too():
    gpt = _gpt(torch.float64)
    names, params = _chains_around(gpt, chains=2, spread=0.1)
    x = torch.randint(0, 11, (3, 8), generator=torch.Generator().manual_seed(0))
    losses, grads = StackedGPT(gpt, names, next_token_cross_entropy).losses_and_grads(params, x, (x,))
    leaves = [p[1].clone().requires_grad_(True) for p in params]
    loss = next_token_cross_entropy(functional_call(gpt, dict(zip(names, leaves)), (x,)), x)
    assert float(losses[1]) == pytest.approx(float(loss.detach()), rel=1e-12)
    for grad, got in zip(torch.autograd.grad(loss, leaves), grads):
        torch.testing.assert_close(got[1], grad, rtol=1e-10, atol=1e-12)


def test_without_noise_or_localization_a_stacked_step_is_gradient_descent():
    """noise_scale = 0, γ = 0: each step is w <- w - (ε nβ / 2) ∇L, torch.optim.SGD with lr = ε nβ / 2."""
    gpt = _gpt(torch.float64)
    x = torch.randint(0, 11, (4, 8), generator=torch.Generator().manual_seed(3))
    epsilon, nbeta = 0.01, 20.0
    reference = copy.deepcopy(gpt)
    opt = torch.optim.SGD(reference.parameters(), lr=epsilon * nbeta / 2)
    for _ in range(3):
        opt.zero_grad()
        next_token_cross_entropy(reference(x), x).backward()
        opt.step()
    chains = SGLDChains(LogitsOf(gpt), next_token_cross_entropy, chains=2, epsilon=epsilon, gamma=0.0, nbeta=nbeta,
                        seeds=[0, 1], path="stacked", noise_scale=0.0)
    assert isinstance(chains.stacked, StackedGPT)
    for _ in range(3):
        chains.step((x, x))
    expected = dict(reference.named_parameters())
    for c in range(2):
        for name, value in chains.parameters_of_chain(c).items():
            torch.testing.assert_close(value, expected[name.removeprefix("model.")].detach(), rtol=1e-12, atol=1e-12)


def _trained_gpt_and_windows():
    gpt = _gpt()
    g = torch.Generator().manual_seed(0)
    ids = (torch.randint(0, 11, (48, 1), generator=g) + torch.arange(9)) % 11        # (48, 9): x[t+1] = x[t] + 1
    opt = torch.optim.Adam(gpt.parameters(), lr=3e-2)
    for _ in range(30):
        opt.zero_grad()
        next_token_cross_entropy(gpt(ids[:, :-1]), ids[:, 1:]).backward()
        opt.step()
    return gpt, ids


def test_chain_groups_in_threads_trace_the_sequential_chains():
    """Three chains in two groups (two threads, one sharing the stacked GPT): the one-chain-at-a-time traces."""
    gpt, ids = _trained_gpt_and_windows()
    torch.set_num_threads(2)
    config = LLCConfig(epsilon=1e-4, gamma=100.0, chains=3, draws=8, batch_size=16, seed=0, chain_groups=2)
    grouped = lm_llc(gpt, ids, config)
    sequential = lm_llc(gpt, ids, LLCConfig(**{**config.__dict__, "batched": "sequential", "chain_groups": 1}))
    assert grouped.diagnostics["path"] == "stacked" and grouped.diagnostics["chain_groups"] == 2
    torch.testing.assert_close(grouped.loss_traces, sequential.loss_traces, rtol=1e-5, atol=0.0)


class _ShiftedGPT(GPT):
    """A GPT subclass with its own forward: not what the stacked path computes."""

    def forward(self, idx, *args, **kwargs):
        return super().forward(idx) + 1.0


@pytest.mark.parametrize("case, reason", [
    ("frozen", "not exactly the GPT's"),
    ("subclass", "is not selfmodels' GPT"),
    ("logits_fn", "logits_fn"),
    ("rmsprop_sgld", "plain SGLD only"),
])
def test_models_the_stacked_path_cannot_run_fall_back_to_vmap(case, reason):
    gpt, ids = _trained_gpt_and_windows()
    config = LLCConfig(epsilon=1e-4, gamma=100.0, chains=2, draws=3, batch_size=16, seed=0, chain_groups=1)
    kwargs = {}
    if case == "frozen":
        gpt.pos_emb.weight.requires_grad_(False)
    elif case == "subclass":
        shifted = _ShiftedGPT(gpt.cfg)
        shifted.load_state_dict(gpt.state_dict())
        gpt = shifted
    elif case == "logits_fn":
        kwargs["logits_fn"] = lambda model, x: model(x)
    else:
        config = LLCConfig(**{**config.__dict__, "sampler": "rmsprop_sgld"})
    result = lm_llc(gpt, ids, config, **kwargs)
    assert result.diagnostics["path"] == "vmap"
    assert reason in result.diagnostics["fallback_reasons"]["stacked"]
    sequential = lm_llc(gpt, ids, LLCConfig(**{**config.__dict__, "batched": "sequential"}), **kwargs)
    torch.testing.assert_close(result.loss_traces, sequential.loss_traces, rtol=1e-5, atol=0.0)


def test_stacked_asked_for_on_a_model_it_cannot_run_is_a_user_error():
    gpt, ids = _trained_gpt_and_windows()
    with pytest.raises(UserError, match="batched=stacked cannot run this model"):
        lm_llc(gpt, ids, LLCConfig(chains=1, draws=2, batch_size=16, batched="stacked"), logits_fn=lambda m, x: m(x))


def test_stacked_gpt_refuses_ids_longer_than_the_context():
    gpt = _gpt()
    names, params = _chains_around(gpt, chains=1, spread=0.0)
    with pytest.raises(Unsupported, match="T <= 8"):
        StackedGPT(gpt, names, next_token_cross_entropy).losses_and_grads(params, torch.zeros(2, 9, dtype=torch.long),
                                                                           (torch.zeros(2, 9, dtype=torch.long),))
