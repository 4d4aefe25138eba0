"""Forward model shape, parameter counts (the reference table), identity start, baseline size."""

import pytest
import torch

from selfmodels.errors import UserError
from selfmodels.forward.baseline import PerPositionMLP
from selfmodels.forward.model import ForwardModel, ForwardModelConfig


@pytest.mark.parametrize(
    "cfg, expected",
    [
        (ForwardModelConfig(d_model=256), 329_920),
        (ForwardModelConfig(d_model=512), 1_183_936),
        (ForwardModelConfig(d_model=2048), 17_318_080),
        (ForwardModelConfig(d_model=2048, d_head=128, mlp="swiglu", swiglu_hidden=4096), 26_225_024),
        # The capacity sweep's 3% configuration (2 layers, 2 heads): the paper's "791K".
        (ForwardModelConfig(d_model=256, n_layer=2, n_head=2), 791_296),
    ],
)
def test_parameter_counts_match_reference_table(cfg, expected):
    assert ForwardModel(cfg).num_params() == expected


def test_baseline_mlp_size():
    assert PerPositionMLP(256).num_params() == 262_912  # the paper's "~263K"


def test_fresh_models_are_exactly_the_identity():
    torch.manual_seed(0)
    x = torch.randn(2, 7, 32)
    for model in (ForwardModel(ForwardModelConfig(d_model=32, n_layer=2, n_head=2, d_head=8)), PerPositionMLP(32)):
        assert torch.equal(model(x), x)


def test_attention_patterns_are_causal_and_match_fast_path():
    torch.manual_seed(0)
    model = ForwardModel(ForwardModelConfig(d_model=16, n_head=2, d_head=4))
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(3, 6, 16)
    y, patterns = model(x, return_attention=True)
    assert patterns[0].shape == (3, 2, 6, 6)
    assert torch.allclose(patterns[0].sum(-1), torch.ones(3, 2, 6))
    assert torch.all(patterns[0].triu(1) == 0)
    assert torch.allclose(y, model(x), atol=1e-5)
    # Causality: changing the last position leaves earlier predictions unchanged.
    x2 = x.clone()
    x2[:, -1] += 1.0
    assert torch.allclose(model(x2)[:, :-1], y[:, :-1], atol=1e-6)


def test_width_mismatch_is_a_user_error():
    with pytest.raises(UserError, match="width"):
        ForwardModel(ForwardModelConfig(d_model=16))(torch.randn(1, 2, 8))


def test_interrupted_training_resumes_without_repeating_its_curve(tmp_path):
    """A crash between checkpoints leaves curve lines past the checkpoint: the resumed run drops and rewrites
    them, so every step has exactly one line."""
    from selfmodels.artifacts import read_jsonl
    from selfmodels.forward.train import ForwardTrainConfig, train_forward

    cfg = ForwardTrainConfig(steps=6, batch_size=2, log_every=1, checkpoint_every=4)

    def batches(crash_at=None):
        g = torch.Generator().manual_seed(0)
        for i in range(100):
            if i == crash_at:
                raise KeyboardInterrupt
            x = torch.randn(2, 3, 8, generator=g)
            yield x, 2 * x

    model = ForwardModel(ForwardModelConfig(d_model=8, n_head=2, d_head=4))
    with pytest.raises(KeyboardInterrupt):  # dies during step 6: checkpoint at 4, curve lines 1..5
        train_forward(model, batches(crash_at=5), cfg, torch.device("cpu"), tmp_path, progress=False)
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4, 5]
    train_forward(model, batches(), cfg, torch.device("cpu"), tmp_path, progress=False)
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]
