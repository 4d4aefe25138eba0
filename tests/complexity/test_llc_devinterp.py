"""Cross-check with devinterp 1.3.2 (the dev extra: ``pip install devinterp==1.3.2``), an independent
implementation of the same estimator: same MLP, same data order (a non-shuffling loader, replayed in a
cycle), same ε, γ, nβ, chains, draws and L(w*) (mean over the first 4 batches). The noise streams
differ, so the means must agree within their combined chain standard deviation."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from selfmodels.complexity.llc import LLCConfig, cross_entropy, estimate_llc


def _devinterp_estimate():
    try:
        from devinterp.optim.sgld import SGLD
        from devinterp.slt.sampler import estimate_learning_coeff_with_summary
    except ImportError:
        pytest.fail("devinterp is not installed: install the dev extra (pip install -e '.[dev]', which pins "
                    "devinterp==1.3.2) to run this cross-check")
    return SGLD, estimate_learning_coeff_with_summary


def test_means_agree_with_devinterp():
    SGLD, devinterp_llc = _devinterp_estimate()
    torch.manual_seed(0)
    x = torch.randn(512, 10)
    y = (x[:, :3].sum(dim=1) > 0).long()
    model = nn.Sequential(nn.Linear(10, 24), nn.ReLU(), nn.Linear(24, 2))
    for _ in range(300):  # full-batch training close to a minimum
        loss = cross_entropy(model(x), y)
        grads = torch.autograd.grad(loss, list(model.parameters()))
        with torch.no_grad():
            for p, g in zip(model.parameters(), grads):
                p -= 0.5 * g
    loader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=False)
    # devinterp's L(w*) is the mean over its first num_chains batches: use all 8 batches in both.
    epsilon, gamma, chains, draws = 1e-3, 100.0, 8, 200
    nbeta = 64 / math.log(64)

    ours = estimate_llc(model, loader, cross_entropy,
                        LLCConfig(epsilon=epsilon, gamma=gamma, chains=chains, draws=draws, burn_in=0, seed=0,
                                  init_loss_batches=8),
                        progress=False)

    def evaluate(m, batch):
        inputs, targets = batch
        return nn.functional.cross_entropy(m(inputs), targets), {}

    with warnings.catch_warnings(), torch.random.fork_rng():
        warnings.simplefilter("ignore")  # devinterp warns about deprecations and draws > batches
        theirs = devinterp_llc(model, loader, evaluate=evaluate, sampling_method=SGLD,
                               optimizer_kwargs=dict(lr=epsilon, localization=gamma, nbeta=nbeta),
                               num_chains=chains, num_draws=draws, num_burnin_steps=0, seed=0, verbose=False)
    assert ours.nbeta == pytest.approx(nbeta)
    # devinterp keeps every draw (num_burnin_steps=0); so does ours with burn_in=0.
    assert ours.flags == []
    combined = math.sqrt(ours.std ** 2 + theirs["llc/std"] ** 2)
    assert abs(ours.mean - theirs["llc/mean"]) <= combined, (ours.mean, theirs["llc/mean"], combined)
    # and the estimate is not trivially small: both see a clearly positive LLC
    assert ours.mean > 3 * ours.std and theirs["llc/mean"] > 3 * theirs["llc/std"]
