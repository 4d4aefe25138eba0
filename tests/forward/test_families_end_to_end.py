"""`forward train` and `forward profile` end to end from a local directory, on a tiny random model of each newer
family (Gemma 2, Gemma 3, Phi-3, OLMo 2, Qwen3-MoE, Mixtral) and on one with no FAMILIES row (OPT, found
structurally: the analyses, the profile and the explorer skip only what needs a row and say so); and bad input from
a directory (one message, exit status 2).

Every run is ``--preset quick`` with flags on top that shrink it to about a second: the pair 0 -> 1 (the preset's
7 -> 8 lies past a 3-block model), 4 training steps of 2 x 16 tokens streamed from the subject, no MLP baseline,
2 held-out windows, the analyses on 2; the profile covers the pairs from 0 only. The models are the subject contract test's
(``tests/subjects/tiny_subjects.py``) with 8 embedding rows more than the tokenizer has tokens, as Qwen2.5 and
Phi-3 pad theirs. That the logits these runs' KLs compare are the model's own (Gemma's final soft-capping
included) is checked directly by the contract test (``test_final_logit_softcap_is_applied_as_the_model_does``).
"""

import json
import math
import re

import numpy as np
import pytest
from hf_tiny_models import PADDED_ROWS, save_family
from tiny_runs import tiny_tokenizer, write_corpus

from selfmodels.cli import main
from selfmodels.forward.analyze import NEED_PARTS
from selfmodels.forward.profile import ALIGNMENT_SKIPPED

FAMILIES = ["gemma2", "gemma3", "phi3", "olmo2", "qwen3_moe", "mixtral"]
SOFTCAP = {"gemma2": 1.0}  # final_logit_softcapping of the tiny configs; Gemma3ForConditionalGeneration caps nothing
POST_NORM = ("gemma2", "gemma3", "olmo2")  # the attention output is normalised before it is added
SHARED_SCALE = "is shared by all heads"  # how describe() says the heads split under a post-norm
SHRINK = ["--preset", "quick", "--corpus.max-chars", "20000", "--model.d-head", "16", "--train.steps", "4",
          "--train.batch-size", "2", "--seq-len", "16", "--eval-sequences", "2", "--eval-batch", "2", "--buffer-sequences", "4",
          "--pass-sequences", "2", "--device", "cpu", "--threads", "1", "--quiet"]
TRAIN = ["forward", "train", "--source", "0", "--target", "1", "--training", "stream", "--no-baseline.enabled",
         "--model.swiglu-hidden", "32", "--analysis-sequences", "2", *SHRINK]
PROFILE = ["forward", "profile", "--layers", "0", "--ridge-sequences", "4", "--decomposition-sequences", "2", *SHRINK]
KL_KEYS = ("kl_substituted", "kl_skipped", "recovery")
TOKENS = len(tiny_tokenizer())


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SELFMODELS_CACHE", str(tmp_path_factory.getbasetemp() / "selfmodels-cache"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """``model_dir(kind)``: the tiny model of ``kind`` saved once for the module."""
    saved = {}

    def get(kind: str):
        if kind not in saved:
            saved[kind] = save_family(tmp_path_factory.mktemp("models") / kind, kind)
        return saved[kind]

    return get


def _run(argv: list[str], model, corpus, out) -> dict:
    assert main([*argv, "--subject", str(model), "--corpus", str(corpus), "--out", str(out)]) == 0
    return json.loads((out / "results.json").read_text())


def _check_subject(r: dict, kind: str) -> None:
    """The run saw the family's row, its padded embedding, its soft-capping and its experts."""
    s = r["subject"]
    assert s["family"] == kind and s["structure"]["found"] == f"row {kind!r} of selfmodels.subjects.hf.FAMILIES"
    assert s["vocab_size"] == TOKENS + PADDED_ROWS  # fewer tokenizer tokens than rows: accepted
    assert s["structure"]["final_logit_softcap"] == SOFTCAP.get(kind)
    assert (s["structure"]["experts"] is not None) == (kind in ("qwen3_moe", "mixtral"))


@pytest.mark.parametrize("kind", FAMILIES)
def test_forward_train_runs_end_to_end_from_a_directory(kind, model_dir, corpus, tmp_path):
    out = tmp_path / "train"
    r = _run(TRAIN, model_dir(kind), corpus, out)
    _check_subject(r, kind)
    sub = r["substitution"]
    assert all(math.isfinite(sub[key]) for key in KL_KEYS) and sub["kl_skipped"] > 0
    assert sub["recovery"] == pytest.approx(1 - sub["kl_substituted"] / sub["kl_skipped"])
    assert -1 <= r["cosine"] <= 1 and r["pair"]["source"] == 0 and r["pair"]["target"] == 1
    # the analyses ran through the row: per-head writes (under a post-norm, fused QKV, beside experts), head weights
    assert r["decomposition"]["reconstruction_error"] < 1e-4 and "skipped" not in r["analysis"]
    assert len(r["analysis"]["gauge"]["per_layer_head"]) == 4  # the subject's 4 query heads
    report = (out / "report.md").read_text()
    assert "## Decomposition" in report and (SHARED_SCALE in report) == (kind in POST_NORM)


@pytest.mark.parametrize("kind", FAMILIES)
def test_forward_profile_runs_end_to_end_from_a_directory(kind, model_dir, corpus, tmp_path):
    r = _run(PROFILE, model_dir(kind), corpus, tmp_path / "profile")
    _check_subject(r, kind)
    assert r["skipped"] is None
    (row,) = r["rows"]
    assert (row["source"], row["target"]) == (0, 1)
    assert row["recovery"] == pytest.approx(1 - row["kl_substituted"] / row["kl_skipped"])
    # the one-block decomposition ran through the row: post-norm heads (Gemma, OLMo 2), fused QKV (Phi-3), experts
    for key in (*KL_KEYS, "ridge_recovery", "mlp_cos_residual", "heads_cos_residual_mean", "heads_norm_share"):
        assert math.isfinite(row[key]), key
    assert (SHARED_SCALE in (tmp_path / "profile" / "report.md").read_text()) == (kind in POST_NORM)


def test_a_model_without_a_row_runs_everything_but_what_needs_one(model_dir, corpus, tmp_path, capsys):
    """OPT has no FAMILIES row: training, evaluation, the residual analyses, the profile and the explorer run; the
    per-head decomposition, the block's attention and the head weights are skipped, named with the reason."""
    model = model_dir("opt")
    out = tmp_path / "train"
    r = _run(TRAIN, model, corpus, out)
    assert r["subject"]["structure"]["found"].startswith("structurally")
    assert math.isfinite(r["substitution"]["recovery"]) and r["decomposition"] is None
    a = r["analysis"]
    assert a["skipped"]["analyses"] == list(NEED_PARTS) and "no FAMILIES row" in a["skipped"]["reason"]
    assert list(a["cka"]) == ["prediction_vs_target", "source_vs_target", "source_vs_prediction"]
    assert set(a["residual_categories"]) == {"sentence_start", "after_punctuation", "after_opener", "before_closer"}
    assert not {"gauge", "attention_cosine_per_example", "entropy_correlation"} & set(a)
    assert set(r["plots"]) == {"spectrum", "categories"}
    report = (out / "report.md").read_text()
    assert f"**Skipped**: {', '.join(NEED_PARTS)}. Why: {a['skipped']['reason']}" in report
    assert "### Residual structure" in report and "### Gauge symmetry" not in report

    assert main(["forward", "explore", str(out), "--device", "cpu"]) == 0
    page = (out / "explorer.html").read_text()
    assert a["skipped"]["reason"] in page
    arrays = np.load(out / "explorer.npz")
    assert "0_1/kl_substituted" in arrays and "0_1/attention_entropy" not in arrays and "0_1/align_heads" not in arrays

    profile = _run(PROFILE, model, corpus, tmp_path / "profile")
    assert profile["skipped"] == {"analyses": [ALIGNMENT_SKIPPED], "reason": a["skipped"]["reason"]}
    (row,) = profile["rows"]
    assert math.isfinite(row["recovery"]) and "mlp_cos_residual" not in row
    assert "**Skipped**" in (tmp_path / "profile" / "report.md").read_text()
    capsys.readouterr()


def _encoder_decoder(directory):
    """BART: an encoder and a decoder, two residual streams; a config alone (refused before any weights). One layer
    each, so the pair 0 -> 1 does not fit it either: the message must still be that it is not decoder-only."""
    from transformers import BartConfig

    BartConfig(vocab_size=64, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
               decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32).save_pretrained(directory)
    return directory


def _unfindable_blocks(directory):
    """Jamba's blocks are one ModuleList of two classes (Mamba and attention layers): not found structurally, and no
    row. A config alone: the refusal comes before any weights (or a tokenizer) are read."""
    from transformers import JambaConfig

    JambaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1, attn_layer_period=2, attn_layer_offset=1, mamba_d_state=4,
                mamba_expand=1).save_pretrained(directory)
    return directory


def _tokenizer_beyond_the_embedding(directory):
    """The tokenizer can emit ids at and beyond the embedding's rows (20 rows fewer than it has tokens)."""
    return save_family(directory, "llama", rows=TOKENS - 20)


@pytest.mark.parametrize("make, message", [
    (_encoder_decoder, r"'bart'\) is an encoder-decoder model: a subject is a decoder-only causal LM"),
    (_unfindable_blocks, r"the blocks of JambaForCausalLM \(model_type 'jamba'\) cannot be found"),
    (_tokenizer_beyond_the_embedding, rf"has {TOKENS} tokens but model '.*' embeds only {TOKENS - 20}"),
], ids=["not-decoder-only", "blocks-not-found", "token-ids-beyond-the-embedding"])
def test_a_directory_that_cannot_be_a_subject_exits_2(make, message, corpus, tmp_path, capsys):
    model = make(tmp_path / "model")
    capsys.readouterr()  # what saving the model printed
    out = tmp_path / "out"
    for argv in (TRAIN, PROFILE):
        assert main([*argv, "--subject", str(model), "--corpus", str(corpus), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        (error,) = [line for line in err.splitlines() if "error" in line]  # one message (beside transformers' loading bar)
        assert re.search(message, error) and "Traceback" not in err, err
        assert not out.exists()
