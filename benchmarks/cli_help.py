"""How long ``selfmodels ... --help`` takes, beside the time of ``import torch`` alone.

``--help`` builds the whole parser (every command's settings, presets and flags) and imports no torch
(tests/test_cli.py checks ``sys.modules``); before that, every ``--help`` imported torch first. Each
command line runs ``--repeats`` times in a fresh interpreter (``python -m selfmodels.cli ... --help``;
the installed ``selfmodels`` script does the same), interleaved with ``python -c "import torch"``; a
time is the fastest repeat (wall clock of the whole process, interpreter start included). Prints one
JSON line per command line (``seconds``, ``ratio`` = its time / the torch import's), then a summary
line with the torch import's time, the slowest ``--help``, the CPU (``model name`` in /proc/cpuinfo),
its core count and the load average (on a shared machine the times are not figures; say the load).
Usage::

    python benchmarks/cli_help.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from _machine import cpu_name  # benchmarks/ (this script's folder is on sys.path)

COMMANDS = [[], ["forward", "train"], ["forward", "train", "--preset", "quick"], ["forward", "profile"],
            ["selfmodel-lm"], ["regularize"], ["llc", "calibrate"], ["reproduce", "self-modeling-transformers"]]


def seconds(argv: list[str]) -> float:
    began = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs of each command line; the fastest counts")
    args = parser.parse_args()
    torch_argv = [sys.executable, "-c", "import torch"]
    best = {" ".join(c): float("inf") for c in COMMANDS}
    torch_best = float("inf")
    for _ in range(args.repeats):  # interleaved, so a change of load touches every line alike
        torch_best = min(torch_best, seconds(torch_argv))
        for command in COMMANDS:
            name = " ".join(command)
            best[name] = min(best[name], seconds([sys.executable, "-m", "selfmodels.cli", *command, "--help"]))
    for name, value in best.items():
        print(json.dumps({"command": f"selfmodels {name} --help".replace("  ", " "), "seconds": round(value, 3),
                          "ratio_to_import_torch": round(value / torch_best, 3)}))
    slowest = max(best, key=best.get)
    print(json.dumps({"import_torch_seconds": round(torch_best, 3), "slowest_help": f"selfmodels {slowest} --help",
                      "slowest_help_seconds": round(best[slowest], 3),
                      "ratio": round(best[slowest] / torch_best, 3), "repeats": args.repeats, "cpu": cpu_name(),
                      "cores": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()]}))


if __name__ == "__main__":
    main()
