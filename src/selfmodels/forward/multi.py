"""Training K forward models from one activation stream: one subject pass per step feeds them all.

Each model has its own (source, target) pair of residual indices, its own AdamW optimizer and its own
metrics; the stream (:class:`~selfmodels.forward.stream.ActivationStream`) computes every index any model
needs in one pass of the subject, so K pairs cost one subject forward pass per step instead of K. Each
model's update is exactly :func:`~selfmodels.forward.train.train_forward`'s for one model (MSE in float32
of ``model(source)`` against ``target``, gradient-norm clipping, the same AdamW), so K models trained together
end with the same weights as each trained alone on the same sequence of batches.

One checkpoint file (``checkpoint.safetensors`` in the run directory) holds every model, every optimizer and
the stream's state; ``metrics.jsonl`` has one line per model per logged step, tagged ``"model"``. A resumed
run continues from the checkpoint and rewrites the metrics of its models past it, so no line is duplicated.

Under ``torchrun`` each rank streams its own shard of the corpus (the stream's ``shard``) and every model is
wrapped in ``DistributedDataParallel``, so a step averages the ranks' gradients: with equal per-rank batches,
the step on the mean of the ranks' mean losses is the step on their batches concatenated. Rank 0 alone writes
the metrics (the ranks' mean loss) and the checkpoint, which holds every rank's stream state.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from selfmodels import distributed
from selfmodels.artifacts import keep_jsonl
from selfmodels.checkpoint import load_checkpoint, save_checkpoint
from selfmodels.curves import Mirror, append_curve
from selfmodels.errors import UserError, require
from selfmodels.forward.stream import ActivationStream
from selfmodels.forward.train import ForwardTrainConfig, forward_step
from selfmodels.optim import make_adamw

CHECKPOINT_NAME, METRICS_NAME = "checkpoint.safetensors", "metrics.jsonl"


def train_many(
    models: dict[str, tuple[nn.Module, int, int]],
    stream: ActivationStream,
    cfg: ForwardTrainConfig,
    device: torch.device,
    directory: Path | None,
    progress: bool = True,
    mirror: Mirror | None = None,
) -> dict[str, dict]:
    """Train every ``name -> (model, source, target)`` for ``cfg.steps`` steps on batches of ``stream``.

    Returns per model ``{"final_mse", "steps", "tokens", "seconds"}`` as ``train_forward`` does (``tokens``
    and ``seconds``: this call's, the whole loop's wall time shared by the models, tokens summed over the
    ranks; ``final_mse``: the last step's loss (the ranks' mean), also after a resume that had nothing left
    to do). With ``directory``, writes
    ``metrics.jsonl`` and the checkpoint (every ``cfg.checkpoint_every`` steps and at the end) and resumes
    from that checkpoint when it exists. ``mirror`` also receives each line of ``metrics.jsonl``, as the curve of
    the model it names (:mod:`selfmodels.curves`).
    """
    cfg.validate()
    require(len(models) >= 1, "train_many needs at least one forward model")
    require(cfg.batch_size == stream.batch_size,
            f"the forward batch size ({cfg.batch_size}) differs from the activation stream's ({stream.batch_size}): "
            "build the stream with the training config's batch size")
    names = list(models)
    for name, (model, source, target) in models.items():
        require(isinstance(name, str) and name != "", f"forward model names must be non-empty strings, got {name!r}")
        stream.subject.check_pair(source, target)
        missing = [k for k in (source, target) if k not in stream.indices]
        require(not missing, f"forward model {name!r} needs residual indices {missing} that the activation stream does not "
                             f"compute (it has {stream.indices}): add them to the stream's indices")
    # Checkpoint keys are positional (m0, m1, ...), so any model name is safe; the names are checked on resume.
    rank, ranks = distributed.world()
    require((stream.rank, stream.world) == (rank, ranks),
            f"the activation stream is shard {stream.rank} of {stream.world} but this process is rank {rank} of {ranks}: "
            "build the stream with shard=distributed.world()")
    device = distributed.local_device(device)
    modules = {f"m{i}": models[name][0].to(device).train() for i, name in enumerate(names)}
    optimizers = {key: make_adamw(module.parameters(), cfg.lr, cfg.weight_decay) for key, module in modules.items()}
    pairs = {name: [models[name][1], models[name][2]] for name in names}
    checkpoint = None if directory is None else Path(directory) / CHECKPOINT_NAME
    metrics = None if directory is None or rank != 0 else Path(directory) / METRICS_NAME  # rank 0 writes the curves
    start, last = 0, {name: float("nan") for name in names}
    if checkpoint is not None and checkpoint.is_file():
        start, extra = load_checkpoint(checkpoint, modules, optimizers, {})
        if extra.get("models") != names or extra.get("pairs") != pairs:
            raise UserError(f"checkpoint {checkpoint} holds forward models {extra.get('models')} with pairs {extra.get('pairs')}, "
                            f"this run trains {names} with pairs {pairs}: use another directory or delete the checkpoint")
        streams = extra.get("streams") or [extra["stream"]]  # "stream": a one-process checkpoint of an earlier version
        if len(streams) != ranks:
            raise UserError(f"checkpoint {checkpoint} was written by a run on {len(streams)} process(es), this one has {ranks}: "
                            "resume with the same number of processes, or use another directory")
        stream.load_state_dict(streams[rank])
        last.update({k: (float("nan") if v is None else v) for k, v in extra.get("final_mse", {}).items()})
    if metrics is not None:  # this run's lines past the checkpoint (all, on a fresh start) come again
        keep_jsonl(metrics, lambda r: r.get("model") not in pairs or r.get("step", 0) <= start)
    nets = {key: distributed.data_parallel(module, device) for key, module in modules.items()}  # averages gradients across ranks

    def save(step: int) -> None:
        streams = distributed.all_gather_object(stream.state_dict())  # every rank's place in its shard
        if rank == 0:
            extra = {"models": names, "pairs": pairs, "streams": streams, "final_mse": last}
            save_checkpoint(checkpoint, step, modules, optimizers, {}, extra)

    keys = dict(zip(names, modules))
    tokens, began = 0, time.perf_counter()
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc=f"{len(names)} forward models",
               disable=not progress or rank != 0, leave=False)
    for step in bar:
        batch = next(stream)  # {index: (B, T, d)}: one subject pass (at most) for every model
        for name in names:
            _, source, target = models[name]
            key = keys[name]
            last[name] = forward_step(modules[key], optimizers[key], batch[source].to(device), batch[target].to(device),
                                      cfg.grad_clip, nets[key])
        tokens += batch[stream.indices[0]].shape[0] * batch[stream.indices[0]].shape[1]
        logging = (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps
        if ranks > 1 and logging:  # the curve is the ranks' mean loss
            gathered = distributed.all_gather_object(last)
            last = {name: sum(g[name] for g in gathered) / ranks for name in names}
        if metrics is not None and logging:
            for name in names:
                append_curve(metrics, {"model": name, "source": pairs[name][0], "target": pairs[name][1],
                                       "step": step + 1, "forward_mse": last[name]}, mirror)  # curve: the model's name
            bar.set_postfix(mse=" ".join(f"{last[n]:.3g}" for n in names[:4]))
        if checkpoint is not None and ((step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps):
            save(step + 1)
    seconds = time.perf_counter() - began
    for module in modules.values():
        module.eval()
    if ranks > 1:
        tokens = sum(distributed.all_gather_object(tokens))
    return {name: {"final_mse": last[name], "steps": cfg.steps, "tokens": tokens, "seconds": seconds} for name in names}
