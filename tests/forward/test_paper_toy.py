"""The ``paper-toy`` preset (issue 22): its values, our GPT's snapshots by tokens seen, the report's paper-toy rows on a
tiny run, and bad input (one message, exit status 2)."""

import json
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from tiny_runs import write_corpus

from selfmodels.artifacts import load_tensors, read_jsonl
from selfmodels.cli import main
from selfmodels.configs import from_dict
from selfmodels.forward.config import RunConfig, load_preset
from selfmodels.nets.config import GPTConfig
from selfmodels.nets.gpt import GPT
from selfmodels.subjects.config import LMTrainConfig
from selfmodels.subjects.gpt import GPTSubject
from selfmodels.subjects.lm_training import train_lm

# The preset at test size: every size flag overridden, everything else (co-training, snapshots, the sources of the
# per-position MLPs, the capacity sweep with its slopes, whole windows) from the preset.
TINY = ["--corpus.vocab-size", "300", "--subject.gpt.block-size", "16", "--subject.gpt.n-head", "2",
        "--subject.gpt.d-model", "16", "--subject.lm.steps", "20", "--subject.lm.batch-size", "4", "--subject.lm.eval-every", "10",
        "--subject.lm.eval-batches", "1", "--subject.snapshot-tokens", "320", "640", "1280", "--model.d-head", "8",
        "--train.steps", "6", "--train.batch-size", "4", "--train.log-every", "1", "--sweeps.steps", "10", "--seq-len", "16",
        "--eval-sequences", "6", "--eval-batch", "3", "--train-sequences", "12", "--analysis-sequences", "4",
        "--device", "cpu", "--threads", "1", "--no-progress"]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SELFMODELS_CACHE", str(tmp_path / "selfmodels-cache"))


@pytest.fixture
def corpus(tmp_path):
    return write_corpus(tmp_path)


def status(argv: list[str]) -> int:
    """The exit status of ``selfmodels ARGV`` (argparse's own errors exit through SystemExit)."""
    try:
        return main(argv)
    except SystemExit as exit_:
        return exit_.code


def resolved(name: str = "paper-toy", command: str = "reproduce forward-self-models") -> RunConfig:
    from selfmodels.forward.commands import _pipeline_command

    return from_dict(RunConfig, _pipeline_command(command, one_pair=command == "forward train")._base(name, "gpt"))


def test_the_preset_resolves_to_the_issue_values():
    cfg = resolved()
    cfg.validate()
    g, lm = cfg.subject.gpt, cfg.subject.lm
    assert (g.n_layer, g.n_head, g.d_model, g.block_size, g.vocab_size, cfg.corpus.vocab_size) == (4, 4, 256, 128, 4096, 4096)
    assert (lm.lr, lm.weight_decay, lm.grad_clip, lm.batch_size) == (3e-4, 0.01, 1.0, 16)
    assert lm.steps >= 4883 and lm.steps * lm.batch_size * g.block_size >= 10_000_000
    assert (cfg.source, cfg.target, cfg.training, cfg.seq_len) == (0, 1, "cotrain", 128)
    m = cfg.model
    assert (m.n_layer, m.n_head, m.d_head, m.mlp, m.mlp_hidden) == (1, 1, 64, "gelu", 512)
    assert (cfg.train.lr, cfg.train.weight_decay) == (1e-3, 0.01)
    from selfmodels.forward.architectures import build_forward_model, num_params

    assert num_params(build_forward_model(m, g.d_model)) == 329_920  # the paper's count
    assert cfg.subject.snapshot_tokens == [2_500_000, 5_000_000, 10_000_000]
    assert cfg.baseline.sources == [-1] and cfg.whole_windows
    s = cfg.sweeps
    assert (s.capacity, s.capacity_source, s.capacity_target, s.gaps) == (["1%", "3%", "10%", "22%"], 0, 3, [])
    assert s.steps * cfg.train.batch_size * cfg.seq_len == 1000 * 16 * 128 and s.slope_fraction == 0.2
    # the same file through the module's loader; `forward train` keeps one pair
    assert load_preset("gpt-paper-toy", RunConfig, "gpt") == cfg
    one = resolved(command="forward train")
    assert one.sweeps.capacity == [] and one.analysis_sequences == 0 and one.subject == cfg.subject


def test_help_lists_the_preset():
    done = subprocess.run([sys.executable, "-m", "selfmodels.cli", "reproduce", "forward-self-models", "--help"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "full, paper-toy, quick" in " ".join(done.stdout.split())


def _tiny_gpt(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=64, block_size=8, n_layer=3, n_head=2, d_model=16))


def _tokens(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 64, (n,), generator=torch.Generator().manual_seed(seed))


def test_snapshots_at_their_token_counts_leave_the_training_unchanged(tmp_path):
    train_tokens, val_tokens = _tokens(4000, 1), _tokens(400, 2)
    cfg = LMTrainConfig(steps=12, batch_size=4, lr=1e-3, eval_every=5, eval_batches=2)  # 4 x 8 = 32 tokens a step
    plain = _tiny_gpt()
    train_lm(plain, train_tokens, val_tokens, cfg, tmp_path / "plain", torch.device("cpu"), 0, progress=False)
    shot = _tiny_gpt()
    out = train_lm(shot, train_tokens, val_tokens, cfg, tmp_path / "shot", torch.device("cpu"), 0, progress=False,
                   snapshot_tokens=[100, 32, 384, 33])
    # the first step whose tokens seen reach each count: 32 -> 1, 33 -> 2, 100 -> 4 (128), 384 -> 12 (the last)
    records = out["snapshots"]
    assert [(r["tokens"], r["step"], r["tokens_seen"]) for r in records] == [(32, 1, 32), (33, 2, 64), (100, 4, 128), (384, 12, 384)]
    for name, value in plain.state_dict().items():  # snapshots read the model, never train it
        assert torch.equal(value, shot.state_dict()[name]), name
    assert torch.equal(load_tensors(tmp_path / "shot" / "snapshots" / "tokens_384.safetensors")["lm_head.weight"], shot.lm_head.weight)
    assert out["machine"]["cpu"] and out["seconds"] > 0

    # a snapshot's skip KL of block 1, recomputed from its weights on the validation windows
    gpt = _tiny_gpt()
    gpt.load_state_dict(load_tensors(tmp_path / "shot" / "snapshots" / "tokens_100.safetensors"))
    subject = GPTSubject(gpt.eval())
    x = val_tokens[: 2 * 4 * 8].view(8, 8)
    with torch.no_grad():
        normal = F.log_softmax(gpt(x), -1)
        with subject.skip(0, 1):
            skipped = F.log_softmax(gpt(x), -1)
    kl = (normal.exp() * (normal - skipped)).sum(-1).mean().item()
    assert len(records[2]["skip_kl"]) == 3 and math.isclose(records[2]["skip_kl"][1], kl, rel_tol=1e-4)
    assert records[2]["skip_kl"][1] > 0


def test_snapshots_survive_an_interruption_at_any_step(tmp_path):
    train_tokens, val_tokens = _tokens(4000, 1), _tokens(400, 2)
    cfg = LMTrainConfig(steps=8, batch_size=4, lr=1e-3, eval_every=2, eval_batches=2)
    whole = train_lm(_tiny_gpt(), train_tokens, val_tokens, cfg, tmp_path / "whole", torch.device("cpu"), 0, progress=False,
                     snapshot_tokens=[64, 128, 256])
    for stop in (2, 4, 7):  # 2 and 4: right after the checkpoint that precedes a snapshot's step; 7: mid-interval

        def interrupt(done: int, stop=stop) -> None:
            if done == stop:
                raise KeyboardInterrupt

        run_dir = tmp_path / f"cut{stop}"
        with pytest.raises(KeyboardInterrupt):
            train_lm(_tiny_gpt(), train_tokens, val_tokens, cfg, run_dir, torch.device("cpu"), 0, progress=False,
                     after_step=interrupt, snapshot_tokens=[64, 128, 256])
        again = train_lm(_tiny_gpt(), train_tokens, val_tokens, cfg, run_dir, torch.device("cpu"), 0, progress=False,
                         snapshot_tokens=[64, 128, 256])
        drop = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
        assert drop(again["snapshots"]) == drop(whole["snapshots"]), stop
        assert len(read_jsonl(run_dir / "token_snapshots.jsonl")) == 3


def test_a_tiny_paper_toy_run_reports_the_issue_rows(tmp_path, corpus):
    out = tmp_path / "run"
    assert main(["reproduce", "forward-self-models", "--preset", "paper-toy", "--out", str(out), "--corpus", str(corpus), *TINY]) == 0
    r = json.loads((out / "results.json").read_text())
    training = r["subject"]["training"]
    assert [s["step"] for s in training["snapshots"]] == [5, 10, 20]  # 64 tokens a step
    assert [e["source"] for e in r["baseline_mlp_sources"]] == [-1]
    assert all(c["loss_slope"]["points"] >= 2 and c["train_steps"] == 10 for c in r["capacity_sweep"])
    report = (out / "report.md").read_text().splitlines()
    first = next(line for line in report[1:] if line.strip())
    assert first.startswith("> **Block 1's skip KL at the end of training is")  # this GPT barely uses block 1: said first
    text = "\n".join(report)
    assert "against the paper's ~81,920,000" in text and "Epochs over the corpus's training split" in text
    assert "| embed (-1) -> 1 | " in text and "| 0.788 |" in text
    assert "MSE slope per 1k steps (last 20%)" in text


def test_a_corpus_too_small_for_the_presets_windows_exits_2_before_training(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    assert main(["reproduce", "forward-self-models", "--preset", "paper-toy", "--out", str(out), "--corpus", str(corpus),
                 "--device", "cpu", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "too small for this run's windows" in err and "--train-sequences 2,048" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()
    assert not (tmp_path / "selfmodels-cache" / "forward-gpt").exists()  # refused before our GPT trained


@pytest.mark.parametrize("argv, message", [
    (["--preset", "no-such"], "invalid choice: 'no-such' (choose from 'full', 'paper-toy', 'quick')"),
    (["--preset", "paper-toy", "--subject", "smollm2"], "preset 'paper-toy' is for a gpt subject"),
    (["--preset", "paper-toy", "--subject.snapshot-tokens", "20000000"], "--subject.snapshot-tokens 20000000"),
])
def test_bad_preset_input_exits_2(tmp_path, corpus, capsys, argv, message):
    out = tmp_path / "run"
    assert status(["forward", "train", "--out", str(out), "--corpus", str(corpus), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_unknown_preset_in_a_config_file_lists_them(tmp_path, corpus, capsys):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"preset": "paper-toys"}))
    assert main(["forward", "train", "--config", str(config), "--out", str(tmp_path / "run"), "--corpus", str(corpus)]) == 2
    err = capsys.readouterr().err
    assert "unknown preset 'paper-toys': known presets: full, paper-toy, quick" in err and len(err.strip().splitlines()) == 1

