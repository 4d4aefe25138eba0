"""Hugging Face causal LMs as subjects: Llama / SmolLM2, Mistral, Qwen2, Qwen3, GPT-2 and GPT-NeoX (Pythia).

Every supported family is one row of :data:`FAMILIES` (keyed by ``config.model_type``): where the trunk, the
block list, the final norm and, inside a block, the pre-attention norm, the attention module, its output
projection and the MLP are, and how Q/K/V are stored. Everything else (residuals, splits, skipping,
splicing) is the generic hook machinery of :mod:`selfmodels.subjects.base`.

The blocks of all families write ``output = input + attn_out + mlp_out``: sequentially
(``h' = h + attn(norm1(h)); out = h' + mlp(norm2(h'))``) or, for GPT-NeoX with ``use_parallel_residual``,
in parallel (``out = h + attn(norm1(h)) + mlp(norm2(h))``). ``attn_out`` is the output of the attention output
projection, whose input is the concatenation of the per-head outputs, so each head's write is its slice of
that projection's columns.

transformers is imported inside functions only, so importing this module stays cheap.
"""

from __future__ import annotations

import hashlib
import json
import re
from contextlib import contextmanager
from dataclasses import dataclass
from functools import reduce
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from selfmodels.artifacts import sha256_file
from selfmodels.errors import UserError
from selfmodels.subjects.base import (
    EMBED, LayerSplit, Subject, _block_input, _StopForward, hidden_of, hooks, state_dict_sha256,
)
from selfmodels.subjects.weights import fused_qkv_heads, head_writes, split_heads


@dataclass(frozen=True)
class Family:
    """Where one architecture keeps its parts. Paths are dotted attribute paths: ``trunk`` from the causal LM
    (the base model: embeddings, blocks, final norm), ``blocks`` and ``final_norm`` from the trunk, the rest
    from one block (``out_proj`` and ``qkv`` from the block's attention module). The LM head is the model's
    ``get_output_embeddings()``.

    ``qkv_layout``: ``separate`` - ``qkv`` names the Q, K and V projections (grouped-query attention allowed);
    ``fused`` - one projection whose output is [Q | K | V], each H·d_head wide (GPT-2's ``c_attn``);
    ``fused_per_head`` - one projection whose output is per head [q_h | k_h | v_h] (GPT-NeoX's
    ``query_key_value``, viewed as (H, 3·d_head) and chunked in three). ``conv1d``: weights are stored
    (in, out) as in GPT-2's Conv1D rather than nn.Linear's (out, in).
    """

    label: str
    trunk: str
    blocks: str
    final_norm: str
    pre_attn_norm: str
    attention: str
    out_proj: str
    mlp: str
    qkv: tuple[str, ...]
    qkv_layout: str = "separate"
    conv1d: bool = False


_LLAMA_LIKE = dict(trunk="model", blocks="layers", final_norm="norm", pre_attn_norm="input_layernorm",
                   attention="self_attn", out_proj="o_proj", mlp="mlp", qkv=("q_proj", "k_proj", "v_proj"))

# config.model_type -> where things are. The one table of supported architectures.
FAMILIES: dict[str, Family] = {
    "llama": Family("Llama / SmolLM / SmolLM2", **_LLAMA_LIKE),
    "mistral": Family("Mistral", **_LLAMA_LIKE),
    "qwen2": Family("Qwen2 / Qwen2.5", **_LLAMA_LIKE),
    # Qwen3 normalises each head's query and key (q_norm, k_norm) after the projection: head_weights gives the
    # projection weights, before those norms and before the rotary embedding.
    "qwen3": Family("Qwen3", **_LLAMA_LIKE),
    "gpt2": Family("GPT-2", trunk="transformer", blocks="h", final_norm="ln_f", pre_attn_norm="ln_1",
                   attention="attn", out_proj="c_proj", mlp="mlp", qkv=("c_attn",), qkv_layout="fused", conv1d=True),
    "gpt_neox": Family("GPT-NeoX / Pythia", trunk="gpt_neox", blocks="layers", final_norm="final_layer_norm",
                       pre_attn_norm="input_layernorm", attention="attention", out_proj="dense", mlp="mlp",
                       qkv=("query_key_value",), qkv_layout="fused_per_head"),
}


def supported_list() -> str:
    return ", ".join(f"{key} ({family.label})" for key, family in FAMILIES.items())


def check_supported_config(config, name: str) -> None:
    """Refuse an architecture no row of :data:`FAMILIES` describes (before any weights are loaded)."""
    model_type = getattr(config, "model_type", None)
    if model_type not in FAMILIES:
        raise UserError(f"model {name!r} has architecture {model_type!r}, which is not supported; "
                        f"supported model_type values: {supported_list()}")


def _get(root: nn.Module, path: str) -> nn.Module:
    return reduce(getattr, path.split("."), root)


# --- weight hashes ---------------------------------------------------------------------------------
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _sha256_file(path: Path) -> str:
    """SHA-256 of a file. A Hugging Face cache entry is a link to ``blobs/<sha256>`` for LFS files: that name
    is the content hash already, so a multi-gigabyte file is not read again."""
    if path.is_symlink():
        blob = path.resolve().name
        if _SHA256.match(blob) and path.resolve().parent.name == "blobs":
            return blob
    return sha256_file(path)


def weight_files(directory: Path) -> list[Path]:
    """The weight files transformers loads from a model directory: the shards of a safetensors index, else
    ``model.safetensors``, else the PyTorch equivalents, else every ``*.safetensors`` (sorted by name)."""
    directory = Path(directory)
    for index, single in (("model.safetensors.index.json", "model.safetensors"),
                          ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        if (directory / index).is_file():
            shards = sorted(set(json.loads((directory / index).read_text())["weight_map"].values()))
            return [directory / shard for shard in shards]
        if (directory / single).is_file():
            return [directory / single]
    return sorted(directory.glob("*.safetensors"))


def weights_sha256(files: list[Path]) -> str:
    """One SHA-256 over weight files: of the lines ``<name> <sha256>`` for the files sorted by name."""
    if not files:
        raise ValueError("no weight files to hash")
    lines = "".join(f"{path.name} {_sha256_file(path)}\n" for path in sorted(files, key=lambda p: p.name))
    return hashlib.sha256(lines.encode()).hexdigest()


def hub_snapshot(model_id: str, revision: str | None) -> Path | None:
    """The local Hugging Face cache directory of ``model_id`` at ``revision``, if it is there."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - installed with transformers
        return None
    try:
        found = try_to_load_from_cache(model_id, "config.json", revision=revision)
    except Exception:  # noqa: BLE001 - not a valid repo id (e.g. a path): nothing cached
        return None
    return Path(found).parent if isinstance(found, str) else None


class HFSubject(Subject):
    """A Hugging Face causal LM of a supported family (see :data:`FAMILIES`) as a subject.

    ``source`` (the loader passes it) overrides what :meth:`source_info` would work out from the model:
    ``id``, ``revision``, ``weights_sha256`` and any extra keys to record.
    """

    def __init__(self, model: nn.Module, name: str, tokenizer=None, source: dict | None = None):
        config = model.config
        check_supported_config(config, name)
        self.model, self.name, self.tokenizer = model, name, tokenizer
        self.family = config.model_type
        self.spec = FAMILIES[self.family]
        self._source = dict(source or {})
        self._source_info: dict | None = None
        self.n_layers = config.num_hidden_layers
        self.d_model = config.hidden_size
        self.n_heads = config.num_attention_heads
        self.n_kv_heads = getattr(config, "num_key_value_heads", None) or self.n_heads
        self.d_head = getattr(config, "head_dim", None) or self.d_model // self.n_heads
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if head is None:
            raise UserError(f"{name}: a subject needs a causal LM with its LM head (AutoModelForCausalLM), "
                            f"not a bare {type(model).__name__}")
        self.vocab_size = head.out_features
        self.trunk = _get(model, self.spec.trunk)
        if len(self.blocks) != self.n_layers:  # pragma: no cover - a config that disagrees with its model
            raise UserError(f"{name}: config says {self.n_layers} layers, the model has {len(self.blocks)} blocks")

    # --- structure ---------------------------------------------------------------------------------
    @property
    def blocks(self) -> nn.ModuleList:
        return _get(self.trunk, self.spec.blocks)

    def part(self, k: int, which: str) -> nn.Module:
        """A named part of block ``k``: ``pre_attn_norm``, ``attention``, ``out_proj`` or ``mlp``."""
        block = self.blocks[k]
        if which == "out_proj":
            return _get(_get(block, self.spec.attention), self.spec.out_proj)
        return _get(block, getattr(self.spec, which))

    def _linear_weight(self, module: nn.Module) -> torch.Tensor:
        """A projection's weight in nn.Linear's (out, in) layout (GPT-2's Conv1D stores (in, out))."""
        return module.weight.t() if self.spec.conv1d else module.weight

    # --- running -----------------------------------------------------------------------------------
    def _run_trunk(self, ids: torch.Tensor) -> None:
        self.trunk(input_ids=ids, use_cache=False)

    def _final(self, h: torch.Tensor) -> torch.Tensor:
        norm = _get(self.trunk, self.spec.final_norm)
        return self.model.get_output_embeddings()(norm(h.to(self.dtype))).float()

    def _starts_sequence(self, args: tuple, kwargs: dict) -> bool:
        """All supported families pass ``position_ids`` to their blocks as a keyword. A call that contains
        position 0 starts a sequence (left padding also puts 0 on the pad positions); a KV-cached continuation
        only has later positions."""
        position_ids = kwargs.get("position_ids")
        if position_ids is None:
            return True
        return bool((position_ids == 0).any())

    def layer_types(self) -> list[str]:
        """Each block's attention type (``full_attention``, ``sliding_attention``, ...)."""
        types = getattr(self.model.config, "layer_types", None)
        if types:
            return list(types[: self.n_layers])
        return [getattr(block, "attention_type", None) or getattr(_get(block, self.spec.attention), "layer_type", None)
                or "full_attention" for block in self.blocks]

    def _check_uniform_attention(self) -> None:
        """One captured set of block arguments (one attention mask) serves every block only if all blocks use
        the same attention type."""
        kinds = sorted(set(self.layer_types()))
        if len(kinds) > 1:
            raise UserError(f"{self.name} mixes attention types {kinds} across its layers: splitting it into pieces "
                            "that share one set of block arguments is supported only for models whose layers all "
                            "use the same attention (no sliding-window mix)")

    def split(self, source: int, target: int) -> LayerSplit:
        self.check_pair(source, target)
        self._check_uniform_attention()
        return super().split(source, target)

    def logits_from(self, h: torch.Tensor, index: int, block_args: tuple | None = None) -> torch.Tensor:
        self.check_index(index)
        self._check_uniform_attention()
        return super().logits_from(h, index, block_args)

    # --- source ------------------------------------------------------------------------------------
    def source_info(self) -> dict:
        """``id`` (hub id or local directory), ``revision`` (the hub commit, if known) and ``weights_sha256``
        (over the weight files, or the state dict's safetensors bytes for a model built in memory), with the
        constructor's ``source`` taking precedence. Computed once."""
        if self._source_info is None:
            info = dict(self._source)
            config = self.model.config
            origin = getattr(config, "_name_or_path", "") or ""
            info.setdefault("id", origin or f"{self.name} (in memory)")
            info.setdefault("revision", getattr(config, "_commit_hash", None))
            if "weights_sha256" not in info:
                info["weights_sha256"] = self._weights_sha256(origin, info["revision"])
            self._source_info = info
        return dict(self._source_info)

    def _weights_sha256(self, origin: str, revision: str | None) -> str:
        directory = None
        if origin and Path(origin).is_dir():
            directory = Path(origin)
        elif origin:
            directory = hub_snapshot(origin, revision)
        files = weight_files(directory) if directory is not None else []
        return weights_sha256(files) if files else state_dict_sha256(self.model)

    # --- per-block pieces ------------------------------------------------------------------------------
    @contextmanager
    def attention_implementation(self, name: str | None) -> Iterator[None]:
        """Temporarily switch the attention kernel (eager returns the attention weights); always restored."""
        previous = self.model.config._attn_implementation
        if name is None or name == previous:
            yield
            return
        self.model.set_attn_implementation(name)
        try:
            yield
        finally:
            self.model.set_attn_implementation(previous)

    def block_parts(self, ids: torch.Tensor, k: int, attention: bool = True) -> dict[str, torch.Tensor]:
        self.check_index(k)
        if k == EMBED:
            raise ValueError("block_parts needs a block index (0 or more), not the embeddings")
        block, out_proj = self.blocks[k], self.part(k, "out_proj")
        parts: dict[str, torch.Tensor] = {}

        def keep(name: str, value: torch.Tensor) -> None:
            parts.setdefault(name, value.detach().float())  # the first call of block k only

        def block_pre(module, args, kwargs):
            keep("input", _block_input(args, kwargs))

        def out_pre(module, args):
            keep("o_in", args[0])

        def out_post(module, args, output):
            keep("attn_out", output)

        def mlp_post(module, args, output):
            keep("mlp_out", hidden_of(output))

        def attn_post(module, args, output):
            if isinstance(output, tuple) and len(output) > 1 and output[1] is not None:
                keep("attention", output[1])

        def block_post(module, args, output):
            keep("output", hidden_of(output))
            raise _StopForward

        def register() -> list:
            handles = [block.register_forward_pre_hook(block_pre, with_kwargs=True),
                       out_proj.register_forward_pre_hook(out_pre), out_proj.register_forward_hook(out_post),
                       self.part(k, "mlp").register_forward_hook(mlp_post), block.register_forward_hook(block_post)]
            if attention:
                handles.append(self.part(k, "attention").register_forward_hook(attn_post))
            return handles

        with torch.no_grad(), self.attention_implementation("eager" if attention else None), hooks(register):
            try:
                self._run_trunk(ids.to(self.device))
            except _StopForward:
                pass
        if attention and "attention" not in parts:
            raise RuntimeError(f"{self.name}: the eager attention of block {k} did not return its weights")
        w_o = self._linear_weight(out_proj).detach().float()  # (d, H·dh)
        parts["heads"] = head_writes(parts.pop("o_in"), w_o, self.n_heads, self.d_head)  # (B, T, H, d)
        bias = out_proj.bias
        parts["attn_bias"] = torch.zeros(self.d_model, device=w_o.device) if bias is None else bias.detach().float()
        return parts

    def head_weights(self, k: int) -> list[dict[str, torch.Tensor]]:
        """Per query head: ``q``, ``k``, ``v`` (d_head, d) with the pre-attention norm's gain folded in, ``o``
        (d, d_head). Projection weights only: biases, a LayerNorm's shift, Qwen3's per-head q/k norms and the
        rotary embedding (all applied after or beside these weights) are not included."""
        self.check_index(k)
        if k == EMBED:
            raise ValueError("head_weights needs a block index (0 or more), not the embeddings")
        attn = self.part(k, "attention")
        gain = self.part(k, "pre_attn_norm").weight
        w_o = self._linear_weight(_get(attn, self.spec.out_proj))
        projections = [self._linear_weight(_get(attn, name)).detach().float() for name in self.spec.qkv]
        H, dh = self.n_heads, self.d_head
        if self.spec.qkv_layout == "separate":
            w_q, w_k, w_v = projections
            return split_heads(w_q, w_k, w_v, w_o, gain, H, self.n_kv_heads, dh)
        if self.spec.qkv_layout == "fused":
            return fused_qkv_heads(projections[0], w_o, gain, H, dh)
        if self.spec.qkv_layout == "fused_per_head":
            per_head = projections[0].reshape(H, 3, dh, -1)  # rows of head h: [q_h; k_h; v_h]
            w_q, w_k, w_v = (per_head[:, i].reshape(H * dh, -1) for i in range(3))
            return split_heads(w_q, w_k, w_v, w_o, gain, H, H, dh)
        raise ValueError(f"unknown qkv layout {self.spec.qkv_layout!r}")  # pragma: no cover
