"""The whole-model profile's per-pair evaluations on 2 ranks against 1, on the same profile, as JSON lines.

The evaluations are independent stages (every pair's forward model and ridge map on the same held-out windows):
under torchrun pair i is evaluated by rank i % world alone, the results gathered. This script runs one profile per
process count, then removes its ``evaluate`` stages and runs it again, so the second run computes only the
evaluations (the subject's opening and the reused stages are in both counts alike): its wall time is the evaluation
time. One process gets ``--threads`` torch threads, each of N ranks ``--threads / N``: the same cores.

Default: the offline SmolLM2-135M (``--subject smollm2``), its quick profile preset with fewer training steps
(``--steps``) and every pair (30 of them) evaluated on ``--eval-sequences`` held-out windows. Prints one line per
process count and a summary line with ``ratio`` = seconds on 1 process / seconds on N ranks, the CPU and the load::

    python benchmarks/profile_ranks.py [--subject smollm2] [--ranks 2] [--steps 20] [--eval-sequences 16] [--threads 2] [--seq-len T]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from _machine import cpu_name  # benchmarks/ (this script's folder is on sys.path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def profile_command(ranks: int, out: Path, args: argparse.Namespace) -> list[str]:
    threads = max(1, args.threads // ranks)
    flags = ["forward", "profile", "--subject", args.subject, "--preset", "quick", "--out", str(out),
             "--train.steps", str(args.steps), "--eval-sequences", str(args.eval_sequences), "--device", "cpu",
             "--threads", str(threads), "--quiet", *(["--seq-len", str(args.seq_len)] if args.seq_len else [])]
    if ranks == 1:
        return [sys.executable, "-m", "selfmodels.cli", *flags]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--master_addr", "127.0.0.1",
            "--master_port", str(_free_port()), "-m", "selfmodels.cli", *flags]


def timed_run(command: list[str], env: dict) -> float:
    began = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subject", default="smollm2")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--eval-sequences", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=None, help="tokens per window (default: the preset's, 128)")
    args = parser.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo",
           "TOKENIZERS_PARALLELISM": "false", "MPLBACKEND": "Agg"}
    seconds = {}
    with tempfile.TemporaryDirectory() as tmp:
        for ranks in (1, args.ranks):
            out = Path(tmp) / f"ranks{ranks}"
            whole = timed_run(profile_command(ranks, out, args), env)
            for stage in (out / "stages").glob("evaluate_*"):
                shutil.rmtree(stage)
            seconds[ranks] = timed_run(profile_command(ranks, out, args), env)
            rows = json.loads((out / "results.json").read_text())["rows"]
            print(json.dumps({"benchmark": "profile_evaluations", "ranks": ranks, "threads_per_rank": max(1, args.threads // ranks),
                              "pairs": len(rows), "eval_sequences": args.eval_sequences,
                              "evaluation_run_seconds": round(seconds[ranks], 2), "whole_profile_seconds": round(whole, 2)}))
    print(json.dumps({"benchmark": "profile_evaluations_summary", "subject": args.subject, "ranks": args.ranks,
                      "ratio": round(seconds[1] / seconds[args.ranks], 3), "cpu": cpu_name(), "cpu_count": os.cpu_count(),
                      "load_average": os.getloadavg()}))


if __name__ == "__main__":
    main()
