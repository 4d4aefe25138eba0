"""The activation cache: bit-exact round trip, resume, sequence-level shuffling, refusals."""

import numpy as np
import pytest
import torch

from selfmodels.errors import UserError
from selfmodels.forward.cache import ActivationCache, CacheSpec, write_cache


def _fake_model(ids: torch.Tensor) -> dict[str, torch.Tensor]:
    # Deterministic per-sequence activations so a round trip can be checked against a recomputation.
    base = ids.float()[..., None] * torch.linspace(-1, 1, 6)  # (b, T, 6)
    return {"post_block0": base.sin() * 3.1, "post_block1": base.cos() / 7.0}


def _spec(dtype="float32", model="gpt:abc"):
    return CacheSpec(model=model, tokenizer="tok:1", data_source="unit", layers=["post_block0", "post_block1"], seq_len=5, d_model=6, dtype=dtype)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_round_trip_is_bit_exact(tmp_path, dtype):
    seqs = torch.randint(0, 50, (11, 5), generator=torch.Generator().manual_seed(0))
    cache = write_cache(tmp_path / "c", _spec(dtype), seqs, _fake_model, shard_sequences=4, batch_size=3, progress=False)
    assert cache.num_sequences == 11 and len(cache.shards) == 3
    cache.verify()
    everything = np.arange(11)
    assert torch.equal(cache.rows("token_ids", everything), seqs)
    expected = _fake_model(seqs)
    for layer in ("post_block0", "post_block1"):
        stored = cache.rows(layer, everything)
        want = expected[layer].numpy().astype(np.float16 if dtype == "float16" else np.float32)
        assert torch.equal(stored, torch.from_numpy(want).float())
    # Rows come back in the order asked for, across shards.
    pick = np.array([10, 0, 5, 4])
    assert torch.equal(cache.rows("token_ids", pick), seqs[pick])


def test_batches_shuffle_whole_sequences(tmp_path):
    seqs = torch.arange(40).view(8, 5)
    cache = write_cache(tmp_path / "c", _spec(), seqs, _fake_model, shard_sequences=3, progress=False)
    gen = torch.Generator().manual_seed(1)
    batches = cache.batches("post_block0", "post_block1", 4, gen)
    seen = []
    for _ in range(2):  # one epoch
        src, tgt = next(batches)
        assert src.shape == tgt.shape == (4, 5, 6)
        # Each source row is exactly one cached sequence, kept whole and in token order.
        for row in src:
            matches = [i for i in range(8) if torch.equal(row, _fake_model(seqs[i : i + 1])["post_block0"][0])]
            assert len(matches) == 1
            seen.append(matches[0])
    assert sorted(seen) == list(range(8))
    assert seen != list(range(8))  # shuffled


def test_corrupt_shard_is_refused_with_its_name(tmp_path):
    seqs = torch.randint(0, 50, (6, 5), generator=torch.Generator().manual_seed(0))
    write_cache(tmp_path / "c", _spec(), seqs, _fake_model, shard_sequences=3, progress=False)
    victim = tmp_path / "c" / "shard_00001" / "post_block1.npy"
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF
    victim.write_bytes(bytes(data))
    cache = ActivationCache(tmp_path / "c")
    cache.rows("post_block1", np.array([0, 1, 2]))  # shard 0 is fine
    with pytest.raises(UserError, match="shard_00001.*post_block1.npy.*corrupt"):
        cache.rows("post_block1", np.array([4]))


def test_cache_from_another_model_is_refused(tmp_path):
    seqs = torch.randint(0, 50, (4, 5))
    write_cache(tmp_path / "c", _spec(), seqs, _fake_model, progress=False)
    with pytest.raises(UserError, match="model"):
        ActivationCache(tmp_path / "c", expect={"model": "gpt:other"})
    with pytest.raises(UserError, match="model"):
        write_cache(tmp_path / "c", _spec(model="gpt:other"), seqs, _fake_model, progress=False)


def test_interrupted_collection_resumes(tmp_path):
    seqs = torch.randint(0, 50, (9, 5), generator=torch.Generator().manual_seed(0))
    calls = []

    def flaky(ids):
        calls.append(ids.shape[0])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return _fake_model(ids)

    with pytest.raises(KeyboardInterrupt):
        write_cache(tmp_path / "c", _spec(), seqs, flaky, shard_sequences=3, batch_size=3, progress=False)
    with pytest.raises(UserError, match="unfinished"):
        ActivationCache(tmp_path / "c")
    calls.clear()

    def counting(ids):
        calls.append(ids.shape[0])
        return _fake_model(ids)

    cache = write_cache(tmp_path / "c", _spec(), seqs, counting, shard_sequences=3, batch_size=3, progress=False)
    assert calls == [3]  # only the unfinished third shard was collected again
    assert torch.equal(cache.rows("token_ids", np.arange(9)), seqs)
    assert not list((tmp_path / "c").rglob("*.tmp"))
