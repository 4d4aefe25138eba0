"""Finished work kept under a key derived from all of its inputs, so nothing stale is ever read back.

Every area keeps its units of work this way (the forward pipeline's and the profile's stages, the runs of the
classifier and language-model grids): "resume" and "stale" mean the same everywhere.

A stage named ``name`` with inputs ``inputs`` (anything JSON-ready: settings, the subject's weight hash,
the keys of the stages it reads) lives in ``OUT/stages/<name>-<key>/``, ``key`` being a hash of the
inputs. Its ``result.json`` is written last, so a directory without it is unfinished work: the stage runs
again there and may resume from the checkpoints it left. A changed setting changes the key of every stage
that depends on it, directly or through an upstream key, and only of those; a rerun with the old settings
finds the old results again.

Under ``torchrun`` the ranks share the output directory and walk the same stages in the same order. A stage
is computed by rank 0 while the other ranks wait, then read back by them; a stage that trains data-parallel
(``every_rank=True``) is computed by every rank together, rank 0 deciding whether it is done and writing its
``result.json``.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Callable

from selfmodels import distributed
from selfmodels.artifacts import read_json, write_json

FORMAT = 1  # part of every key: a change in what a stage computes must not reuse old results


def content_key(obj) -> str:
    """A short stable hash of a JSON-ready object: the first 16 hex digits of sha256 of its sorted-key JSON."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class StageStore:
    """Runs and remembers stages under ``root/stages``; ``log`` lists what this run computed and reused."""

    def __init__(self, root: Path):
        self.root = Path(root) / "stages"
        self.log: dict[str, dict] = {}

    def key(self, name: str, inputs) -> str:
        return content_key({"stage": name, "format": FORMAT, "inputs": inputs})

    def run(self, name: str, inputs, compute: Callable[[Path], dict], every_rank: bool = False) -> tuple[dict, Path, str]:
        """``compute(directory) -> result`` once per distinct inputs; returns (result, directory, key).

        Across ranks: rank 0 computes first (the others then find the result), or, with ``every_rank``, all
        ranks compute together; inside ``compute`` only rank 0 may write files the ranks share."""
        key = self.key(name, inputs)
        directory = self.root / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}-{key}"
        done = directory / "result.json"
        if distributed.world()[1] == 1:
            return self._run_here(name, key, directory, compute)
        if not every_rank:
            with distributed.main_first():
                if not distributed.is_main():  # rank 0 has finished the stage: read it back
                    return self._run_here(name, key, directory, compute)
                with distributed.solo():  # rank 0 works alone; nothing in the stage waits for the others
                    return self._run_here(name, key, directory, compute)
        if distributed.all_gather_object(done.is_file())[0]:  # rank 0's view decides for every rank
            return self._run_here(name, key, directory, compute)
        if distributed.is_main():
            directory.mkdir(parents=True, exist_ok=True)
        distributed.barrier()
        result = compute(directory)
        if distributed.is_main():
            write_json(done, result)
        distributed.barrier()  # the stage's files are in place before any rank reads them
        self.log[name] = {"key": key, "computed": True}
        return result, directory, key

    def _run_here(self, name: str, key: str, directory: Path, compute: Callable[[Path], dict]) -> tuple[dict, Path, str]:
        done = directory / "result.json"
        if done.is_file():
            self.log[name] = {"key": key, "computed": False}
            return read_json(done), directory, key
        directory.mkdir(parents=True, exist_ok=True)
        result = compute(directory)
        write_json(done, result)
        self.log[name] = {"key": key, "computed": True}
        return result, directory, key
