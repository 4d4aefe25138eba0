"""Data-parallel runs across processes started by ``torchrun``: ranks, the process group, sharding,
gathering, rank-0-only writes and one clear error when any rank fails.

``torchrun --nproc_per_node N -m selfmodels.cli ...`` starts N copies of the command with ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` set. Without them everything here is a no-op on one process
(``world() == (0, 1)``), so the library behaves exactly as it does without torchrun.

- :func:`init` sets up ``torch.distributed`` as it is: gloo for CPU tensors, NCCL for CUDA ones (each
  rank on CUDA device ``LOCAL_RANK``); collectives inside torch (DDP's gradient all-reduce) give up
  after ``SELFMODELS_DIST_TIMEOUT`` seconds (default 300).
- :func:`all_gather_object` and :func:`barrier` are this package's own collective points. They pass
  through the process group's key-value store and wait by polling it, so a rank may legitimately wait
  for a slower one for as long as that takes (a grid run, an LLC chain) and still learns at once when
  any rank has failed: it then raises :class:`RankFailed` ("rank K failed: <message>").
- :func:`guard` (used by :func:`run_main`) records a rank's exception in the store before letting it
  propagate, which is what the other ranks see at their next collective point. An error inside
  torch's own collectives caused by a rank that failed (its connections close) is reported as that
  rank's failure too.
- Work is split with :func:`shard` (item i on rank i % world); only rank 0 writes what the ranks
  share (:func:`is_main`, :func:`main_only`); :func:`solo` marks work that one rank does alone (a grid
  run: its LLC chains are not split across ranks that are busy with other runs).

Several machines need a shared file system for the output directory (rank 0 reads every run's files).
"""

from __future__ import annotations

import contextvars
import functools
import json
import os
import pickle
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Iterable, Iterator, TypeVar

import torch
import torch.distributed as dist

from selfmodels.errors import UserError
from selfmodels.runtime import resolve_device

TIMEOUT_VARIABLE = "SELFMODELS_DIST_TIMEOUT"
DEFAULT_TIMEOUT = 300.0
_FAILED = "failed"  # store key: JSON {"rank", "message"} of the first rank that failed

T = TypeVar("T")


class RankFailed(UserError):
    """Another rank failed; raised at this rank's next collective point (``rank K failed: <message>``)."""

    def __init__(self, rank: int, message: str):
        super().__init__(f"rank {rank} failed: {message}")
        self.rank = rank


@dataclass
class _Group:
    store: Any  # the process group's store, under a prefix of our own
    rank: int
    size: int
    generation: int = 0  # collective points passed so far (every rank passes the same ones, in order)


_GROUP: _Group | None = None
_SOLO = contextvars.ContextVar("selfmodels_distributed_solo", default=False)


# ---- who am I ---------------------------------------------------------------------------------------

def _int_variable(name: str, default: int) -> int:
    text = os.environ.get(name, "")
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise UserError(f"environment variable {name}={text!r} is not an integer (torchrun sets it)") from None


def _environment() -> tuple[int, int]:
    """(rank, world size) as torchrun set them, or (0, 1)."""
    size = _int_variable("WORLD_SIZE", 1)
    rank = _int_variable("RANK", 0)
    if size < 1 or not 0 <= rank < size:
        raise UserError(f"RANK={rank} and WORLD_SIZE={size} do not fit together: start the processes with torchrun")
    return rank, size


def world() -> tuple[int, int]:
    """(rank, world size): from torchrun's ``RANK`` and ``WORLD_SIZE``, else (0, 1); (0, 1) inside :func:`solo`."""
    return (0, 1) if _SOLO.get() else _environment()


def local_rank() -> int:
    """This process's index on its machine (torchrun's ``LOCAL_RANK``), 0 without torchrun."""
    return _int_variable("LOCAL_RANK", 0)


def is_main() -> bool:
    """True on rank 0 (and on a single process): the one process that writes what the ranks share."""
    return world()[0] == 0


@contextmanager
def solo() -> Iterator[None]:
    """Inside the block this process works alone: ``world() == (0, 1)``, collectives are no-ops.
    For work one rank owns (a grid run); nothing in it may wait for the other ranks."""
    token = _SOLO.set(True)
    try:
        yield
    finally:
        _SOLO.reset(token)


# ---- the process group ------------------------------------------------------------------------------

def timeout_seconds() -> float:
    """How long a rank waits inside torch's collectives before giving up: ``$SELFMODELS_DIST_TIMEOUT`` (s)."""
    text = os.environ.get(TIMEOUT_VARIABLE, "")
    try:
        value = float(text) if text else DEFAULT_TIMEOUT
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise UserError(f"{TIMEOUT_VARIABLE}={text!r}: give a number of seconds > 0")
    return value


def _check_cuda_devices() -> None:
    processes = _int_variable("LOCAL_WORLD_SIZE", _environment()[1])
    visible = torch.cuda.device_count()
    if processes > visible:
        raise UserError(f"torchrun started {processes} processes but only {visible} CUDA devices are visible: "
                        f"start at most {visible} per machine (--nproc_per_node {visible}) or use --device cpu")


def local_device(device: str | torch.device) -> torch.device:
    """``device`` for this process: under torchrun a CUDA device becomes ``cuda:LOCAL_RANK`` (one GPU per
    rank; UserError when there are more ranks than GPUs on this machine); anything else is unchanged."""
    device = torch.device(device)
    if device.type != "cuda" or _environment()[1] == 1:
        return device
    _check_cuda_devices()
    return torch.device("cuda", local_rank())


def _uses_cuda(device: str | torch.device | None) -> bool:
    if device is None:  # not known yet (the CLI, before a command resolves --device): CUDA when it fits
        if not torch.cuda.is_available():
            return False
        try:
            _check_cuda_devices()
        except UserError:
            return False  # e.g. more CPU ranks than GPUs; a command that then asks for CUDA is refused
        return True
    device = resolve_device(device) if isinstance(device, str) else torch.device(device)
    if device.type == "cuda":
        _check_cuda_devices()
        return True
    return False


@contextmanager
def init(device: str | torch.device | None = None) -> Iterator[None]:
    """Within the block, the ranks torchrun started form the default process group; destroyed at exit.

    Nothing happens on a single process, or when the group is already set up (nested use). ``device``:
    the device the work uses (None: CUDA if present and there is one GPU per local rank). CUDA ranks
    use device ``LOCAL_RANK`` and the backend ``cpu:gloo,cuda:nccl`` (NCCL for CUDA tensors); otherwise
    gloo. Torch's collectives time out after :func:`timeout_seconds`.
    """
    global _GROUP
    rank, size = _environment()
    if size == 1 or _GROUP is not None:
        yield
        return
    cuda = _uses_cuda(device)
    if cuda:
        torch.cuda.set_device(local_rank())
    timeout = timedelta(seconds=timeout_seconds())
    store, _, _ = next(dist.rendezvous("env://", rank, size, timeout=timeout))  # MASTER_ADDR / MASTER_PORT
    store.set_timeout(timeout)
    dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo", store=dist.PrefixStore("default_pg", store),
                            rank=rank, world_size=size, timeout=timeout)
    _GROUP = _Group(dist.PrefixStore("selfmodels", store), rank, size)
    try:
        yield
    finally:
        _GROUP = None
        dist.destroy_process_group()


def _group() -> _Group:
    if _GROUP is None:
        raise UserError(f"torchrun started {_environment()[1]} processes but the process group is not set up: "
                        "run the work inside selfmodels.distributed.init() (the selfmodels command does)")
    return _GROUP


# ---- failures ---------------------------------------------------------------------------------------

def _describe(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = re.sub(r"^\[[^\]]*\] ", "", text)  # gloo's "[path/to/source.cc:123] " before its message
    return text if isinstance(exc, UserError) else f"{type(exc).__name__}: {text}".rstrip(": ")


_TORCH_COLLECTIVES = tuple(os.path.dirname(module.__file__) + os.sep for module in (dist, torch.nn.parallel))


def _in_collective(exc: BaseException) -> bool:
    """Whether ``exc`` came out of torch's collectives (a lost peer, a timeout): a DistError, or a
    RuntimeError raised under torch.distributed / torch.nn.parallel or naming gloo or NCCL."""
    if isinstance(exc, dist.DistError):
        return True
    if not isinstance(exc, RuntimeError):
        return False
    frame = exc.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    where = frame.tb_frame.f_code.co_filename if frame is not None else ""
    return where.startswith(_TORCH_COLLECTIVES) or "gloo" in str(exc) or "NCCL" in str(exc)


def _announce(group: _Group, message: str) -> None:
    """Record this rank's failure for the others (the first failure recorded wins). Best effort: the
    store may be gone already when the run is ending."""
    try:
        group.store.compare_set(_FAILED, "", json.dumps({"rank": group.rank, "message": message}))
    except Exception:  # noqa: BLE001 - nothing more can be told to the other ranks
        pass


def _failure(group: _Group) -> tuple[int, str] | None:
    """The (rank, message) of the first rank that failed, or None."""
    try:
        if not group.store.check([_FAILED]):
            return None
        record = json.loads(group.store.get(_FAILED))
    except Exception:  # noqa: BLE001 - a store that cannot be read tells nothing
        return None
    return int(record["rank"]), str(record["message"])


def _raise_if_failed(group: _Group) -> None:
    failed = _failure(group)
    if failed is not None and failed[0] != group.rank:
        raise RankFailed(*failed)


@contextmanager
def guard() -> Iterator[None]:
    """Tell the other ranks when the block raises, then let the exception go on.

    The other ranks raise :class:`RankFailed` at their next collective point. An exception here that was
    caused by another rank's failure (torch's collective lost its peer) becomes that rank's
    :class:`RankFailed`; a torch collective that fails with no rank having said why (a rank stopped
    answering for :func:`timeout_seconds`) becomes a :class:`UserError` saying so.
    """
    try:
        yield
    except (Exception, KeyboardInterrupt) as exc:
        group = _GROUP
        if group is None or isinstance(exc, RankFailed):
            raise
        failed = _failure(group)
        if failed is not None and failed[0] != group.rank:
            raise RankFailed(*failed) from exc
        if _in_collective(exc):
            message = (f"a collective operation with the other ranks failed ({_describe(exc)}); a rank that does not "
                       f"answer within {TIMEOUT_VARIABLE}={timeout_seconds():g} s ends the run")
            _announce(group, message)
            raise UserError(message) from exc
        _announce(group, _describe(exc))
        raise


def run_main(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a command's function: as is on one process; under torchrun inside :func:`init` and :func:`guard`.

    On the rank that fails, a :class:`UserError` comes out as ``rank K: <message>`` (other exceptions
    keep their traceback); every other rank raises :class:`RankFailed` (``rank K failed: <message>``) at
    its next collective point, or is ended by torchrun when the failed rank exits first.
    """
    rank, size = _environment()
    if size == 1:
        return fn(*args, **kwargs)
    with init():
        try:
            with guard():
                return fn(*args, **kwargs)
        except RankFailed:
            raise
        except UserError as exc:
            raise UserError(f"rank {rank}: {exc}") from exc


def average_gradients(params: Iterable[torch.nn.Parameter], loss: torch.Tensor) -> float:
    """Average every gradient over the ranks in place (``g <- 1/N sum_r g_r``) and return the ranks' mean of
    ``loss``, in one all-reduce per (device, dtype). Parameters without a gradient are left out: every rank runs
    the same code, so the same ones have none everywhere."""
    _, size = world()
    grads = [p.grad for p in params if p.grad is not None]
    groups: dict[tuple, list[torch.Tensor]] = {}
    for grad in grads:
        groups.setdefault((grad.device, grad.dtype), []).append(grad)
    total = loss.detach().float().reshape(1)
    key = (total.device, total.dtype)
    groups.setdefault(key, [])
    for (device, dtype), members in groups.items():
        with_loss = members + ([total] if (device, dtype) == key else [])
        flat = torch.cat([t.reshape(-1) for t in with_loss])
        dist.all_reduce(flat)
        flat /= size
        offset = 0
        for t in with_loss:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()
    return float(total.item())


def broadcast_parameters(modules: Iterable[torch.nn.Module]) -> None:
    """Every rank takes rank 0's parameters and buffers (a run starts from one model, whatever each rank drew)."""
    with torch.no_grad():
        for module in modules:
            for tensor in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(tensor.data, src=0)


# ---- collective points ------------------------------------------------------------------------------

def _wait(group: _Group, keys: list[str]) -> None:
    """Until every key is in the store, polling; raise RankFailed as soon as another rank has failed."""
    delay = 0.001
    while not group.store.check(keys):
        _raise_if_failed(group)
        time.sleep(delay)
        delay = min(2 * delay, 0.05)


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable; move tensors to the CPU first), in rank order, on every rank.

    Every rank must call it at the same point of its work. It waits for the slowest rank without a time
    limit, and raises :class:`RankFailed` as soon as any other rank has failed (also if one failed
    before this point). On one process (or inside :func:`solo`): ``[obj]``.
    """
    rank, size = world()
    if size == 1:
        return [obj]
    group = _group()
    _raise_if_failed(group)
    group.generation += 1
    prefix = f"gather/{group.generation}/"
    group.store.set(prefix + str(rank), pickle.dumps(obj))
    keys = [prefix + str(r) for r in range(size)]
    _wait(group, keys)
    gathered = [pickle.loads(group.store.get(key)) for key in keys]
    if group.generation > 1:  # every rank has read the previous point's values before reaching this one
        group.store.delete_key(f"gather/{group.generation - 1}/{rank}")
    return gathered


def barrier() -> None:
    """Wait until every rank gets here (no time limit; RankFailed as soon as another rank has failed)."""
    all_gather_object(None)


def shard(items: Iterable[T], rank: int | None = None, size: int | None = None, *, what: str = "items") -> list[T]:
    """This rank's share of ``items``: item i goes to rank i % size (rank r gets r, r + size, ...).

    ``rank`` and ``size`` default to :func:`world`. Fewer items than ranks is a UserError (a rank with
    nothing to do is a launch mistake)."""
    items = list(items)
    if rank is None or size is None:
        rank, size = world()
    if len(items) < size:
        raise UserError(f"more ranks than shards of data: {len(items)} {what} for {size} ranks; "
                        f"start at most {len(items)} processes")
    return items[rank::size]


def main_only(fn: Callable[..., T]) -> Callable[..., T | None]:
    """``fn`` run on rank 0 only (elsewhere it returns None): for files the ranks share, e.g.
    ``main_only(write_json)(path, record)``."""
    @functools.wraps(fn)
    def on_main(*args: Any, **kwargs: Any) -> T | None:
        return fn(*args, **kwargs) if is_main() else None

    return on_main


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first, the other ranks after it has finished: for work that fills a cache
    (a download, a conversion) the others then read instead of writing it again."""
    main = is_main()
    if not main:
        barrier()
    yield
    if main:
        barrier()


__all__ = ["RankFailed", "world", "local_rank", "is_main", "solo", "timeout_seconds", "local_device", "average_gradients", "broadcast_parameters", "init",
           "guard", "run_main", "all_gather_object", "barrier", "shard", "main_only", "main_first",
           "TIMEOUT_VARIABLE"]

