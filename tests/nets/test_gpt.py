"""Our GPT: the paper's toy size, and its explicit attention path against the fused one."""

import torch

from selfmodels.nets.gpt import GPT, GPTConfig

CFG = GPTConfig(vocab_size=50, block_size=12, n_layer=2, n_head=2, d_model=16)


def _gpt(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    gpt = GPT(CFG)
    with torch.no_grad():  # non-trivial LayerNorm gains and biases
        for p in gpt.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return gpt.eval()


def test_paper_toy_size():
    assert GPT(GPTConfig(vocab_size=50257)).num_params() == 28_923_904  # the paper's "28.9M"


def test_attention_path_matches_the_normal_path():
    gpt = _gpt()
    idx = torch.randint(0, CFG.vocab_size, (3, CFG.block_size))
    with torch.no_grad():
        logits = gpt(idx)
        logits_a, patterns = gpt(idx, return_attention=True)
        h = gpt.embed(idx)
        h_a, pats = gpt.run_blocks(h, 0, 2, return_attention=True)
        _, loss = gpt(idx, idx)
        _, loss_a, _ = gpt(idx, idx, return_attention=True)
    torch.testing.assert_close(logits_a, logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h_a, gpt.run_blocks(h, 0, 2), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss_a, loss)
    assert len(patterns) == len(pats) == CFG.n_layer
    for a in patterns:
        assert a.shape == (3, CFG.n_head, CFG.block_size, CFG.block_size)
        torch.testing.assert_close(a.sum(-1), torch.ones(3, CFG.n_head, CFG.block_size))
        assert (a.triu(1) == 0).all() and (a >= 0).all()  # causal: no weight on later keys
        assert (a[..., 0, 0] == 1).all()  # the first query sees only itself
