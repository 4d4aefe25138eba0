"""The subject contract on a TransformerLens ``HookedTransformer`` built from its own config (tiny, random, no
download; the extra is installed by ``make setup``, so nothing here skips): residuals equal TransformerLens' own
``run_with_cache`` hooks and stop early, the split and ``logits_from`` reproduce its logits, skip and splice act
through hooks that are always removed, ``block_parts`` adds up, ``head_weights`` reproduce its q / k / v, the identity
is the weights in memory, bad input is one message; and the forward pipeline runs on it from the library."""

from __future__ import annotations

import pytest
import torch

from selfmodels.errors import UserError
from selfmodels.subjects.base import EMBED

try:
    import transformer_lens
except ImportError:  # a failure, never a skip: `make setup` installs it
    raise ImportError("transformer_lens is not installed: pip install -e '.[dev]' (it pins transformer-lens>=3.9,<4)") from None
# TransformerLens 3.x announces HookedTransformer's removal in 4.0 (where TransformerBridge replaces it).
pytestmark = pytest.mark.filterwarnings("ignore:HookedTransformer is deprecated:DeprecationWarning")
VOCAB, LAYERS, ATOL = 97, 3, 1e-5
PAIRS = [(-1, 0), (0, 1), (0, LAYERS - 1), (1, 2)]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def hooked(n_kv_heads: int | None = None, **extra):
    cfg = transformer_lens.HookedTransformerConfig(
        n_layers=LAYERS, d_model=64, n_ctx=64, d_head=16, n_heads=4, d_mlp=128, d_vocab=VOCAB, act_fn="gelu",
        normalization_type="LN", seed=0, n_key_value_heads=n_kv_heads, model_name="tiny-hooked", **extra)
    model = transformer_lens.HookedTransformer(cfg)
    with torch.no_grad():  # non-trivial norm gains and biases, so folding the gain and the bias terms are tested
        generator = torch.Generator().manual_seed(1)
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_((1.0 if name.endswith(".w") else 0.0) + 0.3 * torch.randn(p.shape, generator=generator))
    return model


@pytest.fixture(scope="module", params=["mha", "gqa", "parallel"])
def model(request):
    extra = {"parallel_attn_mlp": True} if request.param == "parallel" else {}
    return hooked(2 if request.param == "gqa" else None, **extra)


@pytest.fixture(scope="module")
def subject(model):
    import selfmodels

    return selfmodels.open_subject(model)  # found by its class: a HookedSubject


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(3))


@pytest.fixture(autouse=True)
def _inference():
    with torch.no_grad():
        yield


def test_residuals_equal_transformer_lens_own_hooks(subject, model, ids):
    _, cache = model.run_with_cache(ids)
    acts = subject.residuals(ids, list(range(EMBED, LAYERS)))
    torch.testing.assert_close(acts[EMBED], cache["blocks.0.hook_resid_pre"], atol=ATOL, rtol=0)
    for k in range(LAYERS):
        torch.testing.assert_close(acts[k], cache[f"blocks.{k}.hook_resid_post"], atol=ATOL, rtol=0)
        assert subject.hook_name(k) == f"blocks.{k}.hook_resid_post"


def test_collection_stops_after_the_deepest_index(subject, ids):
    ran = []
    handles = [block.register_forward_hook(lambda m, a, o, k=k: ran.append(k)) for k, block in enumerate(subject.blocks)]
    ran_head = []
    handles.append(subject.model.unembed.register_forward_hook(lambda *a: ran_head.append(1)))
    try:
        subject.residuals(ids, [EMBED, 1])
    finally:
        for handle in handles:
            handle.remove()
    assert ran == [0, 1] and not ran_head


@pytest.mark.parametrize("source,target", PAIRS)
def test_split_and_logits_from_reproduce_the_logits(subject, model, ids, source, target):
    logits = model(ids).float()
    split = subject.split(source, target)
    torch.testing.assert_close(split.suffix(split.middle(split.prefix(ids))), logits, atol=1e-4, rtol=0)
    h = subject.residuals(ids, [source])[source]
    torch.testing.assert_close(subject.logits_from(h, source), logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize("source,target", PAIRS)
def test_skip_and_splice_act_through_hooks_that_are_removed(subject, model, ids, source, target):
    count = lambda: sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())  # noqa: E731
    before = count()
    split = subject.split(source, target)
    src = split.prefix(ids)
    with subject.skip(source, target):
        torch.testing.assert_close(model(ids).float(), split.suffix(src), atol=1e-4, rtol=0)
    true_target = subject.residuals(ids, [target])[target]
    with subject.splice(lambda h: true_target, source, target):  # the true target: the model's own logits
        torch.testing.assert_close(model(ids).float(), split.suffix(split.middle(src)), atol=1e-4, rtol=0)
    assert count() == before


def test_block_parts_add_up(subject, model, ids):
    _, cache = model.run_with_cache(ids)
    for k in range(LAYERS):
        parts = subject.block_parts(ids, k)
        torch.testing.assert_close(parts["input"], cache[f"blocks.{k}.hook_resid_pre"], atol=ATOL, rtol=0)
        torch.testing.assert_close(parts["output"] - parts["input"], parts["attn_out"] + parts["mlp_out"], atol=1e-4, rtol=0)
        torch.testing.assert_close(parts["heads"].sum(-2) + parts["attn_bias"], parts["attn_out"], atol=1e-4, rtol=0)
        assert parts["heads"].shape == (2, 12, 4, 64) and parts["attention"].shape == (2, 4, 12, 12)
        torch.testing.assert_close(parts["attention"].sum(-1), torch.ones(2, 4, 12), atol=1e-5, rtol=0)


def test_head_weights_reproduce_its_queries_keys_and_values(subject, model, ids):
    _, cache = model.run_with_cache(ids)
    k = 1
    ln = model.blocks[k].ln1
    x = cache[f"blocks.{k}.hook_resid_pre"]
    centred = x - x.mean(-1, keepdim=True)
    normalized = centred / (centred.pow(2).mean(-1, keepdim=True) + ln.eps).sqrt()  # LayerNorm without gain and bias
    weights = subject.head_weights(k)
    assert len(weights) == 4 and weights[0]["q"].shape == (16, 64) and weights[0]["o"].shape == (64, 16)
    for h, w in enumerate(weights):
        bias = lambda name: (ln.b @ getattr(model.blocks[k].attn, f"W_{name}")[h] + getattr(model.blocks[k].attn, f"b_{name}")[h])  # noqa: E731
        group = h // (subject.n_heads // subject.n_kv_heads)  # the KV group query head h reads
        for name, head in (("q", h), ("k", group), ("v", group)):
            expected = cache[f"blocks.{k}.attn.hook_{name}"][:, :, head]  # (B, T, d_head)
            got = normalized @ w[name].T + bias(name.upper())
            torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_identity_mode_and_bad_input(subject, model, ids):
    info = subject.describe()
    assert info["family"] == "transformer_lens" and info["id"] == "tiny-hooked" and info["weights_hash"] == "tensors-bf16-sha256/1"
    assert info["indices"]["-1"] == "blocks.0.hook_resid_pre"
    model.train()
    first, second = subject.residuals(ids, [2]), subject.residuals(ids, [2])  # eval mode inside, restored after
    torch.testing.assert_close(first[2], second[2], atol=0, rtol=0)
    assert model.training
    model.eval()
    with torch.no_grad():
        changed = hooked()
        changed.blocks[0].mlp.W_in.add_(1.0)
    import selfmodels

    assert selfmodels.open_subject(changed).describe()["weights_sha256"] != info["weights_sha256"]
    with pytest.raises(UserError, match="out of range"):
        subject.residuals(ids, [LAYERS])
    with pytest.raises(UserError, match=f"must lie in 0..{VOCAB - 1}"):
        subject.residuals(ids + VOCAB, [0])


def test_the_forward_pipeline_runs_on_a_hooked_transformer(tmp_path):
    import selfmodels
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    inner = Tokenizer(models.WordLevel({chr(ord("a") + i): i for i in range(26)}, unk_token="a"))
    inner.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    text = tmp_path / "letters.txt"
    generator = torch.Generator().manual_seed(0)
    text.write_text("".join(chr(ord("a") + int(i)) for i in torch.randint(0, 26, (6000,), generator=generator)))
    subject = selfmodels.open_subject(hooked(), PreTrainedTokenizerFast(tokenizer_object=inner))
    with torch.enable_grad():
        fit = selfmodels.forward.fit(subject, 0, 2, corpus=str(text), out=tmp_path / "run", seq_len=16, train_sequences=12,
                                     eval_sequences=4, eval_batch=4, model={"d_head": 16, "swiglu_hidden": 32},
                                     baseline={"steps": "same"}, train={"steps": 4, "batch_size": 4, "log_every": 2,
                                                                        "checkpoint_every": 4})
    assert fit.results["subject"]["family"] == "transformer_lens" and fit.evaluation["kl_skipped"] > 0
