"""The on-the-fly activation stream and training K forward models from it: exact activations, mixing across
passes, epochs and shards, bit-exact resume, K-together == K-alone, refusals."""

import json

import pytest
import torch

from selfmodels.artifacts import read_jsonl
from selfmodels.data.windows import consecutive_windows
from selfmodels.errors import UserError
from selfmodels.forward.model import ForwardModel, ForwardModelConfig
from selfmodels.forward.train import train_many
from selfmodels.training import CHECKPOINT as CHECKPOINT_NAME, METRICS as METRICS_NAME
from selfmodels.forward.stream import ActivationStream
from selfmodels.forward.train import ForwardTrainConfig, train_forward
from selfmodels.nets.gpt import GPT, GPTConfig
from selfmodels.subjects.gpt import GPTSubject

T, D = 8, 16


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny tensors: one intra-op thread is faster and immune to the other jobs on a shared machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def subject():
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=50, block_size=T, n_layer=3, n_head=2, d_model=D)).eval().requires_grad_(False)
    return GPTSubject(gpt)


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, 50, (24 * T + 1,), generator=torch.Generator().manual_seed(1))  # 24 windows


def _stream(subject, tokens, **kw):
    args = {"indices": [-1, 0, 2], "seq_len": T, "batch_size": 4, "buffer_sequences": 8, "pass_sequences": 2, "seed": 3}
    args.update(kw)
    return ActivationStream(subject, tokens, **args)


def test_batches_are_the_subjects_residuals_on_whole_windows(subject, tokens):
    stream = _stream(subject, tokens)
    inputs, _ = consecutive_windows(tokens, T)  # (24, T): the cutting of data.windows
    assert stream.n_windows == 24
    for _ in range(3):
        batch = next(stream)
        assert set(batch) == {-1, 0, 2}
        assert torch.equal(stream.window_inputs(stream.last_batch_windows), inputs[stream.last_batch_windows])
        want = subject.residuals(inputs[stream.last_batch_windows], [-1, 0, 2])
        for k, value in batch.items():
            assert value.dtype == torch.float32 and value.shape == (4, T, D)
            torch.testing.assert_close(value, want[k].float(), rtol=1e-5, atol=1e-6)
    assert stream.tokens_seen == 3 * 4 * T and stream.batches == 3


def test_bos_windows_start_with_bos(subject, tokens):
    stream = _stream(subject, tokens, bos_id=0)
    assert stream.n_windows == 24  # with BOS a window predicts its own T tokens: no extra token needed
    ids = stream.window_inputs([0, 5])
    want, _ = consecutive_windows(tokens, T, bos_id=0)
    assert torch.equal(ids, want[[0, 5]]) and (ids[:, 0] == 0).all()


def test_a_batch_mixes_several_passes(subject, tokens):
    stream = _stream(subject, tokens, batch_size=4, buffer_sequences=8, pass_sequences=2)
    next(stream)
    assert stream.passes == 4  # the buffer was filled by four passes of two before the first draw
    assert len(set(stream.last_batch_passes)) >= 2
    seen = set()
    for _ in range(6):
        next(stream)
        seen |= set(stream.last_batch_passes)
    assert len(seen) >= 6


def _entered(stream):
    """Windows that entered the buffer so far: the drawn ones and those still buffered."""
    return stream.state_dict()["buffer"]


@pytest.mark.parametrize("world", [1, 2])
def test_every_window_once_per_epoch_and_shards_disjoint(subject, tokens, world):
    orders = {}
    for rank in range(world):
        stream = _stream(subject, tokens, shard=(rank, world), pass_sequences=3, batch_size=2, buffer_sequences=5)
        share = stream.windows_per_epoch
        assert share == 24 // world
        drawn = []
        for _ in range(20):
            next(stream)
            drawn += stream.last_batch_windows
        buffered = [w for w, _, _ in _entered(stream)]
        entered = stream.passes * 3
        visiting = torch.cat([stream.window_order(e) for e in range(entered // share + 1)])[:entered].tolist()
        assert sorted(drawn + buffered) == sorted(visiting)  # what the passes took, in the epochs' order
        for e in range(2):
            order = stream.window_order(e)
            assert sorted(order.tolist()) == sorted(set(order.tolist())) and len(order) == share
        assert not torch.equal(stream.window_order(0), stream.window_order(1))  # a new permutation each epoch
        orders[rank] = [set(stream.window_order(e).tolist()) for e in range(2)]
    for e in range(2):
        union = set().union(*(orders[r][e] for r in range(world)))
        assert union == set(range(24))
        assert sum(len(orders[r][e]) for r in range(world)) == 24  # disjoint


def test_state_dict_is_small_json_and_resumes_bit_exactly(subject, tokens):
    a = _stream(subject, tokens, buffer_sequences=9, pass_sequences=4)
    for _ in range(7):  # crosses an epoch boundary (24 windows, 4 per pass)
        next(a)
    state = json.loads(json.dumps(a.state_dict()))
    assert "buffer" in state and len(json.dumps(state)) < 20_000
    b = _stream(subject, tokens, buffer_sequences=9, pass_sequences=4)
    b.load_state_dict(state)
    for _ in range(6):
        x, y = next(a), next(b)
        assert a.last_batch_windows == b.last_batch_windows
        for k in x:
            assert torch.equal(x[k], y[k])
    assert a.state_dict() == b.state_dict()
    c = _stream(subject, tokens, buffer_sequences=9, pass_sequences=5)
    with pytest.raises(UserError, match="pass_sequences"):
        c.load_state_dict(state)


def _models(seed):
    torch.manual_seed(seed)
    cfg = ForwardModelConfig(d_model=D, d_head=8)
    return {"embed->0": (ForwardModel(cfg), -1, 0), "0->2": (ForwardModel(cfg), 0, 2)}


def _cfg(steps):
    return ForwardTrainConfig(steps=steps, batch_size=4, lr=1e-2, log_every=2, checkpoint_every=4)


def test_k_models_together_equal_each_alone(subject, tokens):
    together = _models(0)
    results = train_many(together, _stream(subject, tokens), _cfg(7), torch.device("cpu"), None, progress=False)
    assert set(results) == set(together) and all(r["steps"] == 7 and r["tokens"] == 7 * 4 * T for r in results.values())
    alone = _models(0)
    for name, (model, source, target) in alone.items():
        stream = _stream(subject, tokens)
        batches = ((b[source], b[target]) for b in stream)
        r = train_forward(model, batches, _cfg(7), torch.device("cpu"), progress=False)
        assert r["final_mse"] == results[name]["final_mse"]
        for p, q in zip(model.parameters(), together[name][0].parameters()):
            assert torch.equal(p, q)


def test_interrupted_run_resumes_to_the_same_weights(subject, tokens, tmp_path):
    whole = _models(0)
    train_many(whole, _stream(subject, tokens), _cfg(9), torch.device("cpu"), tmp_path / "whole", progress=False)
    cut = _models(0)
    train_many(cut, _stream(subject, tokens), _cfg(5), torch.device("cpu"), tmp_path / "cut", progress=False)  # stops mid-buffer
    assert (tmp_path / "cut" / CHECKPOINT_NAME).is_file()
    again = _models(1)  # a fresh process: other initial weights, a new stream, everything from the checkpoint
    results = train_many(again, _stream(subject, tokens), _cfg(9), torch.device("cpu"), tmp_path / "cut", progress=False)
    assert results["0->2"]["tokens"] == 4 * 4 * T  # this call's steps only
    for name in whole:
        for p, q in zip(whole[name][0].parameters(), again[name][0].parameters()):
            assert torch.equal(p, q)
    lines = read_jsonl(tmp_path / "cut" / METRICS_NAME)
    # No line twice, none lost: the uninterrupted run's lines, plus the interrupted run's last step (5).
    assert [(r["model"], r["step"]) for r in lines] == [(n, s) for s in (2, 4, 5, 6, 8, 9) for n in whole]
    assert [r for r in lines if r["step"] != 5] == read_jsonl(tmp_path / "whole" / METRICS_NAME)


def test_train_many_refusals(subject, tokens, tmp_path):
    stream = _stream(subject, tokens, indices=[0, 2])
    with pytest.raises(UserError, match="does not compute"):
        train_many(_models(0), stream, _cfg(2), torch.device("cpu"), None, progress=False)
    with pytest.raises(UserError, match="batch size"):
        train_many(_models(0), _stream(subject, tokens), ForwardTrainConfig(steps=2, batch_size=5), torch.device("cpu"), None, progress=False)
    train_many(_models(0), _stream(subject, tokens), _cfg(2), torch.device("cpu"), tmp_path, progress=False)
    other = {"x": _models(0)["0->2"]}
    with pytest.raises(UserError, match="written by another run"):
        train_many(other, _stream(subject, tokens), _cfg(4), torch.device("cpu"), tmp_path, progress=False)


@pytest.mark.parametrize("change, message", [
    ({"buffer_sequences": 3}, "smaller than a batch"),
    ({"pass_sequences": 0}, "pass_sequences"),
    ({"indices": [0, 3]}, "out of range"),
    ({"indices": [-2]}, "out of range"),
    ({"shard": (0, 25)}, "more ranks than shards of data"),
    ({"shard": (2, 2)}, "rank"),
    ({"seq_len": 1}, "at least 2"),
])
def test_stream_refusals(subject, tokens, change, message):
    with pytest.raises(UserError, match=message):
        _stream(subject, tokens, **change)


@pytest.mark.parametrize("stream_tokens", [torch.zeros(0, dtype=torch.long), torch.arange(T)])
def test_empty_or_short_stream_is_refused(subject, stream_tokens):
    with pytest.raises(UserError, match="shorter than one window"):
        _stream(subject, stream_tokens)


def test_autocast_passes_still_return_float32(subject, tokens):
    stream = _stream(subject, tokens, autocast=torch.bfloat16)  # CPU autocast here; bfloat16 on CUDA in practice
    batch = next(stream)
    want = subject.residuals(stream.window_inputs(stream.last_batch_windows), [0])[0]
    assert batch[0].dtype == torch.float32 and batch[0].device == subject.device
    torch.testing.assert_close(batch[0], want, rtol=0.05, atol=0.05)
    with pytest.raises(UserError, match="autocast"):
        _stream(subject, tokens, autocast=torch.float64)
