"""Loss values on hand-computed cases, and AW 0 = plain training."""

import math

import pytest
import torch

from selfmodels.errors import UserError
from selfmodels.nets.classifiers import MLPClassifier
from selfmodels.selfmodeling.objectives import build_objective
from selfmodels.selfmodeling.train import OptimConfig, train_objective


def _hand_model():
    """x = [1, -2] -> hidden identity -> h = relu(x) = [1, 0] -> logits = h = [1, 0]."""
    model = MLPClassifier(2, 2, 2)
    with torch.no_grad():
        model.hidden.weight.copy_(torch.eye(2))
        model.hidden.bias.zero_()
        model.head.weight.copy_(torch.eye(2))
        model.head.bias.zero_()
    return model


X = torch.tensor([[1.0, -2.0]])
Y = torch.tensor([0])
CE = math.log(1 + math.exp(-1))  # -log softmax([1, 0])[0]


def test_self_model_loss_on_a_hand_computed_case():
    obj = build_objective("self-model", _hand_model(), 3.0, targets=["hidden_act"], example_input=X)
    with torch.no_grad():
        obj.wrapper.head.predict.weight.copy_(2 * torch.eye(2))
        obj.wrapper.head.predict.bias.copy_(torch.tensor([0.0, 1.0]))
    # prediction = 2 h + [0, 1] = [2, 1]; target h = [1, 0]; mse = ((2-1)^2 + (1-0)^2) / 2 = 1
    terms = obj.loss(X, Y)
    assert terms.ce.item() == pytest.approx(CE, abs=1e-6)
    assert terms.aux.item() == pytest.approx(1.0, abs=1e-6)
    assert terms.total.item() == pytest.approx(CE + 3.0, abs=1e-6)


def test_activation_l2_loss_on_a_hand_computed_case():
    obj = build_objective("activation-l2", _hand_model(), 4.0, targets=["hidden_act"], example_input=X)
    terms = obj.loss(X, Y)  # mean(h^2) = (1 + 0) / 2
    assert terms.aux.item() == pytest.approx(0.5)
    assert terms.total.item() == pytest.approx(CE + 2.0, abs=1e-6)


def test_weight_decay_loss_on_a_hand_computed_case():
    obj = build_objective("weight-decay", _hand_model(), 0.5, targets=[], example_input=X)
    terms = obj.loss(X, Y)  # 1/2 * ||theta||^2 = 1/2 * (2 + 2) (two identity matrices, zero biases)
    assert terms.aux.item() == pytest.approx(2.0)
    assert terms.total.item() == pytest.approx(CE + 1.0, abs=1e-6)
    # Its gradient is exactly what SGD's weight_decay would add: w * theta.
    obj.model.zero_grad()
    (0.5 * terms.aux).backward()
    assert torch.equal(obj.model.hidden.weight.grad, 0.5 * obj.model.hidden.weight.detach())


def test_self_modeling_with_weight_zero_equals_plain_training(tiny_data, tmp_path):
    weights = {}
    for method in ("baseline", "self-model"):
        torch.manual_seed(5)
        model = MLPClassifier(16, 6, 3)
        obj = build_objective(method, model, 0.0, targets=["hidden_act"], example_input=tiny_data.train.tensors[0][:2], seed=5)
        config = OptimConfig(epochs=3, batch_size=32)
        history = train_objective(obj, tiny_data.train, tiny_data.val, tiny_data.test, config, tmp_path / method, seed=5, progress=False)
        weights[method] = {k: v.clone() for k, v in obj.classifier().state_dict().items()}
        weights[method + "_acc"] = [h["test_accuracy"] for h in history]
    assert weights["baseline"].keys() == weights["self-model"].keys()
    for key in weights["baseline"]:
        assert torch.equal(weights["baseline"][key], weights["self-model"][key]), key
    assert weights["baseline_acc"] == weights["self-model_acc"]


def test_bad_method_and_strength_are_user_errors():
    with pytest.raises(UserError, match="unknown method 'magic'"):
        build_objective("magic", _hand_model(), 1.0, targets=["hidden_act"], example_input=X)
    with pytest.raises(UserError, match="non-negative"):
        build_objective("self-model", _hand_model(), -1.0, targets=["hidden_act"], example_input=X)
    with pytest.raises(UserError, match="non-negative"):
        build_objective("activation-l2", _hand_model(), float("nan"), targets=["hidden_act"], example_input=X)
