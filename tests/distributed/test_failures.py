"""A rank that fails ends the whole run, within the timeout, with one clear message; no rank hangs.

The failure is injected by the test harness (HARNESS_FAIL_RANK, read by dist_harness.py only). With
HARNESS_RECORD_ONLY=1 every rank records its outcome and exits 0, so that torchrun does not end the
other ranks before they have recorded what they saw: that shows the message reaching every rank.
Without it, the run ends as ``selfmodels`` under torchrun does."""

from __future__ import annotations

import re

import pytest

RECORD = {"HARNESS_RECORD_ONLY": "1"}


@pytest.mark.parametrize("fail_rank", [0, 1])
def test_a_user_error_on_one_rank_reaches_the_other_at_its_next_collective_point(torchrun, tmp_path, fail_rank):
    # The failing rank raises before its LLC chains; the other runs its chains and waits to gather them.
    run = torchrun("fail-llc", tmp_path, env={**RECORD, "HARNESS_FAIL_RANK": str(fail_rank)}, timeout=60)
    other = 1 - fail_rank
    assert run.outcome(fail_rank) == {**run.outcome(fail_rank), "status": 2, "message": f"rank {fail_rank}: injected failure"}
    assert run.outcome(other) == {**run.outcome(other), "status": 2, "message": f"rank {fail_rank} failed: injected failure"}
    assert run.outcome(other)["seconds"] < 30
    assert "Traceback" not in run.output  # a UserError is one line on each rank


def test_a_crash_inside_ddp_training_is_reported_on_the_rank_left_waiting_in_the_all_reduce(torchrun, tmp_path):
    # Rank 1's batches run out with an error at step 6; rank 0 is then inside DDP's gradient all-reduce.
    run = torchrun("fail-forward", tmp_path, env={**RECORD, "HARNESS_FAIL_RANK": "1"}, timeout=60)
    assert run.outcome(1)["status"] == 1 and run.outcome(1)["message"] == "RuntimeError: injected failure"
    assert "Traceback" in run.output  # a bug keeps its traceback, on its own rank
    assert run.outcome(0)["status"] == 2
    assert run.outcome(0)["message"] == "rank 1 failed: RuntimeError: injected failure"
    assert run.outcome(0)["seconds"] < 30


def test_a_failed_rank_ends_the_whole_torchrun_with_its_message(torchrun, tmp_path):
    run = torchrun("fail-llc", tmp_path, env={"HARNESS_FAIL_RANK": "1"}, timeout=60)
    assert run.returncode != 0 and run.seconds < 30
    assert "selfmodels: error: rank 1: injected failure" in run.output
    assert not re.search(r"\[rank\d\]: Traceback", run.output)


def test_a_rank_that_stops_answering_makes_the_others_give_up_after_the_timeout(torchrun, tmp_path):
    # Rank 1 sleeps for two minutes before its first collective; with a 3 s timeout rank 0 gives up in
    # DDP's set-up, exits, and torchrun ends rank 1.
    run = torchrun("stuck", tmp_path, env={"SELFMODELS_DIST_TIMEOUT": "3"}, timeout=60)
    assert run.returncode != 0 and run.seconds < 30
    outcome = run.outcome(0)
    assert outcome["status"] == 2 and outcome["seconds"] < 20
    assert outcome["message"].startswith("rank 0: a collective operation with the other ranks failed")
    assert "SELFMODELS_DIST_TIMEOUT=3 s" in outcome["message"]
    assert "selfmodels: error: rank 0: a collective operation" in run.output
