"""The vmap and sequential paths, the automatic fallback, train-mode BatchNorm, determinism (stacked: test_llc_stacked.py)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from selfmodels.complexity.llc import LLCConfig, cross_entropy, estimate_llc


def _trained_mlp(dtype=torch.float64):
    torch.manual_seed(0)
    x = torch.randn(96, 6, dtype=dtype)
    y = (x[:, 0] + x[:, 1] > 0).long()
    model = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 2)).to(dtype)
    for _ in range(200):  # a few full-batch gradient steps: near (not at) a minimum is enough here
        loss = cross_entropy(model(x), y)
        grads = torch.autograd.grad(loss, list(model.parameters()))
        with torch.no_grad():
            for p, g in zip(model.parameters(), grads):
                p -= 0.5 * g
    return model, TensorDataset(x, y)


def _config(**overrides):
    base = dict(epsilon=1e-3, gamma=100.0, chains=3, draws=40, batch_size=32, seed=7)
    return LLCConfig(**{**base, **overrides})


def test_vmap_and_sequential_give_the_same_numbers():
    model, data = _trained_mlp()
    a = estimate_llc(model, data, cross_entropy, _config(batched="vmap"), progress=False)
    b = estimate_llc(model, data, cross_entropy, _config(batched="sequential"), progress=False)
    assert a.diagnostics["path"] == "vmap" and b.diagnostics["path"] == "sequential"
    torch.testing.assert_close(a.loss_traces, b.loss_traces, rtol=1e-10, atol=1e-12)
    assert a.init_loss == b.init_loss
    assert a.mean == b.mean or abs(a.mean - b.mean) < 1e-8


def test_same_seed_same_result_and_other_seed_differs():
    model, data = _trained_mlp()
    a = estimate_llc(model, data, cross_entropy, _config(), progress=False)
    b = estimate_llc(model, data, cross_entropy, _config(), progress=False)
    c = estimate_llc(model, data, cross_entropy, _config(seed=8), progress=False)
    assert torch.equal(a.loss_traces, b.loss_traces)
    assert not torch.equal(a.loss_traces, c.loss_traces)
    # chains are seeded seed..seed+chains-1: chain 1 of seed 7 is chain 0 of seed 8 (same data order aside)
    assert a.loss_traces.shape == (3, 40)


def test_model_is_left_untouched():
    model, data = _trained_mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    estimate_llc(model, data, cross_entropy, _config(), progress=False)
    assert model.training  # mode restored (sampling ran on a copy)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


class NotVmappable(nn.Module):
    """A forward that reads a tensor's value in Python (``.item()``): vmap refuses it."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 2).double()

    def forward(self, x):
        scale = 1.0 if self.lin.weight.sum().item() > -1e9 else 2.0
        return self.lin(x) * scale


def test_auto_falls_back_to_sequential_when_vmap_fails():
    _, data = _trained_mlp()
    torch.manual_seed(1)
    model = NotVmappable()
    auto = estimate_llc(model, data, cross_entropy, _config(), progress=False)
    seq = estimate_llc(model, data, cross_entropy, _config(batched="sequential"), progress=False)
    assert auto.diagnostics["path"] == "sequential"
    assert set(auto.diagnostics["fallback_reasons"]) == {"stacked", "vmap"}
    torch.testing.assert_close(auto.loss_traces, seq.loss_traces, rtol=1e-12, atol=0)


def test_batchnorm_eval_mode_is_vmapped_and_train_mode_runs_sequentially():
    torch.manual_seed(0)
    x = torch.randn(64, 4, dtype=torch.float64)
    y = (x[:, 0] > 0).long()
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2)).double()
    model.train()
    model(x)  # give BatchNorm non-trivial running statistics
    stats = model[1].running_mean.clone()
    eval_run = estimate_llc(model, (x, y), cross_entropy, _config(batch_size=16), progress=False)
    train_run = estimate_llc(model, (x, y), cross_entropy, _config(batch_size=16, model_mode="train"), progress=False)
    assert eval_run.diagnostics["path"] == "vmap"
    assert train_run.diagnostics["path"] == "sequential"
    assert torch.isfinite(train_run.loss_traces).all()
    assert torch.equal(model[1].running_mean, stats)  # the user's BatchNorm statistics are not touched
    # eval mode (running statistics) and train mode (batch statistics) are different functions of w
    assert not torch.allclose(eval_run.loss_traces, train_run.loss_traces)


def test_dataloader_batches_are_replayed_in_order():
    model, data = _trained_mlp()
    loader = DataLoader(data, batch_size=32, shuffle=False)
    from_loader = estimate_llc(model, loader, cross_entropy, _config(), progress=False)
    from_tensors = estimate_llc(model, data, cross_entropy, _config(shuffle=False), progress=False)
    torch.testing.assert_close(from_loader.loss_traces, from_tensors.loss_traces, rtol=0, atol=0)
    assert from_loader.nbeta == from_tensors.nbeta  # b / ln b with b = 32 either way


def test_steps_between_draws_and_burn_in():
    model, data = _trained_mlp()
    every = estimate_llc(model, data, cross_entropy, _config(draws=12, steps_between_draws=1), progress=False)
    thinned = estimate_llc(model, data, cross_entropy, _config(draws=4, steps_between_draws=3, burn_in=1), progress=False)
    # draw d is the loss at step (d + 1) k - 1: the thinned trace is every third draw of the full one
    torch.testing.assert_close(thinned.loss_traces, every.loss_traces[:, 2::3], rtol=0, atol=0)
    assert thinned.diagnostics["kept_draws"] == 3
    assert every.diagnostics["kept_draws"] == 6  # default burn-in: the first half


def test_chain_groups_in_parallel_threads_give_the_same_numbers():
    model, data = _trained_mlp()
    threads = torch.get_num_threads()
    runs = {groups: estimate_llc(model, data, cross_entropy, _config(chain_groups=groups), progress=False)
            for groups in (1, 2, 3)}
    assert torch.get_num_threads() == threads  # the intra-op thread count is restored
    assert [r.diagnostics["chain_groups"] for r in runs.values()] == [1, 2, 3]
    for groups in (2, 3):
        torch.testing.assert_close(runs[groups].loss_traces, runs[1].loss_traces, rtol=1e-12, atol=0)
    # sequential (train-mode-capable) path in groups too
    seq = estimate_llc(model, data, cross_entropy, _config(chain_groups=3, batched="sequential"), progress=False)
    torch.testing.assert_close(seq.loss_traces, runs[1].loss_traces, rtol=1e-10, atol=1e-12)
