"""Two processes under torchrun (gloo, CPU) give what one process gives, and only rank 0 writes what the
ranks share: the forward-model trainer (DDP), the LLC's chains, the self-modeling grid and the llc command.

Each test starts tests/distributed/dist_harness.py under torchrun and builds the one-process reference here."""

from __future__ import annotations

import shutil

import pytest
import torch

import dist_harness as harness
from selfmodels.artifacts import read_json, read_jsonl


def _files(writes) -> set[str]:
    """The files a rank wrote (renamed into place or opened for writing), temporary files left out."""
    return {path for event, path in writes if event != "os.remove" and not path.rsplit("/", 1)[-1].startswith(".")}


def _without_key_bias(name: str, value: torch.Tensor) -> torch.Tensor:
    """The key bias (the middle third of the fused QKV bias) has a gradient of exactly zero in exact
    arithmetic (softmax ignores a constant added to every score of a query), so what it gets is
    round-off, which AdamW scales up to full-size steps: it differs with the order of any sum (here by
    about 2e-4) and is left out; every other weight agrees to 1e-5 (in practice to about 1e-7)."""
    if name.endswith("attn.qkv.bias"):
        q, _, v = value.chunk(3)
        return torch.cat([q, v])
    return value


def test_forward_model_trained_on_two_ranks_equals_one_rank_on_both_ranks_batches(torchrun, tmp_path):
    from selfmodels.forward.train import train_forward

    run = torchrun("forward", tmp_path / "dist")
    assert run.returncode == 0, run.output
    # One process, the same 24 steps, each on rank 0's and rank 1's batches concatenated (2 x 4 sequences).
    # The batches are the same size, so the MSE (a mean) over the concatenation is the mean of the two
    # ranks' MSEs, and its gradient the mean of theirs: what DDP's all-reduce averages.
    ranks = [harness.forward_batches(harness.forward_generator(rank)) for rank in (0, 1)]

    def both():
        while True:
            (x0, y0), (x1, y1) = next(ranks[0]), next(ranks[1])
            yield torch.cat([x0, x1]), torch.cat([y0, y1])

    reference = harness.forward_model()
    info = train_forward(reference, both(), harness.forward_config(batch_size=2 * harness.FORWARD_BATCH),
                         torch.device("cpu"), progress=False)
    for rank in (0, 1):
        result = run.result(rank)
        for name, value in reference.state_dict().items():
            torch.testing.assert_close(_without_key_bias(name, result["state"][name]), _without_key_bias(name, value),
                                       rtol=0, atol=1e-5, msg=f"rank {rank}: {name}")
        assert result["info"]["final_mse"] == pytest.approx(info["final_mse"], abs=1e-5)  # the ranks' mean
        assert result["info"]["tokens"] == 12 * 2 * harness.FORWARD_BATCH * 3  # the resumed half, both ranks
    # The curve and checkpoints are rank 0's alone; the resumed run did not repeat the curve's lines.
    assert _files(run.writes(1)) == set()
    assert _files(run.writes(0)) == {"fm/metrics.jsonl", "fm/checkpoint.safetensors"}
    assert [r["step"] for r in read_jsonl(run.out / "work" / "fm" / "metrics.jsonl")] == [5, 10, 12, 15, 20, 24]


def test_lm_self_modeling_trained_on_two_ranks_equals_one_rank_on_both_ranks_windows(torchrun, tmp_path):
    """The LM trainer under torchrun (the LM self-modeling runs): each rank draws its own windows and the loop
    averages the gradients, so two ranks end where one process fed both ranks' windows each step ends."""
    from selfmodels.subjects.lm_training import WindowDraws, train_language_model

    run = torchrun("lm", tmp_path / "dist")
    assert run.returncode == 0, run.output
    subject, objective, tokens, val, cfg = harness.lm_problem()
    draws = WindowDraws(tokens, harness.STREAM_T, harness.LM_BATCH, [harness.lm_generator(r) for r in (0, 1)])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank runs (OMP_NUM_THREADS=1): the same kernels' summation order
    try:
        info = train_language_model(subject, objective, 1.0, cfg, tokens, val, harness.STREAM_T, tmp_path / "one",
                                    harness.LM_SEED, progress=False, draws=draws)
    finally:
        torch.set_num_threads(threads)
    assert not torch.equal(*(next(WindowDraws(tokens, harness.STREAM_T, 2, [harness.lm_generator(r)]))[0] for r in (0, 1)))
    for rank in (0, 1):
        result = run.result(rank)
        for part, module in (("main", subject.model), ("aux", objective)):
            for name, value in module.state_dict().items():
                torch.testing.assert_close(_without_key_bias(name, result[part][name]), _without_key_bias(name, value),
                                           rtol=0, atol=1e-5, msg=lambda m: f"rank {rank}: {part} {name}: {m}")
        assert result["info"]["val_loss"] == pytest.approx(info["val_loss"], abs=1e-5)
        assert result["info"]["train_loss"] == pytest.approx(info["train_loss"], abs=1e-5)  # the ranks' mean
    assert _files(run.writes(1)) == set()  # curve and checkpoint: rank 0's alone
    assert _files(run.writes(0)) == {"lm/metrics.jsonl", "lm/checkpoint.safetensors"}
    assert [r["step"] for r in read_jsonl(run.out / "work" / "lm" / "metrics.jsonl")] == [4, 6, 8, 10, 12]


class _BothShards:
    """One process's view of what two ranks stream: each batch is shard 0's and shard 1's batches concatenated."""

    def __init__(self, subject, tokens):
        self.shards = [harness.stream_of(subject, tokens, (rank, 2)) for rank in (0, 1)]
        self.subject, self.indices = subject, self.shards[0].indices
        self.batch_size, self.rank, self.world = 2 * harness.STREAM_BATCH, 0, 1

    def __next__(self):
        a, b = (next(shard) for shard in self.shards)
        return {k: torch.cat([a[k], b[k]]) for k in a}


def test_many_forward_models_streamed_on_two_ranks_equal_one_rank_on_both_shards(torchrun, tmp_path):
    from selfmodels.forward.train import train_many

    run = torchrun("stream", tmp_path / "dist")
    assert run.returncode == 0, run.output
    subject, tokens = harness.stream_subject()
    both = _BothShards(subject, tokens)
    reference = harness.stream_models()
    info = train_many(reference, both, harness.forward_config(steps=harness.STREAM_STEPS, batch_size=both.batch_size),
                      torch.device("cpu"), None, progress=False)
    # The shards really differ (each rank streams its own windows), and each batch mixes several subject passes.
    assert not torch.equal(next(both.shards[0])[0], next(both.shards[1])[0])
    for rank in (0, 1):
        result = run.result(rank)
        for name, (model, _, _) in reference.items():
            for key, value in model.state_dict().items():
                torch.testing.assert_close(_without_key_bias(key, result["states"][name][key]), _without_key_bias(key, value),
                                           rtol=0, atol=1e-5, msg=f"rank {rank}: {name} {key}")
            assert result["info"][name]["final_mse"] == pytest.approx(info[name]["final_mse"], abs=1e-5)
            assert result["info"][name]["tokens"] == harness.STREAM_STEPS // 2 * 2 * harness.STREAM_BATCH * harness.STREAM_T
    assert _files(run.writes(1)) == set()  # the checkpoint (every rank's stream state) and curves: rank 0's alone
    assert _files(run.writes(0)) == {"many/metrics.jsonl", "many/checkpoint.safetensors"}
    steps = [r["step"] for r in read_jsonl(run.out / "work" / "many" / "metrics.jsonl") if r["model"] == "a"]
    assert steps == [5, 10, 15, 20]


def test_llc_chains_split_across_two_ranks_equal_the_same_chains_on_one(torchrun, tmp_path):
    from selfmodels.complexity.llc import cross_entropy, estimate_llc

    run = torchrun("llc", tmp_path / "dist")
    assert run.returncode == 0, run.output
    model, data, config = harness.llc_problem()  # 3 chains: 0 and 2 on rank 0, 1 on rank 1
    reference = harness.llc_summary(estimate_llc(model, data, cross_entropy, config, progress=False))
    for rank in (0, 1):  # every rank returns the whole estimate
        result = run.result(rank)
        torch.testing.assert_close(result["traces"], reference["traces"], rtol=1e-12, atol=0)
        assert result["flags"] == reference["flags"] and result["init_loss"] == reference["init_loss"]
        assert result["mean"] == pytest.approx(reference["mean"], rel=1e-10)
        assert result["per_chain"] == pytest.approx(reference["per_chain"], rel=1e-10)
        assert run.writes(rank) == []


def test_grid_runs_split_across_two_ranks_equal_one_rank_and_rank_0_alone_writes_the_report(torchrun, tmp_path):
    from selfmodels.selfmodeling.grid import expand, run_grid

    run = torchrun("grid", tmp_path / "dist")
    assert run.returncode == 0, run.output
    reference = run_grid(harness.grid_config(), tmp_path / "one", progress=False, data=harness.tiny_data())

    def comparable(records):  # everything but the LLC's wall-clock time
        return [{k: v for k, v in r.items() if k != "llc_seconds"} for r in records]

    for rank in (0, 1):
        assert comparable(run.result(rank)["runs"]) == comparable(reference)
    on_disk = read_json(run.out / "work" / "grid" / "results.json")
    assert comparable(on_disk["runs"]) == comparable(reference) and on_disk["settings"]["processes"] == 2

    # Rank r trained runs r, r + 2: each run directory was written by one rank, and what the runs share
    # (results.json, report.md, the plots) by rank 0 alone, once.
    names = [c.name for c in expand(harness.grid_config())]
    written = [_files(run.writes(rank)) for rank in (0, 1)]
    assert not written[0] & written[1]
    for rank in (0, 1):
        assert {path.split("/")[2] for path in written[rank] if path.startswith("grid/runs/")} == set(names[rank::2])
    shared = {path for path in written[0] if not path.startswith("grid/runs/")}
    assert {"grid/results.json", "grid/report.md", "grid/llc_vs_strength.png"} <= shared
    renames = [path for event, path in run.writes(0) if event == "os.rename"]
    assert all(renames.count(path) == 1 for path in shared)
    assert all(path.startswith("grid/runs/") for path in written[1])


def test_lm_grid_runs_split_across_two_ranks_equal_one_process_and_rank_0_alone_writes(torchrun, tmp_path, monkeypatch):
    from selfmodels.lm_selfmodeling.grid import run_grid

    corpus = tmp_path / "corpus.txt"
    monkeypatch.setenv("SELFMODELS_CACHE", str(tmp_path / "cache"))  # torchrun's ranks inherit it
    grid = harness.lm_grid(corpus)
    run = torchrun("lm-grid", tmp_path / "dist", str(corpus), env={"SELFMODELS_CACHE": str(tmp_path / "cache")})
    assert run.returncode == 0, run.output
    reference = run_grid(grid, tmp_path / "one" / "lm-grid", progress=False)

    def comparable(records):  # everything but wall-clock times
        return [{k: v for k, v in r.items() if "seconds" not in k} for r in records]

    for rank in (0, 1):
        assert comparable(run.result(rank)["runs"]) == comparable(reference["runs"])
        assert run.result(rank)["settings"]["processes"] == 2
    # Run i was trained by rank i % 2 (the matched snapshots are shared out the same way, into the baselines'
    # directories); the shared files were written by rank 0 alone.
    names = [name for name, _ in grid.runs()]
    written = [_files(run.writes(rank)) for rank in (0, 1)]
    assert not written[0] & written[1]
    for i, name in enumerate(names):
        assert f"lm-grid/runs/{name}/result.json" in written[i % 2]
    assert {"lm-grid/results.json", "lm-grid/report.md"} <= written[0]
    assert all(p.startswith("lm-grid/runs/") for p in written[1])


def _assert_close(a, b, path="", rel=1e-6) -> None:
    """Equal JSON values, numbers to a relative ``rel`` (the same float32 chains, grouped differently)."""
    if isinstance(a, float) and isinstance(b, float):
        assert a == pytest.approx(b, rel=rel), path
    elif isinstance(a, (list, dict)):
        assert type(a) is type(b) and len(a) == len(b), path
        for key in (a if isinstance(a, dict) else range(len(a))):
            _assert_close(a[key], b[key], f"{path}/{key}", rel)
    else:
        assert a == b, path


def test_llc_command_and_calibration_on_two_ranks_match_one_and_rank_0_alone_writes(torchrun, tmp_path):
    from selfmodels.cli import main
    from selfmodels.selfmodeling.runs import load_data, resolve_run, run_one

    config = resolve_run("mnist", hidden=8, epochs=1, source="offline")  # the offline MNIST subset
    run_dir = tmp_path / "dist" / "work" / "run"
    run_one(config, load_data(config.data), run_dir, progress=False)
    one = tmp_path / "one" / "run"
    shutil.copytree(run_dir, one)
    estimate = ["--draws", "10", "--chains", "2", "--threads", "1", "--quiet"]
    calibration = ["--epsilons", "1e-5", "1e-4", "--gammas", "100", "--draws", "8", "--chains", "2", "--threads", "1", "--quiet"]

    run = torchrun("cli", tmp_path / "dist", "llc", str(run_dir), *estimate, "::", "llc", "calibrate", str(run_dir), *calibration)
    assert run.returncode == 0, run.output
    assert main(["llc", str(one), *estimate]) == 0
    assert main(["llc", "calibrate", str(one), *calibration]) == 0

    keys = ("llc_mean", "llc_std", "llc_raw_mean", "llc_flags", "llc_per_chain", "llc_loss_at_wstar", "llc_loss_traces")
    two, ref = read_json(run_dir / "llc.json"), read_json(one / "llc.json")
    # The LLC is n beta (mean L - L(w*)): the difference amplifies the losses' float32 rounding (1e-7 relative) by
    # L / (mean L - L(w*)), here about 10, so its numbers agree to 1e-5, not 1e-6 (measured: 2.2e-6 apart).
    _assert_close({k: two[k] for k in keys}, {k: ref[k] for k in keys}, rel=1e-5)
    cells = [read_json(d / "llc_calibration" / "calibration.json") for d in (run_dir, one)]
    _assert_close([{k: c[k] for k in keys[:-1]} for c in cells[0]], [{k: c[k] for k in keys[:-1]} for c in cells[1]],
                  rel=1e-5)
    assert _files(run.writes(1)) == set()
    assert _files(run.writes(0)) == {"run/llc.json", "run/llc_trace.png", *(f"run/llc_calibration/{name}" for name in (
        "calibration.jsonl", "calibration.json", "calibration.md", "calibration.png", "traces.safetensors"))}
    assert run.output.count("wrote") == 2  # one line per command, from rank 0


def _tiny_runs():
    """tests/forward's tiny subjects and corpora (its tiny_runs module)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("tiny_runs", Path(__file__).resolve().parents[1] / "forward" / "tiny_runs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_profile_and_streamed_pipeline_on_two_ranks_train_data_parallel_and_rank_0_alone_writes(torchrun, tmp_path):
    tiny = _tiny_runs()
    model_dir, corpus = tiny.save_tiny_hf(tmp_path / "tiny-llama", "llama"), tiny.write_corpus(tmp_path)
    profile = ["forward", "profile", "--main", str(model_dir), "--corpus", str(corpus), "--out", str(tmp_path / "dist" / "work" / "profile"),
               "--quick", "--corpus.max-chars", "20000", "--model.d-head", "16", "--train.steps", "6", "--train.batch-size", "4",
               "--seq-len", "16", "--buffer-sequences", "8", "--pass-sequences", "4", "--ridge-sequences", "8",
               "--eval-sequences", "4", "--eval-batch", "2", "--decomposition-sequences", "2",
               "--device", "cpu", "--threads", "1", "--no-progress"]
    train = ["forward", "train", "--main", str(model_dir), "--corpus", str(corpus), "--out", str(tmp_path / "dist" / "work" / "pair"),
             "--source", "0", "--target", "1", "--training", "stream", "--buffer-sequences", "8", "--pass-sequences", "4", "--no-baseline.enabled",
             "--analysis-sequences", "0", *tiny.HF_FLAGS]
    # Our GPT, trained here with a co-trained forward model: rank 0 trains it alone (the others wait, then read it).
    gpt = ["forward", "train", "--main", "gpt", "--corpus", str(corpus), "--out", str(tmp_path / "dist" / "work" / "gpt"),
           "--source", "0", "--target", "1", "--no-baseline.enabled", *tiny.GPT_FLAGS]
    run = torchrun("cli", tmp_path / "dist", *profile, "::", *train, "::", *profile, "::", *gpt,
                   env={"SELFMODELS_CACHE": str(tmp_path / "cache")}, timeout=300)
    assert run.returncode == 0, run.output
    assert read_json(run.out / "work" / "gpt" / "results.json")["subject"]["training"]["steps"] == 20

    r = read_json(run.out / "work" / "profile" / "results.json")
    assert [(row["source"], row["target"]) for row in r["rows"]] == [(-1, 0), (0, 1), (1, 2), (2, 3)]
    assert r["stream"]["ranks"] == 2 and r["data"]["tokens_per_model"] == 6 * 2 * 4 * 16  # steps x ranks x batch x seq_len
    assert not [name for name, stage in r["stages"].items() if stage["computed"]]  # the second profile reused every stage
    pair = read_json(run.out / "work" / "pair" / "results.json")
    assert pair["forward_model"]["train"]["tokens"] == 6 * 2 * 4 * 16
    assert pair["pair"]["training"] == "frozen subject, activations streamed through a shuffle buffer"
    # The profile's per-pair evaluations are independent stages, shared out: pair i by rank i % 2 alone. Rank 1 wrote
    # its two evaluations (the second profile read them back) and nothing else.
    rank1 = _files(run.writes(1))
    assert {path.split("/")[2].rsplit("-", 1)[0] for path in rank1} == {"evaluate_0-_1", "evaluate_2-_3"}
    assert all(path.startswith("profile/stages/") and path.endswith("/result.json") for path in rank1)
    assert not rank1 & _files(run.writes(0))  # every other stage, result and report: rank 0's alone
    renames = [path for event, path in run.writes(0) if event == "os.rename"]
    assert renames.count("pair/results.json") == 1 and renames.count("profile/results.json") == 2
