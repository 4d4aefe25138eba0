"""Causal substitution: exactness with the true layers, identity on a zero-gap pair, shared prefix."""

import pytest
import torch

from selfmodels.forward.categories import TokenCategories
from selfmodels.forward.metrics import RegressionTotals
from selfmodels.forward.model import ForwardModel, ForwardModelConfig
from selfmodels.forward.substitution import substitution_eval
from selfmodels.nets.gpt import GPT, GPTConfig
from selfmodels.subjects.gpt import GPTSubject

CFG = GPTConfig(vocab_size=40, block_size=10, n_layer=3, n_head=2, d_model=16)


def _model(seed=0):
    torch.manual_seed(seed)
    gpt = GPT(CFG).eval()
    for p in gpt.parameters():  # larger weights so that layers matter
        p.data.mul_(10.0)
    return gpt


def _batches(n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, 40, (3, 10), generator=g), torch.randint(0, 40, (3, 10), generator=g)) for _ in range(n)]


def test_true_target_activations_reproduce_the_normal_logits_exactly():
    gpt = _model()
    split = GPTSubject(gpt).split(0, 1)
    x, y = _batches(1)[0]
    with torch.no_grad():
        assert torch.equal(split.suffix(split.middle(split.prefix(x))), gpt(x))
    result = substitution_eval(split, split.middle, _batches())
    assert result["kl_substituted"] == 0.0
    assert result["accuracy_substituted"] == result["accuracy_normal"]
    assert result["ce_substituted"] == result["ce_normal"]
    assert result["kl_skipped"] > 0.01
    assert result["recovery"] == 1.0


def test_identity_forward_model_on_a_zero_gap_pair():
    gpt = _model()
    block = gpt.blocks[1]  # make block 1 contribute nothing: post_block1 == post_block0
    for linear in (block.attn.proj, block.fc_proj):
        torch.nn.init.zeros_(linear.weight)
        torch.nn.init.zeros_(linear.bias)
    split = GPTSubject(gpt).split(0, 1)
    fwd = ForwardModel(ForwardModelConfig(d_model=16, d_head=8)).eval()  # starts as the identity
    totals = RegressionTotals()
    with torch.no_grad():
        for x, _ in _batches():
            src = split.prefix(x)
            totals.add(fwd(src), src, split.middle(src))
    assert totals.result()["cosine"] == pytest.approx(1.0, abs=1e-6)
    assert totals.result()["mse"] == 0.0
    result = substitution_eval(split, fwd, _batches())
    assert result["kl_substituted"] == 0.0 and result["kl_skipped"] == 0.0
    assert result["recovery"] == 1.0


def test_shared_prefix_gives_the_same_numbers_as_naive_passes():
    gpt = _model(1)
    split = GPTSubject(gpt).split(0, 2)
    shared = substitution_eval(split, lambda s: 0.5 * s, _batches())
    naive = substitution_eval(split, lambda s: 0.5 * s, _batches(), shared_prefix=False)
    assert shared == naive
    assert 0 < shared["kl_substituted"] and 0 < shared["kl_skipped"] and 0 < shared["kl_zero"]


def test_categories_on_a_hand_made_sequence():
    strings = ["a", "the", " cat", ".", ")", "zebra", ",", "(", "x", "y"]
    counts = torch.tensor([50.0, 100.0, 20.0, 30.0, 5.0, 1.0, 10.0, 5.0, 2.0, 3.0])
    cats = TokenCategories(strings, counts)
    x = torch.tensor([[0, 7, 2, 5, 1]])
    y = torch.tensor([[7, 2, 5, 4, 2]])
    logits = torch.full((1, 5, 10), -10.0)
    logits[0, 0, 7] = 10.0  # confident and right at position 0
    logits[0, 1:, 0] = 10.0  # confident and wrong elsewhere
    masks = cats.masks(x, y, logits)
    assert masks["punctuation"].tolist() == [[True, False, False, True, False]]  # "(" and ")"
    assert masks["bracket_closing"].tolist() == [[False, False, False, True, False]]
    assert masks["induction"].tolist() == [[False, False, False, False, True]]  # only y_4 = 2 is in x_{≤4}
    assert masks["high_confidence"].tolist() == [[True, False, False, False, False]]
    assert masks["low_confidence"].tolist() == [[False, True, True, True, True]]
    # Word types by count: the(100) a(50) cat(20) y(3) x(2) zebra(1): top 5% -> "the"; rarest 20% -> "zebra".
    assert masks["function_words"].tolist() == [[False, False, False, False, False]]
    assert masks["content_words"].tolist() == [[False, False, True, False, False]]
    result = substitution_eval(GPTSubject(_model()).split(-1, 0), lambda s: s, [(x % 10, y)], categories=None)
    assert "categories" not in result


def test_several_predictors_share_the_normal_skipped_and_zero_runs():
    from selfmodels.forward.substitution import substitution_eval_many

    gpt = _model(2)
    split = GPTSubject(gpt).split(0, 2)
    predictors = {"half": lambda s: 0.5 * s, "identity": lambda s: s, "true": split.middle}
    together = substitution_eval_many(split, predictors, _batches())
    for name, predictor in predictors.items():
        assert together[name] == substitution_eval(split, predictor, _batches())
    assert together["true"]["recovery"] == 1.0 and together["identity"]["recovery"] == 0.0
