"""Models users already hold: ``open_model`` on any causal LM object, an identity from the weights in memory (which a
model built from a config or changed after loading cannot share with the files), and observation in eval mode."""

from __future__ import annotations

import pytest
import torch
from tiny_subjects import VOCAB, hf_config, hf_model

from selfmodels.errors import UserError
from selfmodels.subjects.base import EMBED
from selfmodels.subjects.hf_loading import load_causal_lm, open_model


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, VOCAB, (2, 10), generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny GPT-2 saved with save_pretrained (weights file and config)."""
    directory = tmp_path_factory.mktemp("gpt2")
    hf_model("gpt2").save_pretrained(directory)
    return directory


def digest(model) -> str:
    return open_model(model).describe()["weights_sha256"]


# --- identity ----------------------------------------------------------------------------------------
def test_the_identity_is_the_weights_in_memory_in_fp32_or_bf16(saved):
    from transformers import AutoModelForCausalLM

    loaded = load_causal_lm(str(saved))
    info = loaded.describe()
    assert info["id"] == str(saved) and info["weights_hash"] == "tensors-bf16-sha256/1"
    assert info["weights_sha256"] == digest(hf_model("gpt2"))  # the same weights, never written to disk by us
    bf16 = AutoModelForCausalLM.from_pretrained(str(saved), dtype=torch.bfloat16)
    assert digest(bf16) == info["weights_sha256"]  # a bf16 copy is the same subject


def test_a_model_built_from_the_config_or_changed_after_loading_has_another_identity(saved):
    from transformers import AutoConfig, AutoModelForCausalLM

    files = digest(AutoModelForCausalLM.from_pretrained(str(saved)))
    built = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(saved)))  # other random weights
    assert built.config._name_or_path == str(saved)  # it names the directory ...
    assert digest(built) != files  # ... but does not carry its weights' identity

    changed = AutoModelForCausalLM.from_pretrained(str(saved))
    with torch.no_grad():
        changed.transformer.h[0].mlp.c_fc.weight.add_(1.0)
    assert digest(changed) != files

    later = open_model(AutoModelForCausalLM.from_pretrained(str(saved)))  # changed after its identity was taken
    assert later.describe()["weights_sha256"] == files
    with torch.no_grad():
        later.model.transformer.h[1].attn.c_proj.weight.mul_(2.0)
    assert later.describe()["weights_sha256"] not in (files, changed)


def test_from_pretrained_refuses_a_forward_model_trained_on_other_weights(saved, tmp_path):
    from transformers import AutoModelForCausalLM

    from selfmodels.forward.model import ForwardModel, ForwardModelConfig

    subject = load_causal_lm(str(saved))
    fm = ForwardModel(ForwardModelConfig(d_model=subject.d_model, n_layer=1, n_head=2, d_head=8))
    fm.save_pretrained(tmp_path / "fm", subject=subject.describe(), source=0, target=1, data={"corpus": "test", "tokens": 0})
    assert ForwardModel.from_pretrained(tmp_path / "fm", subject=subject).pair == (0, 1)
    bf16 = open_model(AutoModelForCausalLM.from_pretrained(str(saved), dtype=torch.bfloat16))
    assert ForwardModel.from_pretrained(tmp_path / "fm", subject=bf16).pair == (0, 1)

    changed = AutoModelForCausalLM.from_pretrained(str(saved))
    with torch.no_grad():
        changed.transformer.h[0].mlp.c_fc.weight.add_(1.0)
    with pytest.raises(UserError, match="trained on .* not on .*load it beside the subject it was trained on"):
        ForwardModel.from_pretrained(tmp_path / "fm", subject=open_model(changed))


# --- eval mode -----------------------------------------------------------------------------------------
def test_observation_runs_in_eval_mode_and_restores_the_mode(ids):
    from transformers import AutoModelForCausalLM

    config = hf_config("gpt2")
    config.resid_pdrop = config.embd_pdrop = config.attn_pdrop = 0.5
    model = AutoModelForCausalLM.from_config(config)  # from_config: train mode, dropout on
    model.transformer.h[1].eval()  # a mixed mode, restored as it was
    assert model.training
    with torch.no_grad():
        assert not torch.equal(model(input_ids=ids).logits, model(input_ids=ids).logits)  # dropout is live
        subject = open_model(model)
        first, second = (subject.residuals(ids, [EMBED, 0, 2]) for _ in range(2))
        for k in first:
            torch.testing.assert_close(first[k], second[k], rtol=0, atol=0)
        split = subject.split(0, 1)
        torch.testing.assert_close(split.suffix(split.middle(split.prefix(ids))), split.suffix(split.middle(split.prefix(ids))),
                                   rtol=0, atol=0)
        with subject.skip(0, 1):
            assert not model.training
            torch.testing.assert_close(model(input_ids=ids).logits, model(input_ids=ids).logits, rtol=0, atol=0)
    assert model.training and model.transformer.h[0].training and not model.transformer.h[1].training


# --- open_model ----------------------------------------------------------------------------------------
def test_open_model_takes_any_dtype(ids):
    model = hf_model("llama").to(torch.bfloat16)
    subject = open_model(model, name="mine")
    assert subject.name == "mine" and subject.dtype == torch.bfloat16
    assert subject.residuals(ids, [1])[1].dtype == torch.bfloat16
    assert open_model(hf_model("llama")).describe()["weights_sha256"] == subject.describe()["weights_sha256"]


def test_open_model_refuses_what_is_not_a_causal_lm_and_a_tokenizer_that_does_not_fit():
    from tokenizers import Tokenizer, models
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    classifier = BertForSequenceClassification(BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1,
                                                          num_attention_heads=2, intermediate_size=32))
    with pytest.raises(UserError, match="LM head"):
        open_model(classifier)
    words = {f"w{i}": i for i in range(VOCAB + 20)}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(words, unk_token="w0")))
    with pytest.raises(UserError, match=rf"has {VOCAB + 20} tokens but model .* embeds only {VOCAB}"):
        open_model(hf_model("llama"), tokenizer)


# --- device_map ----------------------------------------------------------------------------------------
def test_a_model_offloaded_by_a_device_map_is_observed_spliced_and_identified_as_in_memory(ids, tmp_path):
    """accelerate's CPU and disk offload (the CPU stand-in for a split across devices): residuals, the split, the
    splice and the identity equal those of the same weights held in memory (accelerate is a core dependency)."""
    from transformers import AutoModelForCausalLM

    model = hf_model("llama")
    model.save_pretrained(tmp_path / "llama")
    layout = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
              "model.layers.2": "disk", "model.norm": "cpu", "lm_head": "cpu"}
    offloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "llama", device_map=layout, offload_folder=tmp_path / "off")
    assert any(p.is_meta for p in offloaded.parameters())  # blocks 1 and 2 live on disk
    held, reference = open_model(offloaded), open_model(model)
    assert held.device == torch.device("cpu")
    assert held.describe()["weights_sha256"] == reference.describe()["weights_sha256"]
    with torch.no_grad():
        for k, value in reference.residuals(ids, [EMBED, 0, 2]).items():
            torch.testing.assert_close(held.residuals(ids, [k])[k], value, rtol=1e-5, atol=1e-6)
        a, b = held.split(0, 2), reference.split(0, 2)
        torch.testing.assert_close(a.suffix(a.middle(a.prefix(ids))), b.suffix(b.middle(b.prefix(ids))), rtol=1e-5, atol=1e-5)
        predictor = lambda h: 0.5 * h  # noqa: E731
        with held.splice(predictor, 0, 2):
            spliced = offloaded(input_ids=ids).logits
        with reference.splice(predictor, 0, 2):
            torch.testing.assert_close(spliced, model(input_ids=ids).logits, rtol=1e-5, atol=1e-5)


# --- bad input: one message, exit status 2 -------------------------------------------------------------
def test_a_device_map_layout_whose_weights_nothing_loads_is_refused_in_one_message(tmp_path):
    """A device_map layout the splice cannot serve: block 1 offloaded to disk, then its offload hook removed (as a
    user's own dispatch might leave it), so its weights sit on the meta device with nothing to load them. Refused when
    opened, naming the layout, before any pass could run, splice or digest it."""
    from accelerate.hooks import remove_hook_from_module
    from transformers import AutoModelForCausalLM

    hf_model("llama").save_pretrained(tmp_path / "llama")
    layout = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
              "model.layers.2": "cpu", "model.norm": "cpu", "lm_head": "cpu"}
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "llama", device_map=layout, offload_folder=tmp_path / "off")
    open_model(model)  # served by its hooks: opened
    remove_hook_from_module(model.model.layers[1], recurse=True)
    with pytest.raises(UserError, match=r"weights \(first model\.layers\.1\..*\) are on the meta device with no offload hook "
                                        r"to load them \(device_map .*'model\.layers\.1': 'disk'") as refused:
        open_model(model, name="mine")
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("layers", [
    3,
    1,  # a 1-layer config: told it is not a causal LM, never that its layer pair is out of range
])
def test_a_directory_holding_no_causal_lm_exits_2_with_one_message(layers, tmp_path, capsys):
    """On the command line: a directory whose config transformers builds no causal LM from (a ViT) is refused from its
    config, before any weights, with one message and exit status 2."""
    from transformers import ViTConfig

    from selfmodels.cli import main

    ViTConfig(hidden_size=32, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=32).save_pretrained(tmp_path / "vit")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("a few words of text, repeated. " * 400)
    capsys.readouterr()
    out = tmp_path / "out"
    status = main(["forward", "train", "--subject", str(tmp_path / "vit"), "--corpus", str(corpus), "--out", str(out),
                   "--preset", "quick", "--source", "0", "--target", "1", "--device", "cpu", "--threads", "1", "--quiet"])
    err = capsys.readouterr().err
    (error,) = [line for line in err.splitlines() if "error" in line]
    assert status == 2 and "'vit'" in error and "is not a causal LM" in error and "Traceback" not in err, err
    assert not out.exists()
