"""The self-modeling wrapper: target capture, detaching, pruning, errors."""

import pytest
import torch
from torch import nn

from selfmodels.errors import UserError
from selfmodels.nets.classifiers import BagOfEmbeddings, MLPClassifier
from selfmodels.selfmodeling.objectives import self_modeling_loss
from selfmodels.selfmodeling.targets import capture_outputs
from selfmodels.selfmodeling.wrapper import SelfModeling, SplitHead


def _mlp(seed=0, hidden=5):
    torch.manual_seed(seed)
    return MLPClassifier(16, hidden, 3)


def test_classifier_only_reproduces_the_full_models_logits():
    x = torch.randn(7, 1, 4, 4)
    wrapped = SelfModeling(_mlp(), ["hidden_act"], x[:2])
    pruned = wrapped.classifier_only()
    assert isinstance(pruned.head, nn.Linear) and pruned.head.out_features == 3
    out = wrapped(x)
    assert out.logits.shape == (7, 3) and out.prediction.shape == (7, 5)
    torch.testing.assert_close(pruned(x), out.logits, rtol=0, atol=0)
    # The pruned head is exactly the classification rows of the extended head.
    assert torch.equal(pruned.head.weight, wrapped.head.weight[:3])


def test_extra_rows_leave_the_classifier_and_global_rng_untouched():
    x = torch.randn(4, 1, 4, 4)
    plain = _mlp(seed=3)
    state_before = torch.get_rng_state()
    reference = {k: v.clone() for k, v in plain.state_dict().items()}
    wrapped = SelfModeling(plain, ["hidden_act"], x[:2], seed=11)
    assert torch.equal(torch.get_rng_state(), state_before)
    assert torch.equal(wrapped.head.classify.weight, reference["head.weight"])
    bound = 1 / 5**0.5  # nn.Linear's default init for fan_in 5
    assert wrapped.head.predict.weight.abs().max() <= bound


def test_several_targets_are_flattened_and_concatenated_in_order():
    torch.manual_seed(0)
    model = BagOfEmbeddings(vocab_size=20, embed_dim=6, hidden=4, num_classes=2)
    tokens = torch.randint(0, 20, (5, 7))
    wrapped = SelfModeling(model, ["hidden_act", "embed"], tokens[:2])
    out = wrapped(tokens)
    assert out.prediction.shape == (5, 10) and out.target.shape == (5, 10)
    with torch.no_grad():
        e = torch.stack([model.embed.weight[t[t != 0]].mean(0) if (t != 0).any() else torch.zeros(6) for t in tokens])
        h = model.hidden_act(model.hidden(e))  # e: each text's mean embedding, padding (id 0) left out
    torch.testing.assert_close(out.target, torch.cat([h, e], dim=1))
    # Only hidden_act is the head's own input: its block is the square one.
    assert wrapped.identity_rows == {"hidden_act": (0, 4)}
    assert wrapped.identity_blocks()["hidden_act"].shape == (4, 4)


def test_the_target_is_detached_by_default():
    """With zero self-model rows the prediction is constant, so with a detached target the aux loss
    sends no gradient to the hidden layer; without detaching it does (d mean(h^2) / d theta)."""
    x = torch.randn(8, 1, 4, 4)
    grads = {}
    for detach in (True, False):
        wrapped = SelfModeling(_mlp(), ["hidden_act"], x[:2], detach=detach)
        with torch.no_grad():
            wrapped.head.predict.weight.zero_()
            wrapped.head.predict.bias.zero_()
        out = wrapped(x)
        assert out.target.requires_grad is (not detach)
        torch.nn.functional.mse_loss(out.prediction, out.target).backward()
        grads[detach] = wrapped.model.hidden.weight.grad
    assert grads[True] is None or torch.count_nonzero(grads[True]) == 0
    assert torch.count_nonzero(grads[False]) > 0


def test_detached_and_non_detached_training_differ():
    x, y = torch.randn(16, 1, 4, 4), torch.randint(0, 3, (16,))
    weights = []
    for detach in (True, False):
        wrapped = SelfModeling(_mlp(), ["hidden_act"], x[:2], detach=detach)
        opt = torch.optim.SGD(wrapped.parameters(), lr=0.1)
        for _ in range(3):
            opt.zero_grad()
            self_modeling_loss(wrapped(x), y, 5.0).total.backward()
            opt.step()
        weights.append(wrapped.model.hidden.weight.detach().clone())
    assert not torch.allclose(weights[0], weights[1])


def test_gradient_reaches_the_hidden_layer_through_the_prediction():
    x = torch.randn(8, 1, 4, 4)
    wrapped = SelfModeling(_mlp(), ["hidden_act"], x[:2])
    out = wrapped(x)
    torch.nn.functional.mse_loss(out.prediction, out.target).backward()
    assert torch.count_nonzero(wrapped.model.hidden.weight.grad) > 0


def test_unknown_target_lists_the_available_modules():
    with pytest.raises(UserError, match="unknown target module.*'nope'.*hidden_act"):
        SelfModeling(_mlp(), ["nope"], torch.randn(2, 1, 4, 4))
    with pytest.raises(UserError, match="no module 'fc'"):
        SelfModeling(_mlp(), ["hidden_act"], torch.randn(2, 1, 4, 4), head="fc")
    with pytest.raises(UserError, match="is a ReLU"):
        SelfModeling(_mlp(), ["hidden"], torch.randn(2, 1, 4, 4), head="hidden_act")


def test_hooks_are_removed_also_when_the_forward_fails():
    model = _mlp()
    with pytest.raises(RuntimeError):
        with capture_outputs(model, ["hidden_act"], detach=True):
            model(torch.randn(2, 3))  # wrong input size
    assert not model.hidden_act._forward_hooks
    wrapped = SelfModeling(model, ["hidden_act"], torch.randn(2, 1, 4, 4))
    wrapped(torch.randn(3, 1, 4, 4))
    assert not model.hidden_act._forward_hooks and not model.head.classify._forward_pre_hooks


def test_probe_changes_no_batchnorm_statistics_and_keeps_the_mode():
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("body", nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU()))
    model.add_module("head", nn.Linear(6, 2))
    model.train()
    before = model.body[1].running_mean.clone()
    SelfModeling(model, ["body"], torch.randn(3, 4))
    assert torch.equal(model.body[1].running_mean, before) and model.training


def test_split_head_is_one_linear_with_stacked_rows():
    classify = nn.Linear(4, 2)
    head = SplitHead(classify, 3, torch.Generator().manual_seed(0))
    x = torch.randn(5, 4)
    full = x @ head.weight.T + torch.cat([classify.bias, head.predict.bias])
    torch.testing.assert_close(head(x), full)
