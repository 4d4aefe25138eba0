"""The closed loop's pre-grid checks of one trained open-loop run for other indices (i, m, j), without retraining.

An open-loop network does not depend on F's indices (nothing is injected), so one trained run answers, for every
(i, m, j): the KL of skipping blocks m+1..j (``checks.skip_kl``, on the run's evaluation windows) and a fresh
observer i -> j (the run's battery settings, LLC and robustness left out): its R² on h_j - h_m and its cosine.
Printed as JSON lines beside the rules (skip KL >= 0.3, R² >= 0.3, cosine <= 0.99). Used to choose a preset's size
and indices before a grid (docs/closed-loop.md, "The quick grid, measured").

    python benchmarks/closed_loop_checks.py runs/grid/runs/open-loop-seed0 0,1,3 0,0,3 -1,0,3
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a finished open-loop run directory (selfmodels closed-loop --out)")
    parser.add_argument("indices", nargs="+", help="i,m,j triples, e.g. 0,1,3")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from selfmodels.closed_loop.battery import measure_battery
    from selfmodels.closed_loop.battery_config import RobustnessSettings
    from selfmodels.closed_loop.build import build_closed_loop
    from selfmodels.closed_loop.checks import RULES, check, skip_kl
    from selfmodels.closed_loop.config import LoopConfig
    from selfmodels.closed_loop.grid import run_data
    from selfmodels.closed_loop.load import _config, load_closed_loop

    cfg, _ = _config(args.run)
    data, trained = run_data(cfg), load_closed_loop(args.run)
    battery = dataclasses.replace(cfg.battery, estimate_llc=False,
                                  robustness=RobustnessSettings(directions=1, radii=[0.1], windows=1))
    for triple in args.indices:
        i, m, j = (int(v) for v in triple.split(","))
        loop = LoopConfig(condition="open-loop", source=i, inject=m, target=j)
        closed = build_closed_loop(trained.network, loop, cfg.forward, cfg.seed, tokenizer=trained.tokenizer)
        closed.eval().requires_grad_(False)
        observer = measure_battery(closed, data, battery)["observer"]["on"]
        values = {"skip_kl": skip_kl(closed, data.eval_x, battery.batch_size), "update_r2": observer["update_r2"],
                  "cosine": observer["cosine"]}
        print(json.dumps({"run": str(args.run), "indices": [i, m, j], **{k: round(v, 4) for k, v in values.items()},
                          "skip_cosine": round(observer["skip_cosine"], 4), "passes": check(values)["passes"],
                          "rules": {k: f"{op} {bound}" for k, (op, bound, _) in RULES.items()}}), flush=True)


if __name__ == "__main__":
    main()
