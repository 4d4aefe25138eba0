"""End to end: the pretrained-model reproduction on a tiny random Llama saved locally, with a tiny tokenizer."""

import pytest
from hf_tiny_models import tiny_llama
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from selfmodels.artifacts import read_json
from selfmodels.errors import UserError
from selfmodels.forward.hf_reproduce import HFReproSettings, run

TEXT = ("In the beginning (as the story goes) the model read words. Then it read more words, "
        "and [some] of them were in brackets; others were not! ") * 60


def _model_dir(tmp_path):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator([TEXT], trainers.BpeTrainer(vocab_size=280, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>")
    model = tiny_llama(layers=4)
    model.resize_token_embeddings(max(len(fast), 97))
    directory = tmp_path / "tiny-llama"
    model.save_pretrained(directory)
    fast.save_pretrained(directory)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    return directory, corpus


def _settings(corpus, **changes):
    base = dict(source=1, target=2, corpus=str(corpus), max_chars=None, seq_len=16, train_sequences=12,
                val_sequences=4, substitution_sequences=4, analysis_sequences=4, cache_dtype="float32", d_head=16,
                swiglu_hidden=32, baseline_hidden_mult=1, steps=6, batch_size=4, lr=1e-3, collect_batch=4)
    return HFReproSettings(**{**base, **changes})


def test_reproduction_end_to_end_and_resume(tmp_path):
    model_dir, corpus = _model_dir(tmp_path)
    out = tmp_path / "run"
    assert run(str(model_dir), out, True, "cpu", 1, settings=_settings(corpus)) == 0
    r = read_json(out / "results.json")
    for key in ("cosine", "mse", "identity_cosine", "delta_cosine", "delta_r2"):
        assert isinstance(r[key], float)
    assert -1 <= r["cosine"] <= 1 and r["mse"] >= 0
    sub = r["substitution"]
    for key in ("accuracy_normal", "accuracy_substituted", "accuracy_skipped", "kl_substituted", "kl_skipped", "recovery"):
        assert key in sub
    assert sub["recovery"] == pytest.approx(1 - sub["kl_substituted"] / sub["kl_skipped"])
    assert r["main_model"]["params"] > r["forward_model"]["params"] > 0
    assert r["baseline_mlp"]["cosine"] is not None and r["baseline_mlp"]["params"] > 0
    d = r["decomposition"]
    assert d["reconstruction_error"] < 1e-5
    assert d["mlp_norm_share"] + d["heads_norm_share"] == pytest.approx(1.0)
    for key in ("mlp_cos_residual", "heads_cos_residual_mean"):
        assert -1 <= d[key] <= 1
    a = r["analysis"]
    assert len(a["attention_cosine_per_example"]) == 4 and len(a["attention_cosine_batch_averaged"]) == 4
    assert 0 <= a["cka"]["prediction_vs_target"] <= 1 + 1e-9
    assert 1 <= a["effective_rank_entropy_s2"] <= a["effective_rank_entropy_s"] <= 64
    report = (out / "report.md").read_text()
    assert "paper (Llama-3.2-1B 7->8)" in report and "exp(H(S²/ΣS²))" in report
    for name in r["plots"].values():
        assert (out / "plots" / name).read_bytes()[:4] == b"\x89PNG"
    config = read_json(out / "config.json")
    assert config["settings"]["bos"] is False and config["main"] == str(model_dir)
    # A second run reuses every finished stage and gives the same numbers.
    weights = (out / "forward_model.safetensors").read_bytes()
    assert run(str(model_dir), out, True, "cpu", 1, settings=_settings(corpus)) == 0
    assert read_json(out / "results.json")["cosine"] == r["cosine"]
    assert (out / "forward_model.safetensors").read_bytes() == weights


def test_reproduction_bad_input(tmp_path):
    model_dir, corpus = _model_dir(tmp_path)
    with pytest.raises(UserError, match="out of range"):
        run(str(model_dir), tmp_path / "bad", True, "cpu", 1, settings=_settings(corpus, source=3, target=4))
    with pytest.raises(UserError, match="sequences"):
        run(str(model_dir), tmp_path / "bad2", True, "cpu", 1, settings=_settings(corpus, train_sequences=10_000))


def test_tokenizing_in_pieces_cut_at_paragraphs_changes_no_token(tmp_path):
    from transformers import AutoTokenizer

    from selfmodels.forward.hf_collect import tokenize

    model_dir, _ = _model_dir(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    text = "\n\n".join(TEXT[i:i + 150] for i in range(0, 3000, 150))
    whole = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenize(tokenizer, text, piece_chars=400).tolist() == whole


def test_cli_refuses_an_unsupported_architecture(tmp_path, capsys):
    from transformers import GPT2Config, GPT2LMHeadModel

    from selfmodels.cli import main

    directory = tmp_path / "gpt2-tiny"
    GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2, n_positions=16)).save_pretrained(directory)
    out = tmp_path / "out"
    status = main(["reproduce", "forward-self-models", "--main", str(directory), "--quick", "--out", str(out)])
    assert status == 2
    err = capsys.readouterr().err
    assert "not supported" in err and "llama" in err and "Traceback" not in err
    assert not out.exists(), "nothing is written for refused input"
