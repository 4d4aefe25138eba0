"""Start tests/distributed/dist_harness.py under torchrun: two processes on this machine, gloo on CPU,
talking over 127.0.0.1 on a free port, with a short process-group timeout and a hard time limit."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
SRC = HERE.parents[1] / "src"


@dataclass
class Launch:
    returncode: int
    output: str  # stdout and stderr of torchrun and both ranks
    seconds: float
    out: Path

    def outcome(self, rank: int) -> dict:
        return json.loads((self.out / f"outcome.rank{rank}.json").read_text())

    def writes(self, rank: int) -> list[tuple[str, str]]:
        return [tuple(event) for event in json.loads((self.out / f"writes.rank{rank}.json").read_text())]

    def result(self, rank: int):
        return torch.load(self.out / f"result.rank{rank}.pt", weights_only=False)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(scenario: str, out: Path, *args: str, env: dict | None = None, timeout: float = 90) -> Launch:
    """Run the harness's ``scenario`` on 2 ranks; kill the whole process group if it outlives ``timeout``."""
    out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(_free_port()), str(HERE / "dist_harness.py"), scenario, str(out), *args]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])),
                   "OMP_NUM_THREADS": "1", "SELFMODELS_DIST_TIMEOUT": "60", "HF_HUB_OFFLINE": "1",
                   "MPLBACKEND": "Agg", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    if sys.platform.startswith("linux"):
        environment.setdefault("GLOO_SOCKET_IFNAME", "lo")  # gloo's connections stay on the loopback interface
    began = time.perf_counter()
    process = subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"torchrun {scenario} did not end within {timeout} s (a hang):\n{output[-4000:]}")
    return Launch(process.returncode, output, time.perf_counter() - began, out)


@pytest.fixture(autouse=True)
def one_thread():
    """The one-process references run on one thread, as each rank does (OMP_NUM_THREADS=1): two threads
    on two busy shared cores make these tiny models many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def torchrun():
    """``torchrun(scenario, out, *args, env=None, timeout=90) -> Launch``."""
    return launch
