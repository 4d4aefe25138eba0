"""Training the subject GPT: exact resume, and co-training that leaves the GPT untouched by the forward loss."""

import torch

from selfmodels.artifacts import read_jsonl
from selfmodels.forward.model import ForwardModel, ForwardModelConfig
from selfmodels.nets.gpt import GPT, GPTConfig
from selfmodels.subjects.gpt import GPTSubject
from selfmodels.subjects.lm_training import CoTrain, LMTrainConfig, train_lm

TINY = GPTConfig(vocab_size=48, block_size=12, n_layer=3, n_head=2, d_model=16)


def _tokens(n=3000, seed=0):
    # A learnable stream: a noisy repeating pattern.
    g = torch.Generator().manual_seed(seed)
    base = torch.arange(n) % 17
    return torch.where(torch.rand(n, generator=g) < 0.1, torch.randint(0, 48, (n,), generator=g), base)


def test_resume_continues_exactly(tmp_path):
    tokens = _tokens()
    cfg = LMTrainConfig(steps=12, batch_size=4, eval_every=6, eval_batches=1)
    torch.manual_seed(0)
    straight = GPT(TINY)
    train_lm(straight, tokens[:2500], tokens[2500:], cfg, tmp_path / "a", torch.device("cpu"), seed=3, progress=False)
    torch.manual_seed(0)
    first = GPT(TINY)
    half = LMTrainConfig(steps=6, batch_size=4, eval_every=6, eval_batches=1)
    train_lm(first, tokens[:2500], tokens[2500:], half, tmp_path / "b", torch.device("cpu"), seed=3, progress=False)
    torch.manual_seed(123)  # a fresh process would start from other weights: the checkpoint must win
    resumed = GPT(TINY)
    train_lm(resumed, tokens[:2500], tokens[2500:], cfg, tmp_path / "b", torch.device("cpu"), seed=3, progress=False)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    steps = [r["step"] for r in read_jsonl(tmp_path / "b" / "metrics.jsonl")]
    assert steps == sorted(set(steps))  # no duplicated curve after the resume


def test_cotraining_leaves_the_main_model_untouched_by_the_forward_loss(tmp_path):
    tokens = _tokens()
    cfg = LMTrainConfig(steps=8, batch_size=4, eval_every=8, eval_batches=1)
    torch.manual_seed(0)
    alone = GPT(TINY)
    train_lm(alone, tokens[:2500], tokens[2500:], cfg, tmp_path / "a", torch.device("cpu"), seed=1, progress=False)
    torch.manual_seed(0)
    together = GPT(TINY)
    fwd = ForwardModel(ForwardModelConfig(d_model=16, d_head=8))
    before = [p.clone() for p in fwd.parameters()]
    train_lm(together, tokens[:2500], tokens[2500:], cfg, tmp_path / "b", torch.device("cpu"), seed=1, cotrain=CoTrain(fwd, 0, 1), progress=False)
    # Bit-identical main model: the forward loss contributed no gradient and no step to it.
    for a, b in zip(alone.parameters(), together.parameters()):
        assert torch.equal(a, b)
    assert any(not torch.equal(p, q) for p, q in zip(before, fwd.parameters()))  # the forward model did learn
    assert (tmp_path / "b" / "forward.safetensors").is_file()


def test_detached_forward_loss_puts_no_gradient_in_the_main_model():
    gpt = GPT(TINY)
    fwd = ForwardModel(ForwardModelConfig(d_model=16, d_head=8))
    acts = GPTSubject(gpt).residuals(torch.randint(0, 48, (2, 12)), [0, 1])  # with gradients on
    assert acts[1].requires_grad
    loss = torch.nn.functional.mse_loss(fwd(acts[0].detach()), acts[1].detach())
    loss.backward()
    assert all(p.grad is None for p in gpt.parameters())
    assert any(p.grad is not None for p in fwd.parameters())
