"""selfmodels.distributed in one process: torchrun's environment read, shards, the timeout, devices,
rank-0-only helpers, and the refusals that need no second process."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from selfmodels import distributed
from selfmodels.errors import UserError


@pytest.fixture
def two_ranks(monkeypatch):
    """This process as rank ``rank`` of 2, as torchrun would set it (no process group)."""
    def as_rank(rank: int):
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    return as_rank


def test_one_process_without_torchrun(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.world() == (0, 1) and distributed.is_main() and distributed.local_rank() == 0
    assert distributed.all_gather_object({"a": 1}) == [{"a": 1}]
    distributed.barrier()
    assert distributed.run_main(lambda x, y=0: x + y, 2, y=3) == 5
    with distributed.init("cpu"):
        assert not torch.distributed.is_initialized()  # nothing to set up for one process
    assert distributed.main_only(lambda: "written")() == "written"


def test_the_environment_torchrun_sets(two_ranks, monkeypatch):
    two_ranks(1)
    assert distributed.world() == (1, 2) and not distributed.is_main() and distributed.local_rank() == 1
    assert distributed.main_only(lambda: "written")() is None
    with distributed.solo():  # work this rank does alone
        assert distributed.world() == (0, 1) and distributed.all_gather_object(7) == [7]
    assert distributed.world() == (1, 2)
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(UserError, match="RANK=2 and WORLD_SIZE=2 do not fit"):
        distributed.world()
    monkeypatch.setenv("RANK", "one")
    with pytest.raises(UserError, match="RANK='one' is not an integer"):
        distributed.world()


def test_shard_deals_items_round_robin_and_refuses_more_ranks_than_items():
    assert distributed.shard(range(7), 0, 3) == [0, 3, 6]
    assert distributed.shard(range(7), 2, 3) == [2, 5]
    assert distributed.shard("ab", 0, 1) == ["a", "b"]
    with pytest.raises(UserError, match="more ranks than shards of data: 2 runs for 3 ranks"):
        distributed.shard(["x", "y"], 0, 3, what="runs")


def test_timeout_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv(distributed.TIMEOUT_VARIABLE, raising=False)
    assert distributed.timeout_seconds() == 300
    monkeypatch.setenv(distributed.TIMEOUT_VARIABLE, "12.5")
    assert distributed.timeout_seconds() == 12.5
    for bad in ("0", "-1", "soon", "inf"):
        monkeypatch.setenv(distributed.TIMEOUT_VARIABLE, bad)
        with pytest.raises(UserError, match="SELFMODELS_DIST_TIMEOUT"):
            distributed.timeout_seconds()


def test_devices_one_gpu_per_rank(two_ranks):
    two_ranks(1)
    assert distributed.local_device("cpu") == torch.device("cpu")
    visible = torch.cuda.device_count()
    if visible < 2:  # this machine (a CPU-only one: 0)
        with pytest.raises(UserError, match=f"torchrun started 2 processes but only {visible} CUDA devices are visible"):
            distributed.local_device("cuda")
    else:
        assert distributed.local_device("cuda:0") == torch.device("cuda", 1)  # LOCAL_RANK's GPU


def test_collectives_need_the_process_group(two_ranks):
    two_ranks(0)
    with pytest.raises(UserError, match="process group is not set up"):
        distributed.barrier()


def test_more_ranks_than_llc_chains_is_refused(two_ranks):
    from selfmodels.complexity.llc import LLCConfig, cross_entropy, estimate_llc

    two_ranks(0)
    x, y = torch.randn(16, 3), torch.arange(16) % 2
    with pytest.raises(UserError, match="more ranks than shards of data: 1 LLC chains for 2 ranks"):
        estimate_llc(nn.Linear(3, 2), (x, y), cross_entropy, LLCConfig(chains=1, draws=2, batch_size=8), progress=False)


def test_grid_workers_and_torchrun_do_not_mix(two_ranks, tmp_path):
    from selfmodels.selfmodeling.grid import GridConfig, run_grid

    two_ranks(0)
    grid = GridConfig(task="mnist", hidden=[4], methods=["baseline"], seeds=[0, 1], epochs=1, workers=2)
    with pytest.raises(UserError, match="--workers 2 .* under torchrun .* use --workers 1"):
        run_grid(grid, tmp_path, progress=False, data=object())
    assert not any(tmp_path.iterdir())


def test_reproduce_trains_one_run_per_process_under_torchrun(two_ranks):
    from selfmodels.selfmodeling.commands import _default_workers

    two_ranks(0)
    assert _default_workers() == 1
