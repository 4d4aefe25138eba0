"""Peak memory of one call on a CPU, measured in a fresh process: the growth of its resident set over the baseline.

Why the resident set, and how it is made honest. On a CPU torch keeps no allocator statistics (``max_memory_allocated``
is CUDA only) and ``tracemalloc`` sees only Python's own allocations, not tensor storage, so the operating system's
count is what sees every tensor. Three things would blur it, and each is removed:

- another method's leftovers: every method runs in its own fresh process (:func:`measure_in_child`);
- the C allocator keeping freed memory (a tensor freed during the warm-up call would be reused by the measured call
  without raising the resident set, hiding it): the child runs with glibc's ``MALLOC_MMAP_THRESHOLD_=65536``, so
  every block over 64 KiB (any activation here) is its own mapping, returned to the system when freed, and
  ``malloc_trim(0)`` returns the small blocks' free pages before the baseline;
- one-off costs of the first call (lazy initialisation, weight pages read in): one warm-up call before the baseline.

Then ``VmHWM`` (the peak resident set) is reset through ``/proc/self/clear_refs`` ("5", Linux 4.0+), the call runs
once, and ``peak_growth = VmHWM - VmRSS(baseline)``: every byte the call held at its peak that was not held before it,
its returned tensors included (they are alive when it returns). Resolution: one page (4 KiB); the threads' own stacks
and oneDNN scratch count too, alike for every method run with the same threads.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Callable

CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}  # every block over 64 KiB mapped on its own, unmapped when freed


def _status_kib(field: str) -> int:
    return int(re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1))


def _trim() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the small blocks' free pages stay counted (slightly less exact)
        pass


def peak_growth(fn: Callable[[], object]) -> dict:
    """Run ``fn`` once to warm up, then once measured: the resident set's peak growth over the baseline, in bytes."""
    fn()
    _trim()
    baseline = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    result = fn()
    peak = _status_kib("VmHWM")
    del result
    return {"baseline_rss_mib": baseline / 1024, "peak_rss_mib": peak / 1024, "peak_growth_mib": (peak - baseline) / 1024,
            "peak_measure": "VmHWM - VmRSS before the call (fresh process, glibc mmap threshold 64 KiB, warm-up call)"}


def measure_in_child(script: Path, args: list[str]) -> dict:
    """Run ``script args`` in a fresh Python with :data:`CHILD_ENV`; its last stdout line is the JSON it reports."""
    env = {**os.environ, **CHILD_ENV}
    done = subprocess.run([sys.executable, str(script), *args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        return {"peak_error": f"child exited with {done.returncode}: {done.stderr.strip()[-600:]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])
