"""The LLC of language models (selfmodels.complexity.lm_llc) and the RMSprop-SGLD option.

Known answer: a unigram model over V tokens, parameterised by V logits that ignore the input, is
regular in the V - 1 directions that change softmax(z) and flat along z + c·1, so λ = (V - 1) / 2.
With w* the exact maximum-likelihood logits (log of the target tokens' frequencies f) and no
localization (γ = 0: the flat direction does not change the loss), the tempered posterior
exp(-nβ L(z)) of the probabilities π = softmax(z) is exactly Dirichlet(nβ f) (the flat measure on
logits is ∏ π_k⁻¹ on the simplex), so at finite nβ::

    E[nβ (L(π) - L(f))] = nβ Σ_k f_k (log f_k - ψ(nβ f_k) + ψ(nβ))   ->  (V - 1) / 2  as nβ -> ∞

Tolerance reasoning (as in test_llc_analytic.py): the estimate is a mean over chains with standard
error SE = std / sqrt(chains); it must lie between the finite-nβ value minus 3 SE + 2% and that value
plus the SGLD step-size bias Σ_i ½ (1 / (1 - ε a_i / 4) - 1) (a_i = nβ h_i the curvatures of nβ L at
w*; exact for a quadratic loss) plus 3 SE + 2% (RMSprop-SGLD: + 10%, see its test), and within 10% of
(V - 1) / 2. At these settings (256 tokens, nβ = 46) 3 SE is about 9% of the truth, the finite-nβ shift
3% and the step-size bias 1.5%: a wrong noise scale or a missing 1/2 in the drift would fail, and so
would nβ counted in windows instead of tokens (8x smaller, nβ = 9.2, where the exact value is 3.45).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from selfmodels.complexity.calibrate import calibrate_lm
from selfmodels.complexity.llc import LLCConfig
from selfmodels.complexity.lm_llc import lm_llc, next_token_cross_entropy
from selfmodels.complexity.sgld import SGLDChains
from selfmodels.errors import UserError
from selfmodels.nets.gpt import GPT, GPTConfig

KNOWN_FLAGS = ("not_at_minimum", "not_converged", "no_valid_chains", "nonfinite_chain_", "diverged_chain_")


class Unigram(nn.Module):
    """Logits (B, T, V) that ignore the input: one learned logit per token."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = nn.Parameter(logits.clone())

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(*ids.shape, -1)


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: one intra-op thread avoids thread synchronisation that costs more than the
    work (many times more on a busy 2-core machine). Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _unigram_at_mle(vocab: int = 7, windows: int = 64, tokens: int = 16, seed: int = 0):
    """Windows of i.i.d. tokens from a fixed non-uniform distribution, and the unigram model at the exact
    maximum-likelihood logits of their targets (w* = log f)."""
    probs = torch.linspace(2.0, 1.0, vocab, dtype=torch.float64)
    probs /= probs.sum()
    g = torch.Generator().manual_seed(seed)
    ids = torch.multinomial(probs, windows * (tokens + 1), replacement=True, generator=g).view(windows, tokens + 1)
    f = torch.bincount(ids[:, 1:].flatten(), minlength=vocab).double()
    f /= f.sum()
    return Unigram(f.log()).double(), ids, f


def _expected_unigram_llc(f: torch.Tensor, nbeta: float, epsilon: float) -> float:
    """Finite-nβ Dirichlet value (module docstring) plus plain SGLD's step-size bias on the quadratic part."""
    psi = torch.special.digamma
    finite = float(nbeta * (f * (f.log() - psi(nbeta * f) + psi(torch.tensor(nbeta, dtype=torch.float64)))).sum())
    curvatures = torch.linalg.eigvalsh(torch.diag(f) - torch.outer(f, f))[1:] * nbeta  # drop the flat direction
    step_bias = float((0.5 / (1 - epsilon * curvatures / 4) - 0.5).sum())
    return finite + step_bias


@pytest.mark.parametrize("sampler, epsilon, upward_allowance", [("sgld", 1e-2, 0.02), ("rmsprop_sgld", 1.5e-3, 0.10)])
def test_unigram_llc_is_v_minus_1_over_2(sampler, epsilon, upward_allowance):
    """RMSprop-SGLD gets a larger upward allowance: without the Γ correction term its chain samples about
    exp(-nβ L) / G rather than exp(-nβ L), and G = 1 / (sqrt(V) + eps) is smaller where the gradient is
    large, i.e. far from w*, so it overweights high loss. Over 6 seeds at these settings it measured
    3.32 ± 0.05 (α = 0.99; 3.24 ± 0.06 at α = 0.999) against 3.10-3.17; plain SGLD 3.16 ± 0.05."""
    vocab, windows, tokens = 7, 32, 8
    model, ids, f = _unigram_at_mle(vocab, windows=windows, tokens=tokens)
    model = model.float()
    # One batch of all windows: every step sees the whole data, so L_batch = L_n and w* is its exact minimum.
    config = LLCConfig(epsilon=epsilon, gamma=0.0, chains=32, draws=400, burn_in=100, batch_size=windows,
                       init_loss_batches=1, seed=0, sampler=sampler)
    result = lm_llc(model, ids, config)
    n = windows * tokens
    assert result.nbeta == pytest.approx(n / math.log(n))  # n counts predicted tokens
    assert result.diagnostics["nbeta_counts"] == "tokens" and result.diagnostics["nbeta_n"] == n
    assert result.flags == [], result.flags
    se = result.std / math.sqrt(config.chains)
    truth = (vocab - 1) / 2
    # RMSprop-SGLD's effective step is ε G per parameter, G <= 1 / rmsprop_eps: its step-size bias is taken at
    # that largest step.
    largest_step = epsilon if sampler == "sgld" else epsilon / config.rmsprop_eps
    lower = _expected_unigram_llc(f, result.nbeta, 0.0)
    upper = _expected_unigram_llc(f, result.nbeta, largest_step)
    assert lower - 3 * se - 0.02 * truth <= result.mean <= upper + 3 * se + upward_allowance * truth, \
        (result.mean, se, lower, upper)
    assert abs(result.mean - truth) <= 0.1 * truth, (result.mean, truth)
    assert result.config["sampler"] == sampler and result.config["nbeta"] is None


def test_rmsprop_sgld_without_noise_or_localization_is_rmsprop():
    """noise_scale = 0, γ = 0: each step is torch.optim.RMSprop with lr = ε nβ / 2 (vmap and sequential)."""
    model, ids, _ = _unigram_at_mle(5, windows=8, tokens=4)
    with torch.no_grad():
        model.logits.add_(torch.tensor([0.3, -0.2, 0.1, 0.0, -0.4], dtype=torch.float64))  # away from w*
    x, y = ids[:, :-1], ids[:, 1:]
    epsilon, nbeta, alpha, eps = 0.01, 30.0, 0.9, 0.05
    reference = copy.deepcopy(model)
    opt = torch.optim.RMSprop(reference.parameters(), lr=epsilon * nbeta / 2, alpha=alpha, eps=eps)
    for _ in range(4):
        opt.zero_grad()
        next_token_cross_entropy(reference(x), y).backward()
        opt.step()
    for path in ("vmap", "sequential"):
        chains = SGLDChains(model, next_token_cross_entropy, chains=2, epsilon=epsilon, gamma=0.0, nbeta=nbeta,
                            seeds=[0, 1], path=path, noise_scale=0.0, sampler="rmsprop_sgld", rmsprop_alpha=alpha,
                            rmsprop_eps=eps)
        for _ in range(4):
            chains.step((x, y))
        for c in range(2):
            torch.testing.assert_close(chains.parameters_of_chain(c)["logits"], reference.logits.detach(),
                                       rtol=1e-12, atol=1e-12)


def test_rmsprop_sgld_is_refused_on_the_stacked_path():
    with pytest.raises(UserError, match="stacked"):
        LLCConfig(sampler="rmsprop_sgld", batched="stacked").validate()
    with pytest.raises(UserError, match="sampler"):
        LLCConfig(sampler="adam").validate()
    with pytest.raises(UserError, match="rmsprop_alpha"):
        LLCConfig(rmsprop_alpha=1.0).validate()


def _tiny_trained_gpt(seed: int = 0):
    """A 1-block GPT over 12 tokens, trained briefly on a noisy cyclic sequence (so it sits near a minimum)."""
    torch.manual_seed(seed)
    gpt = GPT(GPTConfig(vocab_size=12, block_size=8, n_layer=1, n_head=2, d_model=16))
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(0, 12, (96, 1), generator=g)
    ids = (start + torch.arange(9)) % 12                                            # (96, 9): x[t+1] = x[t] + 1
    flip = torch.rand(ids.shape, generator=g) < 0.1
    ids = torch.where(flip, torch.randint(0, 12, ids.shape, generator=g), ids)
    opt = torch.optim.Adam(gpt.parameters(), lr=3e-2)
    for _ in range(60):
        opt.zero_grad()
        next_token_cross_entropy(gpt(ids[:, :-1]), ids[:, 1:]).backward()
        opt.step()
    return gpt, ids


def test_tiny_gpt_end_to_end_batched_equals_sequential():
    gpt, ids = _tiny_trained_gpt()
    before = {k: v.clone() for k, v in gpt.state_dict().items()}
    config = LLCConfig(epsilon=1e-4, gamma=100.0, chains=2, draws=12, batch_size=16, seed=0, chain_groups=1)
    batched = lm_llc(gpt, ids, config)
    vmapped = lm_llc(gpt, ids, LLCConfig(**{**config.__dict__, "batched": "vmap"}))
    sequential = lm_llc(gpt, ids, LLCConfig(**{**config.__dict__, "batched": "sequential"}))
    assert batched.diagnostics["path"] == "stacked"  # our GPT's chains run stacked (complexity.stacked_gpt)
    assert vmapped.diagnostics["path"] == "vmap"
    torch.testing.assert_close(batched.loss_traces, sequential.loss_traces, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(vmapped.loss_traces, sequential.loss_traces, rtol=1e-4, atol=1e-5)
    assert torch.isfinite(batched.loss_traces).all() and math.isfinite(batched.init_loss)
    assert batched.nbeta == pytest.approx(16 * 8 / math.log(16 * 8))
    assert all(flag.startswith(KNOWN_FLAGS) for flag in batched.flags), batched.flags
    assert math.isfinite(batched.diagnostics["raw_mean"])
    assert all(torch.equal(before[k], v) for k, v in gpt.state_dict().items())  # the model is not modified
    summary = batched.summary()
    assert summary["llc_config"]["nbeta_counts"] == "tokens"


def test_hugging_face_style_output_and_logits_fn():
    """An output object with .logits is read; logits_fn overrides how logits are taken."""

    class WithLogits(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = Unigram(torch.zeros(5))

        def forward(self, ids):
            return type("Output", (), {"logits": self.inner(ids)})()

    ids = torch.randint(0, 5, (8, 5), generator=torch.Generator().manual_seed(0))
    config = LLCConfig(epsilon=1e-3, gamma=10.0, chains=2, draws=4, batch_size=8)
    via_output = lm_llc(WithLogits(), ids, config)
    via_fn = lm_llc(WithLogits(), ids, config, logits_fn=lambda m, x: m.inner(x))
    torch.testing.assert_close(via_output.loss_traces, via_fn.loss_traces)


@pytest.mark.parametrize("windows, message", [
    (torch.zeros(4, 1, dtype=torch.long), "T\\+1 >= 2"),
    (torch.zeros(4, dtype=torch.long), "\\(N, T\\+1\\)"),
    (torch.zeros(0, 5, dtype=torch.long), "empty"),
    (torch.full((2, 5), 7, dtype=torch.long), "outside the model's vocabulary of 7"),
    (torch.full((2, 5), -1, dtype=torch.long), "negative token id"),
    (torch.zeros(2, 5), "integer token ids"),
])
def test_bad_windows_are_refused(windows, message):
    with pytest.raises(UserError, match=message):
        lm_llc(Unigram(torch.zeros(7)), windows, LLCConfig(chains=1, draws=2))


def test_windows_longer_than_the_context_are_refused():
    gpt = GPT(GPTConfig(vocab_size=12, block_size=8, n_layer=1, n_head=2, d_model=16))
    with pytest.raises(UserError, match="longer than the GPT's context"):
        lm_llc(gpt, torch.zeros(2, 10, dtype=torch.long), LLCConfig(chains=1, draws=2))


def test_lm_calibration_grid_over_step_size_and_localization(tmp_path):
    model, ids, _ = _unigram_at_mle(5, windows=16, tokens=4)
    base = LLCConfig(chains=2, draws=20, batch_size=8, sampler="rmsprop_sgld")
    cells = calibrate_lm(model.float(), ids, base, epsilons=[1e-3, 3e-3], gammas=[0.0, 10.0], nbetas=[None, 5.0],
                         out_dir=tmp_path, progress=False)
    assert [(c["epsilon"], c["gamma"], c["nbeta_requested"]) for c in cells] == \
        [(e, g, b) for e in (1e-3, 3e-3) for g in (0.0, 10.0) for b in (None, 5.0)]
    tokens = 8 * 4  # one batch of 8 windows of 4 predicted tokens
    assert [c["llc_nbeta"] for c in cells] == pytest.approx([tokens / math.log(tokens), 5.0] * 4)
    assert all(c["config"]["sampler"] == "rmsprop_sgld" for c in cells)
    for name in ("calibration.md", "calibration.png", "calibration.json", "traces.safetensors"):
        assert (tmp_path / name).exists()
    again = calibrate_lm(model.float(), ids, base, epsilons=[1e-3, 3e-3], gammas=[0.0, 10.0], nbetas=[None, 5.0],
                         out_dir=tmp_path, progress=False)
    assert again == cells  # resumed from calibration.jsonl: no cell re-run (llc_seconds would differ)
