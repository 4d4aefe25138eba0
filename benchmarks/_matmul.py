"""The fp32 matmul rate that the benchmarks' "share of peak" figures divide by."""

from __future__ import annotations

import statistics
import time
from typing import Callable, Sequence

import torch


def matmul_flops(device: str | torch.device = "cpu", n: int = 1024, repeats: int = 10,
                 summary: Callable[[Sequence[float]], float] = statistics.median) -> float:
    """FLOP/s of an n x n fp32 matmul (2 n^3 FLOPs each) on ``device``, with the current thread count.

    Three warm-up rounds, then ``repeats`` timed rounds of 5 products each (CUDA synchronised around each
    round); ``summary`` of the per-product times: the median by default, ``min`` for the best case.
    """
    device = torch.device(device)
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    times = []
    for _ in range(repeats + 3):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(5):
            a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) / 5)
    return 2 * n**3 / summary(times[3:])
