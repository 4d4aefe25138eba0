"""Training loop: determinism, exact resume, checkpoints; run directories."""

import json

import pytest
import torch

from selfmodels.errors import UserError
from selfmodels.nets.classifiers import MLPClassifier
from selfmodels.selfmodeling.objectives import build_objective
from selfmodels.selfmodeling.runs import load_trained_classifier, resolve_run, run_one
from selfmodels.selfmodeling.train import CHECKPOINT, OptimConfig, train_objective


def _train(data, run_dir, *, optimizer="sgd", stop_after=None, epochs=4, method="self-model"):
    torch.manual_seed(1)
    model = MLPClassifier(16, 6, 3)
    obj = build_objective(method, model, 2.0, targets=["hidden_act"], example_input=data.train.tensors[0][:2], seed=1)
    config = OptimConfig(optimizer=optimizer, lr=0.01 if optimizer == "adam" else 0.05, epochs=epochs, batch_size=20)
    history = train_objective(obj, data.train, data.val, data.test, config, run_dir, seed=1, progress=False, stop_after=stop_after)
    return obj, history


def _strip(history):
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_resume_gives_the_same_result_as_an_uninterrupted_run(tiny_data, tmp_path, optimizer):
    full, full_history = _train(tiny_data, tmp_path / "full", optimizer=optimizer)
    _train(tiny_data, tmp_path / "cut", optimizer=optimizer, stop_after=2)  # "interrupted" after 2 epochs
    with open(tmp_path / "cut" / "metrics.jsonl", "a") as f:  # a line from a crashed, unfinished epoch
        f.write(json.dumps({"epoch": 3, "train_loss": 123.0}) + "\n")
    resumed, resumed_history = _train(tiny_data, tmp_path / "cut", optimizer=optimizer)
    assert _strip(resumed_history) == _strip(full_history)
    for key, value in full.module.state_dict().items():
        assert torch.equal(resumed.module.state_dict()[key], value), key
    lines = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3, 4]


def test_training_is_deterministic_and_records_every_measure(tiny_data, tmp_path):
    _, a = _train(tiny_data, tmp_path / "a", epochs=2)
    _, b = _train(tiny_data, tmp_path / "b", epochs=2)
    assert _strip(a) == _strip(b)
    assert set(a[0]) >= {"epoch", "train_loss", "train_ce", "train_aux", "val_accuracy", "test_accuracy", "weight_sd", "identity_distance"}
    assert a[0]["identity_distance"] is not None  # hidden_act feeds the head: the block is square
    assert a[-1]["train_loss"] == pytest.approx(a[-1]["train_ce"] + 2.0 * a[-1]["train_aux"], rel=1e-6)


def test_a_corrupt_checkpoint_is_a_user_error_and_is_kept(tiny_data, tmp_path):
    _train(tiny_data, tmp_path, stop_after=1)
    (tmp_path / CHECKPOINT).write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="corrupt"):
        _train(tiny_data, tmp_path)
    assert (tmp_path / CHECKPOINT).read_bytes() == b"not a safetensors file"  # nothing deleted behind the user's back


def test_a_checkpoint_of_another_model_is_a_user_error(tiny_data, tmp_path):
    _train(tiny_data, tmp_path, stop_after=1, method="self-model")
    with pytest.raises(UserError, match="does not match"):
        _train(tiny_data, tmp_path, method="baseline")


def test_run_one_finishes_skips_and_loads_the_pruned_classifier(tiny_data, tmp_path, file_states):
    config = resolve_run("mnist", hidden=6, method="self-model", strength=1.0, seed=0, epochs=2, batch_size=32)
    record = run_one(config, tiny_data, tmp_path / "run", progress=False)
    assert record["method"] == "self-model" and record["epochs"] == 2 and 0 <= record["test_accuracy"] <= 1
    assert not (tmp_path / "run" / CHECKPOINT).exists()
    # Finished: run again -> the stored record, no training (not one file of the run is written).
    before = file_states(tmp_path / "run")
    assert run_one(config, tiny_data, tmp_path / "run", progress=False) == record
    assert file_states(tmp_path / "run") == before
    # load_trained_classifier rebuilds the pruned model (on the fixture's data, handed to it).
    model, data, stored = load_trained_classifier(tmp_path / "run", data=tiny_data)
    assert stored["method"] == "self-model" and data is tiny_data
    assert model.head.out_features == 3
    x = tiny_data.test.tensors[0]
    accuracy = (model(x).argmax(1) == tiny_data.test.tensors[1]).float().mean().item()
    assert accuracy == pytest.approx(record["test_accuracy"])


def test_a_run_directory_holding_another_run_is_refused(tiny_data, tmp_path):
    config = resolve_run("mnist", hidden=6, method="baseline", seed=0, epochs=1, batch_size=32)
    run_one(config, tiny_data, tmp_path / "run", progress=False)
    other = resolve_run("mnist", hidden=6, method="baseline", seed=0, epochs=2, batch_size=32)
    before = (tmp_path / "run" / "result.json").read_text()
    with pytest.raises(UserError, match="already holds a different run.*optim"):
        run_one(other, tiny_data, tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "result.json").read_text() == before


def test_load_trained_classifier_of_an_unfinished_run_is_a_user_error(tiny_data, tmp_path):
    config = resolve_run("mnist", hidden=6, method="baseline", seed=0, epochs=3, batch_size=32)
    assert run_one(config, tiny_data, tmp_path / "run", progress=False, stop_after=1) is None
    with pytest.raises(UserError, match="no trained classifier"):
        load_trained_classifier(tmp_path / "run")


@pytest.mark.parametrize("method", ["self-model", "weight-decay"])
def test_sparse_embedding_gradients_give_the_dense_sgd_steps(tiny_text, tmp_path, method):
    """Plain SGD trains the bag of embeddings with sparse table gradients; the weights match dense-gradient
    training (the same step, rows summed in another order), and the tables are dense again afterwards."""
    from selfmodels.nets.classifiers import BagOfEmbeddings
    from selfmodels.selfmodeling.train import sparse_gradients_fit

    config = OptimConfig(optimizer="sgd", lr=0.1, momentum=0.0, nesterov=False, epochs=3, batch_size=16)
    assert sparse_gradients_fit(config) and not sparse_gradients_fit(OptimConfig())  # OptimConfig(): momentum 0.9
    weights, kinds = {}, {None: set(), False: set()}
    for sparse in (None, False):  # None: sparse where the update is the same (here); False: dense
        torch.manual_seed(0)
        model = BagOfEmbeddings(30, 8, 6, 2)
        obj = build_objective(method, model, 0.5, targets=["hidden_act"], example_input=tiny_text.train.tensors[0][:2])
        train_objective(obj, tiny_text.train, tiny_text.val, tiny_text.test, config, tmp_path / str(sparse), seed=0,
                        progress=False, sparse_embeddings=sparse,
                        after_step=lambda n, s=sparse: kinds[s].add(model.embed.weight.grad.is_sparse))
        assert model.embed.sparse is False  # dense again afterwards
        weights[sparse] = {k: v.clone() for k, v in obj.module.state_dict().items()}
    with pytest.raises(UserError, match="plain SGD"):
        train_objective(obj, tiny_text.train, tiny_text.val, tiny_text.test, OptimConfig(epochs=1), tmp_path / "m",
                        seed=0, progress=False, sparse_embeddings=True)
    # The table's gradient was sparse (for weight decay the penalty's dense gradient is added to it), then dense.
    assert kinds == {None: {method == "self-model"}, False: {False}}
    for name, value in weights[None].items():
        torch.testing.assert_close(value, weights[False][name], rtol=1e-5, atol=1e-6)
    assert not torch.equal(weights[None]["embed.weight" if method != "self-model" else "model.embed.weight"],
                           BagOfEmbeddings(30, 8, 6, 2).embed.weight)  # it trained
