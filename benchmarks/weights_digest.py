"""What a subject's identity costs: the weights-in-memory digest of SmolLM2-135M beside hashing its weight file.

Side by side, in one run, on the same weights (the offline SmolLM2-135M, fp32 and bf16 copies):

- ``digest``: :func:`selfmodels.subjects.base.weights_digest` (every tensor rounded to bf16 and SHA-256'd, in
  threads), what ``describe()["weights_sha256"]`` computes the first time, for 1 and 2 hashing threads;
- ``fingerprint``: :func:`selfmodels.subjects.base.weights_fingerprint` (device, pointer, version counter of every
  tensor), what every later ``describe()`` checks before reusing the digest;
- ``file_sha256``: SHA-256 of the fp32 ``model.safetensors`` file (what the identity used to be).

Prints one JSON line per measurement (median of ``--repeats``), with the CPU, the load average and, for the hashes,
the extrapolation to a 1.24B-parameter model (Llama-3.2-1B) by parameter count (hashing is linear in the bytes; the
fingerprint grows with the number of tensors, 272 here and 146 in Llama-3.2-1B, so it is not extrapolated).

    HF_HUB_OFFLINE=1 python benchmarks/weights_digest.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import time
from pathlib import Path

import torch

from selfmodels.runtime import cache_dir
from selfmodels.subjects.base import weights_digest, weights_fingerprint
from selfmodels.subjects.hf_loading import SMOLLM2_CACHE_NAME, load_causal_lm
from _machine import cpu_name  # benchmarks/ (this script's folder is on sys.path)

LLAMA_1B_PARAMS = 1.24e9


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    subject = load_causal_lm("smollm2")
    model = subject.model
    params = sum(p.numel() for p in model.parameters())
    weights = cache_dir() / SMOLLM2_CACHE_NAME / "model.safetensors"
    common = {"model": "SmolLM2-135M", "params": params, "cpu": cpu_name(), "cores": os.cpu_count(),
              "load_average_1min": os.getloadavg()[0]}
    rows = []
    for threads in (1, 2):
        torch.set_num_threads(threads)  # weights_digest hashes in min(8, torch threads) threads
        rows.append({"what": "digest", "dtype": "float32", "threads": threads, "seconds": timed(lambda: weights_digest(model), args.repeats)})
    rows.append({"what": "fingerprint", "dtype": "float32", "seconds": timed(lambda: weights_fingerprint(model), args.repeats)})
    rows.append({"what": "file_sha256", "bytes": weights.stat().st_size, "seconds": timed(lambda: file_sha256(weights), args.repeats)})
    bf16 = model.to(torch.bfloat16)
    rows.append({"what": "digest", "dtype": "bfloat16", "threads": 2, "seconds": timed(lambda: weights_digest(bf16), args.repeats)})
    for row in rows:  # hashing is linear in the bytes; the fingerprint grows with the number of tensors, not their size
        if row["what"] != "fingerprint":
            row["extrapolated_1.24B_seconds"] = round(row["seconds"] * LLAMA_1B_PARAMS / params, 3)
        print(json.dumps({**common, **row}))


if __name__ == "__main__":
    main()
