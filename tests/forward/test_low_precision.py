"""bf16 / fp16 subjects against the same weights in fp32: residuals, streaming, substitution, a forward fit and the
profile, with the forward models trained in fp32 master weights on float32 activations.

Tolerances (stated, and why): bf16 keeps 8 significant bits (relative rounding 2^-9 ~ 0.2%) and fp16 11 bits; through
3 tiny blocks the residuals of a bf16 subject stay within 3% of the fp32 ones relative to their RMS (fp16: 0.5%), and
the metrics computed from them (cosines, KLs, recovery) within the bounds asserted below."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "subjects"))
from tiny_subjects import VOCAB, hf_model  # noqa: E402

from selfmodels.forward.evaluate import as_predictor  # noqa: E402
from selfmodels.forward.model import ForwardModel, ForwardModelConfig  # noqa: E402
from selfmodels.forward.stream import ActivationStream  # noqa: E402
from selfmodels.forward.substitution import substitution_eval  # noqa: E402
from selfmodels.subjects.base import EMBED  # noqa: E402
from selfmodels.subjects.hf_loading import open_model  # noqa: E402

RELATIVE = {torch.bfloat16: 0.03, torch.float16: 0.005}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, VOCAB, (4, 16), generator=torch.Generator().manual_seed(5))


def pair(dtype):
    """The same tiny Llama in fp32 and in ``dtype`` (cast from it), as subjects."""
    return open_model(hf_model("llama"), name="fp32"), open_model(hf_model("llama").to(dtype), name=str(dtype))


def rms_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).pow(2).mean().sqrt() / b.float().pow(2).mean().sqrt())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_residuals_of_a_low_precision_subject_match_fp32(dtype, ids):
    full, low = pair(dtype)
    if dtype == torch.bfloat16:  # the digest rounds to bf16: a bf16 copy is the same subject (an fp16 copy, rounded
        assert low.describe()["weights_sha256"] == full.describe()["weights_sha256"]  # twice, may differ)
    with torch.no_grad():
        a, b = low.residuals(ids, [EMBED, 0, 2]), full.residuals(ids, [EMBED, 0, 2])
    for k in a:
        assert a[k].dtype == dtype
        assert rms_error(a[k], b[k]) < RELATIVE[dtype], k


def test_a_stream_from_a_bf16_subject_gives_float32_batches_close_to_fp32(ids):
    full, low = pair(torch.bfloat16)
    tokens = torch.randint(0, VOCAB, (2000,), generator=torch.Generator().manual_seed(1))
    streams = [ActivationStream(s, tokens, [0, 2], 16, 4, 8, 4, seed=0) for s in (full, low)]
    for _ in range(3):
        a, b = (next(stream) for stream in streams)
        for k in (0, 2):
            assert a[k].dtype == b[k].dtype == torch.float32
            assert rms_error(b[k], a[k]) < RELATIVE[torch.bfloat16]


def test_substitution_on_a_bf16_subject_matches_fp32_with_an_fp32_forward_model(ids):
    full, low = pair(torch.bfloat16)
    torch.manual_seed(0)
    forward_model = ForwardModel(ForwardModelConfig(d_model=full.d_model, n_layer=1, n_head=2, d_head=16)).eval()
    y = torch.roll(ids, -1, dims=1)
    with torch.no_grad():
        a = substitution_eval(full.split(0, 2), as_predictor(forward_model), [(ids, y)])
        b = substitution_eval(low.split(0, 2), as_predictor(forward_model), [(ids, y)])
    for key in ("kl_substituted", "kl_skipped", "kl_zero"):
        assert abs(a[key] - b[key]) < 0.05 * a[key] + 1e-3, key
    assert abs(a["recovery"] - b["recovery"]) < 0.05
    assert abs(a["ce_normal"] - b["ce_normal"]) < 0.01 * a["ce_normal"]


@pytest.fixture(scope="module")
def letters(tmp_path_factory):
    """A one-letter-per-token tokenizer and a random text of letters (ids 0..25, inside the tiny model's 97 rows)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    inner = Tokenizer(models.WordLevel({chr(ord("a") + i): i for i in range(26)}, unk_token="a"))
    inner.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    text = tmp_path_factory.mktemp("letters") / "letters.txt"
    generator = torch.Generator().manual_seed(0)
    text.write_text("".join(chr(ord("a") + int(i)) for i in torch.randint(0, 26, (8000,), generator=generator)))
    return PreTrainedTokenizerFast(tokenizer_object=inner), text


def test_a_forward_fit_on_a_bf16_subject_trains_fp32_master_weights_and_matches_fp32(letters, tmp_path):
    import selfmodels

    tokenizer, text = letters
    tiny = {"seq_len": 16, "train_sequences": 12, "eval_sequences": 4, "eval_batch": 4, "model": {"d_head": 16, "swiglu_hidden": 32},
            "baseline": {"enabled": False}, "train": {"steps": 6, "batch_size": 4, "log_every": 2, "checkpoint_every": 6}}
    fits = {}
    for dtype in (torch.float32, torch.bfloat16):
        subject = selfmodels.open_subject(hf_model("llama").to(dtype), tokenizer, name=str(dtype))
        fits[dtype] = selfmodels.forward.fit(subject, 0, 2, corpus=str(text), out=tmp_path / str(dtype), **tiny)
    low, full = fits[torch.bfloat16], fits[torch.float32]
    assert all(p.dtype == torch.float32 for p in low.model.parameters())  # fp32 master weights
    assert low.results["subject"]["dtype"] == "bfloat16"
    for key in ("cosine", "skip_cosine", "delta_cosine"):
        assert abs(low.evaluation[key] - full.evaluation[key]) < 0.01, key
    assert abs(low.evaluation["kl_skipped"] - full.evaluation["kl_skipped"]) < 0.05 * full.evaluation["kl_skipped"]
    assert abs(low.evaluation["recovery"] - full.evaluation["recovery"]) < 0.1


def test_a_profile_of_a_bf16_subject_matches_fp32(letters, tmp_path):
    import selfmodels

    tokenizer, text = letters
    tiny = {"seq_len": 16, "eval_sequences": 2, "eval_batch": 2, "ridge_sequences": 4, "decomposition_sequences": 2,
            "buffer_sequences": 4, "pass_sequences": 2, "train": {"steps": 2, "batch_size": 2, "log_every": 1, "checkpoint_every": 2}}
    rows = {}
    for dtype in (torch.float32, torch.bfloat16):
        subject = selfmodels.open_subject(hf_model("llama").to(dtype), tokenizer, name=str(dtype))
        rows[dtype] = selfmodels.forward.fit_profile(subject, corpus=str(text), out=tmp_path / str(dtype), **tiny).rows
    for low, full in zip(rows[torch.bfloat16], rows[torch.float32]):
        assert (low["source"], low["target"]) == (full["source"], full["target"])
        for key in ("cosine", "skip_cosine", "ridge_cosine", "mlp_cos_residual"):
            assert abs(low[key] - full[key]) < 0.02, (low["source"], key)
        assert abs(low["kl_skipped"] - full["kl_skipped"]) < 0.05 * full["kl_skipped"] + 1e-3
