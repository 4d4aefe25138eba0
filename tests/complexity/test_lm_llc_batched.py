"""The LM LLC's chains batched through attention (lm_llc explicit_attention; GPT explicit_attention).

Batched and one-chain-at-a-time sampling compute the same function of the same weights, batches and
noise, so their loss traces may differ only by float rounding, which SGLD carries along but does not
amplify over a few draws near a minimum: 1e-5 relative is about 100 float32 roundings of a loss near 2.
"""

from __future__ import annotations

import pytest
import torch

from selfmodels.complexity.llc import LLCConfig
from selfmodels.complexity.lm_llc import lm_llc, next_token_cross_entropy
from selfmodels.errors import UserError
from selfmodels.nets.gpt import GPT, GPTConfig


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one intra-op thread (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tiny_gpt_and_windows(seed: int = 0):
    """A 2-block GPT over 10 tokens, trained briefly on a noisy cyclic sequence, and 64 windows of 9 tokens."""
    torch.manual_seed(seed)
    gpt = GPT(GPTConfig(vocab_size=10, block_size=8, n_layer=2, n_head=2, d_model=16))
    g = torch.Generator().manual_seed(seed)
    ids = (torch.randint(0, 10, (64, 1), generator=g) + torch.arange(9)) % 10  # (64, 9): x[t+1] = x[t] + 1
    ids = torch.where(torch.rand(ids.shape, generator=g) < 0.1, torch.randint(0, 10, ids.shape, generator=g), ids)
    opt = torch.optim.Adam(gpt.parameters(), lr=3e-2)
    for _ in range(40):
        opt.zero_grad()
        next_token_cross_entropy(gpt(ids[:, :-1]), ids[:, 1:]).backward()
        opt.step()
    return gpt, ids


def test_explicit_attention_equals_the_fused_kernel_and_is_off_by_default():
    gpt, ids = _tiny_gpt_and_windows()
    x = ids[:, :-1]
    with torch.no_grad():
        fused = gpt(x)
        torch.testing.assert_close(gpt(x, explicit_attention=True), fused, rtol=1e-5, atol=1e-5)  # logits of size ~10
        assert torch.equal(gpt(x, explicit_attention=False), fused)
        # the attention-weights path computes the same explicit attention
        torch.testing.assert_close(gpt(x, return_attention=True)[0], fused, rtol=1e-5, atol=1e-5)  # logits of size ~10


@pytest.mark.parametrize("path", ["stacked", "vmap"])
@pytest.mark.parametrize("explicit_attention", [True, False])
def test_batched_chains_trace_the_sequential_chains(explicit_attention, path):
    """Same seeds and noise: the stacked and vmap paths' traces equal chain-by-chain sampling's within 1e-5
    relative (``auto`` picks stacked for our GPT)."""
    gpt, ids = _tiny_gpt_and_windows()
    config = LLCConfig(epsilon=1e-4, gamma=100.0, chains=3, draws=20, batch_size=16, seed=0, chain_groups=1,
                       batched="auto" if path == "stacked" else path)
    batched = lm_llc(gpt, ids, config, explicit_attention=explicit_attention)
    sequential = lm_llc(gpt, ids, LLCConfig(**{**config.__dict__, "batched": "sequential"}),
                        explicit_attention=explicit_attention)
    assert (batched.diagnostics["path"], sequential.diagnostics["path"]) == (path, "sequential")
    assert torch.isfinite(batched.loss_traces).all()
    torch.testing.assert_close(batched.loss_traces, sequential.loss_traces, rtol=1e-5, atol=0.0)
    assert batched.init_loss == pytest.approx(sequential.init_loss, rel=1e-6)


def test_explicit_and_fused_attention_give_the_same_traces():
    gpt, ids = _tiny_gpt_and_windows()
    config = LLCConfig(epsilon=1e-4, gamma=100.0, chains=2, draws=10, batch_size=16, seed=0, chain_groups=1)
    explicit = lm_llc(gpt, ids, config, explicit_attention=True)
    fused = lm_llc(gpt, ids, config)
    torch.testing.assert_close(explicit.loss_traces, fused.loss_traces, rtol=1e-5, atol=0.0)


def test_explicit_attention_is_refused_for_other_models_and_with_logits_fn():
    gpt, ids = _tiny_gpt_and_windows()
    config = LLCConfig(chains=1, draws=2, batch_size=16)
    with pytest.raises(UserError, match="needs selfmodels' GPT"):
        lm_llc(torch.nn.Sequential(gpt), ids, config, explicit_attention=True)
    with pytest.raises(UserError, match="not both"):
        lm_llc(gpt, ids, config, explicit_attention=True, logits_fn=lambda m, x: m(x))
