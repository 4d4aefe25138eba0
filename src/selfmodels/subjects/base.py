"""The subject interface: what a forward self-model needs from the model it observes.

A *subject* is a causal LM seen as a stack of residual blocks. One layer index everywhere (the papers'
and TransformerLens' convention):

    index -1      the residual stream entering block 0 (the embeddings)     hook ``blocks.0.hook_resid_pre``
    index k >= 0  the residual stream after block k                         hook ``blocks.{k}.hook_resid_post``

so the last index, ``n_layers - 1``, is the residual before the final norm. A forward model for the pair
(source, target) stands in for blocks ``source+1 .. target``.

Everything here works through plain PyTorch hooks on the subject's blocks, registered in context managers
that always remove them (also when the forward pass raises). A subclass says where the blocks are, how to
run the trunk (embeddings and blocks, no LM head), how to turn a final residual into logits, and how one
block splits into heads and MLP (:meth:`block_parts`, :meth:`head_weights`). Residual collection stops the
forward pass right after the deepest block needed, so later blocks and the LM head are never computed.

Hooks never compute losses or call ``backward()``: the interface works with gradients on, and a training
loop that wants gradients through it simply calls it outside ``torch.no_grad()``.
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn

from selfmodels.errors import UserError

EMBED = -1  # the residual index of the embeddings


class _StopForward(Exception):
    """Raised from a hook after the last block needed, so the rest of the model is never run."""


def hidden_of(output):
    """Blocks return a tensor or a tuple whose first item is the hidden state."""
    return output[0] if isinstance(output, tuple) else output


def with_hidden(output, hidden: torch.Tensor):
    """A block's output with its hidden state replaced, keeping a tuple structure if there is one."""
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


def _block_input(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


@contextmanager
def hooks(register: Callable[[], list]) -> Iterator[None]:
    """Register hooks (``register()`` returns their handles) for the block; always remove them after."""
    handles: list = []
    try:
        handles.extend(register())
        yield
    finally:
        for handle in handles:
            handle.remove()


def parse_index(value: str | int) -> int:
    """A layer index from the command line: an integer, or ``embed`` for -1."""
    if isinstance(value, int):
        return value
    text = str(value).strip().lower()
    if text == "embed":
        return EMBED
    try:
        return int(text)
    except ValueError:
        raise UserError(f"layer index {value!r} is not an integer or 'embed'") from None


# What ``weights_digest`` computes, recorded beside it (``describe()["weights_hash"]``).
WEIGHTS_HASH = "tensors-bf16-sha256/1"


def _tensor_line(name: str, tensor: torch.Tensor) -> str:
    """``"<name> <dtype> <shape> <sha256 of the bytes>"`` for one tensor; floating tensors are rounded to bfloat16
    first (round to nearest even) and labelled ``bf16``, so an fp32 and a bf16 copy of the same weights agree."""
    if tensor.is_meta:
        raise UserError(f"tensor {name} is on the meta device with nothing to load it from (a model built on the meta "
                        "device, or a device_map whose weights were never loaded): a subject observes and identifies its "
                        "weights, so load them (from_pretrained, or load_state_dict(..., assign=True)) first")
    t = tensor.detach()
    label = "bf16" if t.is_floating_point() else str(t.dtype).removeprefix("torch.")
    if t.is_floating_point():
        t = t.to(torch.bfloat16)
    flat = t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
    return f"{name} {label} {tuple(t.shape)} {hashlib.sha256(memoryview(flat)).hexdigest()}\n"


def weights_digest(model: nn.Module) -> str:
    """The identity of the weights in memory, on any device and in fp32 or bf16:

        D = SHA-256( Σ_t  "<name_t> <dtype_t> <shape_t> " + SHA-256(bytes(bf16(W_t))) + "\\n" )

    over the state dict's tensors t sorted by name (tied tensors once, under their first name), where floating
    tensors are rounded to bfloat16 (``bf16``, round to nearest even) and other tensors keep their dtype and bytes.
    A tensor offloaded by accelerate (``device_map`` with CPU / disk offload: on the meta device, its values in the
    module's ``_hf_hook.weights_map``) is read from there, one at a time, so an offloaded copy shares D too.
    So an fp32 copy and the bf16 copy made from it share D, while any change that moves a weight across a bf16
    rounding step (training, ``add_``, other random weights) gives another D. Tensors are hashed in parallel
    threads (hashlib releases the GIL); a GPU tensor is rounded on the GPU and copied to the CPU one at a time
    per thread."""
    from concurrent.futures import ThreadPoolExecutor

    named, seen, offloaded = [], set(), _offloaded(model)
    for key, value in model.state_dict(keep_vars=True).items():
        if value.is_meta and key in offloaded:
            named.append((key, offloaded[key]))  # a callable: the tensor is read when it is hashed
            continue
        pointer = (value.device, value.data_ptr(), value.shape, value.stride())
        if pointer in seen and not value.is_meta:
            continue
        seen.add(pointer)
        named.append((key, value))
    named.sort(key=lambda item: item[0])
    with ThreadPoolExecutor(max_workers=max(1, min(8, torch.get_num_threads()))) as pool:
        lines = list(pool.map(lambda item: _tensor_line(item[0], item[1]() if callable(item[1]) else item[1]), named))
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def _offloaded(model: nn.Module) -> dict[str, Callable[[], torch.Tensor]]:
    """State-dict key -> a loader of its values, for every tensor accelerate offloaded (its module's ``_hf_hook``
    holds a ``weights_map`` keyed by the tensor's local name). Empty without accelerate's hooks."""
    loaders = {}
    for path, module in model.named_modules():
        weights = getattr(getattr(module, "_hf_hook", None), "weights_map", None)
        if weights is None:
            continue
        for local, value in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            if value is not None and value.is_meta:
                loaders[f"{path}.{local}" if path else local] = lambda weights=weights, local=local: weights[local]
    return loaders


def weights_fingerprint(model: nn.Module) -> tuple:
    """Where every weight lives and how often it was written in place (PyTorch's version counter): cheap, and
    changed by ``load_state_dict``, optimizer steps, ``p.add_()`` under no_grad and ``.to()``. Writes through
    ``p.data`` bypass the version counter and do not change it."""
    return tuple((key, v.device, v.dtype, v.data_ptr(), tuple(v.shape), v._version)
                 for key, v in model.state_dict(keep_vars=True).items())



@dataclass
class LayerSplit:
    """A subject cut at (source, target) into three callables sharing the batch's block arguments.

    ``prefix(ids (B, T)) -> h_source (B, T, d)`` runs no block after ``source``;
    ``middle(h_source) -> h_target`` runs blocks source+1..target;
    ``suffix(h_target) -> logits (B, T, V)`` runs the remaining blocks, the final norm and the head.
    ``middle`` and ``suffix`` reuse the block arguments (mask, rotary embeddings) of the last ``prefix`` call,
    so they expect a residual of that batch's shape.
    """

    prefix: Callable[[torch.Tensor], torch.Tensor]
    middle: Callable[[torch.Tensor], torch.Tensor]
    suffix: Callable[[torch.Tensor], torch.Tensor]


class Subject:
    """A causal LM seen as residual blocks. Subclasses set the attributes below and the abstract methods.

    Attributes: ``model`` (the nn.Module), ``family``, ``n_layers``, ``d_model``, ``n_heads``, ``n_kv_heads``,
    ``d_head``, ``vocab_size``, ``name`` (what the user called it).
    """

    model: nn.Module
    family: str
    name: str
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    vocab_size: int
    # Why this subject cannot split a block into heads and MLP (``block_parts``, ``head_weights``), or None where it
    # can. A Hugging Face model found structurally (no FAMILIES row) says why; the analyses skip what needs them.
    parts_unavailable: str | None = None

    # --- what a subclass provides ----------------------------------------------------------------
    @property
    def blocks(self) -> nn.ModuleList:
        """The residual blocks, in order."""
        raise NotImplementedError

    def _run_trunk(self, ids: torch.Tensor) -> None:
        """Run the embeddings and blocks on ``ids`` (B, T) without a KV cache (the hooks do the rest)."""
        raise NotImplementedError

    def _final(self, h: torch.Tensor) -> torch.Tensor:
        """Final norm and LM head: last residual (B, T, d) -> logits (B, T, V)."""
        raise NotImplementedError

    def source_info(self) -> dict:
        """Where the weights came from: ``{"id", "revision", "weights_sha256"}`` (see :meth:`describe`)."""
        raise NotImplementedError

    def block_parts(self, ids: torch.Tensor, k: int, attention: bool = True) -> dict[str, torch.Tensor]:
        """Block ``k``'s pieces on ``ids`` (B, T), stopping after it (all float32):

        ``input`` (B,T,d) residual entering the block; ``output`` (B,T,d) leaving it; ``heads`` (B,T,H,d) each
        head's write into the residual (its slice of the attention output projection, without bias);
        ``attn_bias`` (d,) the output projection's bias (zeros if none); ``attn_out`` (B,T,d) = Σ heads + bias;
        ``mlp_out`` (B,T,d); with ``attention``, the attention weights ``attention`` (B,H,T,T).
        ``output - input = attn_out + mlp_out`` for every family supported (sequential or parallel blocks).
        """
        raise NotImplementedError

    def head_weights(self, k: int) -> list[dict[str, torch.Tensor]]:
        """Per query head of block ``k``: ``q``, ``k``, ``v`` (d_head, d) read weights with the pre-attention
        norm's gain folded in (W · diag(γ); ``k`` and ``v`` are the head's KV group's), and ``o`` (d, d_head)."""
        raise NotImplementedError

    def _starts_sequence(self, args: tuple, kwargs: dict) -> bool:
        """Whether a block call begins a new sequence (no KV-cached prefix before it). Subjects without a
        KV cache always run whole sequences."""
        return True

    # --- description ---------------------------------------------------------------------------
    def hook_name(self, index: int) -> str:
        """TransformerLens-style name of a residual index."""
        self.check_index(index)
        return "blocks.0.hook_resid_pre" if index == EMBED else f"blocks.{index}.hook_resid_post"

    @property
    def n_params(self) -> int:
        """Parameters of the whole model (tied embeddings counted once)."""
        return sum(p.numel() for p in self.model.parameters())

    def describe(self) -> dict:
        """Family, shape, source (id, revision, weight hash) and the hook name of every residual index."""
        return {
            "family": self.family, "name": self.name, "params": self.n_params, "n_layers": self.n_layers,
            "d_model": self.d_model, "n_heads": self.n_heads, "n_kv_heads": self.n_kv_heads, "d_head": self.d_head,
            "vocab_size": self.vocab_size, **self.source_info(),
            "indices": {str(k): self.hook_name(k) for k in range(EMBED, self.n_layers)},
        }

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    # --- indices ---------------------------------------------------------------------------------
    def check_index(self, index: int) -> None:
        if not EMBED <= index < self.n_layers:
            raise UserError(f"layer index {index} is out of range for {self.name} ({self.n_layers} blocks): "
                            f"use -1 (embed) to {self.n_layers - 1}")

    def check_pair(self, source: int, target: int) -> None:
        """Both indices in range and the target after the source, or one message saying which are valid."""
        if not EMBED <= source < self.n_layers - 1:
            raise UserError(f"--source {source} is out of range for {self.name} ({self.n_layers} blocks): "
                            f"use -1 (embed) to {self.n_layers - 2}")
        if not source < target < self.n_layers:
            raise UserError(f"--target {target} must come after --source {source} and be at most {self.n_layers - 1} "
                            f"for {self.name}: a forward model predicts a later layer")

    # --- running pieces ----------------------------------------------------------------------------
    def residuals(self, ids: torch.Tensor, at: list[int]) -> dict[int, torch.Tensor]:
        """The residual stream at each index in ``at``, each (B, T, d) in the model's dtype.

        Stops after the deepest block needed and never computes the LM head. Gradients flow when enabled.
        """
        for k in at:
            self.check_index(k)
        return self._capture(ids.to(self.device), at)[0]

    def _capture(self, ids: torch.Tensor, at: list[int], block_args_from: int | None = None) -> tuple[dict[int, torch.Tensor], tuple]:
        """Residuals at ``at`` and, with ``block_args_from`` = k, the extra positional and keyword arguments
        the model passes to block k (masks, rotary embeddings), captured from its call. Stops after the deepest
        block that any of this needs."""
        captured: dict[int, torch.Tensor] = {}
        block_args: list = []
        wanted = set(at)
        stop_after = max(at)  # the deepest residual asked for (-1: stop before block 0 runs)
        if block_args_from is not None:
            stop_after = max(stop_after, block_args_from - 1)

        def done() -> bool:
            return wanted <= captured.keys() and (block_args_from is None or block_args)

        def pre(k: int):
            def hook(module, args, kwargs):
                if k == 0 and EMBED in wanted:
                    captured[EMBED] = _block_input(args, kwargs)
                if k == block_args_from:
                    block_args.append((args[1:], {key: v for key, v in kwargs.items() if key != "hidden_states"}))
                if done():
                    raise _StopForward
            return hook

        def post(k: int):
            def hook(module, args, output):
                captured[k] = hidden_of(output)
                if done():
                    raise _StopForward
            return hook

        def register() -> list:
            handles = [self.blocks[0].register_forward_pre_hook(pre(0), with_kwargs=True)]
            if block_args_from is not None and block_args_from != 0:
                handles.append(self.blocks[block_args_from].register_forward_pre_hook(pre(block_args_from), with_kwargs=True))
            handles += [self.blocks[k].register_forward_hook(post(k)) for k in wanted if k != EMBED]
            return handles

        with hooks(register):
            try:
                self._run_trunk(ids)
            except _StopForward:
                pass
        if not done():  # pragma: no cover - a subclass whose trunk skipped a block
            raise RuntimeError(f"{self.name}: the forward pass ended before reaching index {stop_after}")
        return captured, (block_args[0] if block_args else ((), {}))

    def run_blocks(self, h: torch.Tensor, start: int, stop: int, block_args: tuple = ((), {})) -> torch.Tensor:
        """Blocks ``start .. stop-1`` applied to the residual ``h`` (B, T, d), with the model's own block
        arguments for this batch shape (from :meth:`split` or :meth:`block_arguments`)."""
        rest, kwargs = block_args
        h = h.to(self.dtype)
        for k in range(start, stop):
            h = hidden_of(self.blocks[k](h, *rest, **kwargs))
        return h

    def block_arguments(self, ids: torch.Tensor) -> tuple:
        """The extra arguments the model passes to its blocks for a batch shaped like ``ids`` (B, T)."""
        return self._capture(ids.to(self.device), [EMBED], block_args_from=0)[1]

    def logits_from(self, h: torch.Tensor, index: int, block_args: tuple | None = None) -> torch.Tensor:
        """Logits (B, T, V) from the residual ``h`` (B, T, d) at ``index``: the remaining blocks, final norm, head."""
        self.check_index(index)
        if block_args is None:
            dummy = torch.zeros(h.shape[:2], dtype=torch.long, device=self.device)
            block_args = self.block_arguments(dummy)
        return self._final(self.run_blocks(h, index + 1, self.n_layers, block_args))

    def split(self, source: int, target: int) -> LayerSplit:
        """The subject cut at ``source`` < ``target`` (see :class:`LayerSplit`); the prefix runs no block after
        ``source``, and the block arguments it captures serve the middle and suffix of the same batch."""
        self.check_pair(source, target)
        state: dict = {}

        def prefix(ids: torch.Tensor) -> torch.Tensor:
            residual, state["args"] = self._capture(ids.to(self.device), [source], block_args_from=source + 1)
            return residual[source]

        def middle(h: torch.Tensor) -> torch.Tensor:
            return self.run_blocks(h, source + 1, target + 1, state["args"])

        def suffix(h: torch.Tensor) -> torch.Tensor:
            return self._final(self.run_blocks(h, target + 1, self.n_layers, state["args"]))

        return LayerSplit(prefix=prefix, middle=middle, suffix=suffix)

    # --- interventions ----------------------------------------------------------------------------
    @contextmanager
    def skip(self, source: int, target: int) -> Iterator["Subject"]:
        """Within the block, blocks source+1..target are the identity (their input passes through)."""
        self.check_pair(source, target)

        def hook(module, args, kwargs, output):
            return with_hidden(output, _block_input(args, kwargs))

        with hooks(lambda: [self.blocks[k].register_forward_hook(hook, with_kwargs=True) for k in range(source + 1, target + 1)]):
            yield self

    @contextmanager
    def splice(self, predictor: Callable[[torch.Tensor], torch.Tensor], source: int, target: int) -> Iterator["Subject"]:
        """Within the block, the residual after ``target`` is ``predictor(residual at source)``: blocks
        source+1..target are replaced by a forward model for every forward pass of the model, ``generate()``
        included.

        The predictor attends across positions, so it must see the whole prefix, not only the positions a KV
        cache feeds the model in one call: the source residuals of the running sequence are kept, extended at
        each cached call, and the predictor runs on all of them; the new positions' predictions replace the
        target block's output. A call that starts at position 0 starts a new sequence.
        """
        self.check_pair(source, target)
        history: dict[str, torch.Tensor | None] = {"source": None}
        busy = {"predicting": False}  # a predictor may run the subject's own blocks: its calls pass untouched

        def keep(h: torch.Tensor, starts: bool) -> None:
            if busy["predicting"]:
                return
            previous = history["source"]
            history["source"] = h if starts or previous is None else torch.cat([previous, h], dim=1)

        def source_pre(module, args, kwargs):  # source = -1: the input of block 0
            keep(_block_input(args, kwargs), self._starts_sequence(args, kwargs))

        starts_flag: dict[str, bool] = {}

        def source_block_pre(module, args, kwargs):
            starts_flag["value"] = self._starts_sequence(args, kwargs)

        def source_post(module, args, output):
            keep(hidden_of(output), starts_flag.pop("value", True))

        def target_post(module, args, output):
            if busy["predicting"]:
                return None
            h = hidden_of(output)
            busy["predicting"] = True
            try:
                full = predictor(history["source"])  # (B, T_all, d)
            finally:
                busy["predicting"] = False
            return with_hidden(output, full[:, -h.shape[1]:].to(device=h.device, dtype=h.dtype))

        def register() -> list:
            if source == EMBED:
                handles = [self.blocks[0].register_forward_pre_hook(source_pre, with_kwargs=True)]
            else:
                handles = [self.blocks[source].register_forward_pre_hook(source_block_pre, with_kwargs=True),
                           self.blocks[source].register_forward_hook(source_post)]
            return handles + [self.blocks[target].register_forward_hook(target_post)]

        with hooks(register):
            yield self
