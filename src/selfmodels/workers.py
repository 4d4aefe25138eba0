"""Independent units of work (the runs of a grid, the measurements that follow them) spread over processes.

One function, :func:`run_units`, for every grid: ``calls[i] = (function, *args)`` is run once and its result is
``results[i]``, on every process, in the order of ``calls``. Where the calls run:

- **under torchrun** (more than one rank): call ``i`` on rank ``i % world``, alone (inside
  :func:`selfmodels.distributed.solo`, so nothing in it waits for the other ranks); the results are gathered
  onto every rank. A rank with no call left just waits for the others.
- **one process, ``workers > 1``**: a pool of that many spawned interpreters (fresh ones: no forked torch
  thread pools), each initialised once with ``initializer(*initargs)`` (tensors travel through shared memory).
- **one process, ``workers == 1``**: here, one after the other, after the same ``initializer(*initargs)``.

In worker processes the functions must be importable at module level (a spawned worker unpickles them by name);
on the ranks and here any callable will do (the results travel, pickled, between the ranks). Each unit keeps its
own finished work on disk (a run directory, a stage), so an interrupted grid resumes where it stopped: on an
error or Ctrl-C the queued calls are dropped rather than waited for.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable, Sequence

from tqdm.auto import tqdm

from selfmodels import distributed
from selfmodels.errors import UserError
from selfmodels.runtime import set_threads

Call = tuple  # (function, *args)


def run_units(calls: Sequence[Call], *, workers: int = 1, threads: int | None = None,
              initializer: Callable[..., None] | None = None, initargs: tuple = (), progress: bool = True,
              desc: str = "runs") -> list[Any]:
    """``[f(*args) for f, *args in calls]``, computed by the ranks or the worker processes (see the module). ``threads``:
    torch's intra-op threads in every process that runs calls (None: leave them as they are)."""
    calls = list(calls)
    check_workers(workers)
    rank, ranks = distributed.world()
    bar = tqdm(total=len(calls), desc=desc, disable=not (progress and distributed.is_main()), unit="run")
    try:
        if ranks > 1:
            return _on_ranks(calls, rank, ranks, threads, initializer, initargs, bar)
        if workers == 1:
            return _here(calls, threads, initializer, initargs, bar)
        return _in_pool(calls, workers, threads, initializer, initargs, bar)
    finally:
        bar.close()


def check_workers(workers: int) -> None:
    """Worker processes and torchrun's ranks do not mix (a grid checks this before it loads anything)."""
    ranks = distributed.world()[1]
    if ranks > 1 and workers > 1:
        raise UserError(f"--workers {workers} runs units in parallel processes on one machine; under torchrun each of "
                        f"the {ranks} processes already runs its share: use --workers 1")


def _initialise(threads: int | None, initializer: Callable[..., None] | None, initargs: tuple) -> None:
    if threads is not None:
        set_threads(threads)
    if initializer is not None:
        initializer(*initargs)


def _here(calls: list[Call], threads: int | None, initializer, initargs: tuple, bar) -> list[Any]:
    _initialise(threads, initializer, initargs)
    results = []
    for function, *args in calls:
        results.append(function(*args))
        bar.update()
    return results


def _on_ranks(calls: list[Call], rank: int, ranks: int, threads: int | None, initializer, initargs: tuple, bar) -> list[Any]:
    bar.reset(total=len(calls[rank::ranks]))  # rank 0's bar counts its own share
    with distributed.solo():  # every call is this rank's alone
        mine = _here(calls[rank::ranks], threads, initializer, initargs, bar)
    shares = distributed.all_gather_object(mine)  # shares[r][k] is call r + k * ranks
    return [shares[i % ranks][i // ranks] for i in range(len(calls))]


def _in_pool(calls: list[Call], workers: int, threads: int | None, initializer, initargs: tuple, bar) -> list[Any]:
    import multiprocessing

    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_initialise,
                               initargs=(threads, initializer, initargs))
    results = []
    try:
        futures = [pool.submit(function, *args) for function, *args in calls]
        for future in futures:
            results.append(future.result())
            bar.update()
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)  # finished units are on disk; the same command resumes
        raise
    pool.shutdown()
    return results
