"""Hugging Face causal LMs as subjects: Llama / SmolLM2, Mistral, Qwen2, Qwen3, GPT-2, GPT-NeoX (Pythia), Gemma 2,
Gemma 3, Phi-3, OLMo 2 and the mixtures of experts Qwen3-MoE, Qwen2-MoE and Mixtral.

Every fully supported family is one row of :data:`FAMILIES` (keyed by ``config.model_type``): where the trunk,
the block list, the final norm and, inside a block, the norms, the attention module, its output projection and the
MLP are, and how Q/K/V are stored. Everything else (residuals, splits, skipping, splicing) is the generic hook
machinery of :mod:`selfmodels.subjects.base`.

A decoder-only causal LM with no row is found **structurally** (:func:`find_blocks`): its blocks are the one
``nn.ModuleList`` of ``config.num_hidden_layers`` modules of one class (the one with the most parameters if
several), its embedding and LM head are the model's ``get_input_embeddings()`` / ``get_output_embeddings()``.
That is all residuals, split, skip and splice need: the logits after a replaced residual come from the model's
own ``forward`` (its final norm, projections and soft-capping included), with the blocks before the residual
replaced by stand-ins that run nothing. What needs to know a block's insides (``block_parts``, ``head_weights``)
needs a row.

The blocks of all families write ``output = input + attn_out + mlp_out``:

- pre-norm, sequential (Llama, ...): ``h' = h + attn(n1(h)); out = h' + mlp(n2(h'))``;
- pre-norm, parallel (GPT-NeoX with ``use_parallel_residual``): ``out = h + attn(n1(h)) + mlp(n2(h))``;
- pre- and post-norm (Gemma 2 / 3): ``h' = h + p1(attn(n1(h))); out = h' + p2(mlp(n2(h')))``;
- post-norm only (OLMo 2): ``h' = h + p1(attn(h)); out = h' + p2(mlp(h'))``.

``attn_out`` is what the block adds for its attention. Without a post-norm it is the output of the attention
output projection, ``x = Σ_h W_O[:, h] z_h (+ b)``, so head h writes its slice of that projection's columns.
With an RMSNorm post-norm ``p(x) = g ⊙ x / rms(x)``, ``rms(x) = sqrt(mean(x²) + ε)``, the block adds
``p(x) = Σ_h g ⊙ x_h / rms(x)``: head h writes ``g ⊙ x_h / rms(x)``, with the per-token scale ``1 / rms(x)`` of
the *summed* output shared by all heads, which keeps the decomposition exact (``describe()["structure"]`` says
so). Gemma's norms multiply by ``1 + w`` rather than ``w`` (``gain_offset``).

In a mixture-of-experts MLP the router picks the top k experts of each token and weighs them:
``mlp(x) = Σ_e r_e(x) · E_e(x)`` with ``r_e = 0`` for the experts not picked and
``E_e(x) = W_down,e (act(W_gate,e x) ⊙ W_up,e x)``; Qwen2-MoE adds a shared expert gated by a sigmoid,
``σ(w_s · x) · S(x)``. ``block_parts`` gives each expert's write ``r_e(x) · E_e(x)``, computed from the experts'
3-D weights (transformers 5 runs all experts of a block as one module, so there is no per-expert module to hook).

transformers is imported inside functions only, so importing this module stays cheap.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from functools import reduce
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from selfmodels.errors import UserError
from selfmodels.subjects.base import (
    EMBED, WEIGHTS_HASH, Subject, _block_input, _StopForward, hidden_of, hooks, weights_digest, weights_fingerprint,
)
from selfmodels.subjects.weights import head_writes, split_heads


@dataclass(frozen=True)
class Family:
    """Where one architecture keeps its parts. Paths are dotted attribute paths: ``trunk`` from the causal LM
    (the base model: embeddings, blocks, final norm), ``blocks`` and ``final_norm`` from the trunk, the norms,
    ``attention`` and ``mlp`` from one block, ``out_proj`` and ``qkv`` from the block's attention module. The LM
    head is the model's ``get_output_embeddings()``.

    ``pre_attn_norm``: the norm the attention reads through (None: it reads the residual itself, OLMo 2).
    ``post_attn_norm`` / ``post_mlp_norm``: RMSNorms applied to the attention's / MLP's output before it is
    added to the residual (Gemma 2 / 3, OLMo 2), None if there are none. ``gain_offset``: a norm's gain is
    ``offset + weight`` (Gemma: 1).

    ``qkv_layout``: ``separate`` - ``qkv`` names the Q, K and V projections (grouped-query attention allowed);
    ``fused`` - one projection whose output is [Q | K | V], H·d_head, G·d_head and G·d_head wide for G KV
    groups (GPT-2's ``c_attn`` with G = H, Phi-3's ``qkv_proj``); ``fused_per_head`` - one projection whose output
    is per head [q_h | k_h | v_h] (GPT-NeoX's ``query_key_value``, viewed as (H, 3·d_head) and chunked in three).
    ``conv1d``: weights are stored (in, out) as in GPT-2's Conv1D rather than nn.Linear's (out, in).
    ``qk_norm``: the queries and keys are normalised after the projection, ``per_head`` (Qwen3, Gemma 3) or over
    ``all_heads`` together (OLMo 2); head_weights are the projections before it.

    ``logit_softcap``: the causal LM's forward caps its logits, ``c · tanh(logits / c)`` with
    ``c = config.final_logit_softcapping`` (Gemma 2, Gemma 3 text-only); ``logits_from`` does the same.
    ``experts``: in a mixture-of-experts block, the experts module inside ``mlp`` (3-D ``gate_up_proj``,
    ``down_proj``; the router beside it returns the top-k indices and weights); blocks whose ``mlp`` has no such
    module are dense. ``shared_expert`` / ``shared_expert_gate``: Qwen2-MoE's always-on expert and its sigmoid
    gate, inside ``mlp``.
    """

    label: str
    trunk: str
    blocks: str
    final_norm: str
    pre_attn_norm: str | None
    attention: str
    out_proj: str
    mlp: str
    qkv: tuple[str, ...]
    qkv_layout: str = "separate"
    conv1d: bool = False
    post_attn_norm: str | None = None
    post_mlp_norm: str | None = None
    gain_offset: float = 0.0
    qk_norm: str | None = None
    logit_softcap: bool = False
    experts: str | None = None
    shared_expert: str | None = None
    shared_expert_gate: str | None = None

    @property
    def norms(self) -> str:
        """Where the block's norms sit: ``pre``, ``pre+post`` or ``post``."""
        post = self.post_attn_norm is not None
        return ("pre+post" if post else "pre") if self.pre_attn_norm is not None else "post"


_LLAMA_LIKE = dict(trunk="model", blocks="layers", final_norm="norm", pre_attn_norm="input_layernorm",
                   attention="self_attn", out_proj="o_proj", mlp="mlp", qkv=("q_proj", "k_proj", "v_proj"))
_GEMMA = dict(_LLAMA_LIKE, post_attn_norm="post_attention_layernorm", post_mlp_norm="post_feedforward_layernorm",
              gain_offset=1.0)
_MOE = dict(_LLAMA_LIKE, experts="experts")

# config.model_type -> where things are. The one table of supported architectures.
FAMILIES: dict[str, Family] = {
    "llama": Family("Llama / SmolLM / SmolLM2", **_LLAMA_LIKE),
    "mistral": Family("Mistral", **_LLAMA_LIKE),
    "qwen2": Family("Qwen2 / Qwen2.5", **_LLAMA_LIKE),
    # Qwen3 normalises each head's query and key (q_norm, k_norm) after the projection: head_weights gives the
    # projection weights, before those norms and before the rotary embedding.
    "qwen3": Family("Qwen3", **_LLAMA_LIKE, qk_norm="per_head"),
    "gpt2": Family("GPT-2", trunk="transformer", blocks="h", final_norm="ln_f", pre_attn_norm="ln_1",
                   attention="attn", out_proj="c_proj", mlp="mlp", qkv=("c_attn",), qkv_layout="fused", conv1d=True),
    "gpt_neox": Family("GPT-NeoX / Pythia", trunk="gpt_neox", blocks="layers", final_norm="final_layer_norm",
                       pre_attn_norm="input_layernorm", attention="attention", out_proj="dense", mlp="mlp",
                       qkv=("query_key_value",), qkv_layout="fused_per_head"),
    # Gemma: norms before and after attention and MLP with gain 1 + w; the embedding module itself multiplies by
    # sqrt(d). Gemma 2 caps the final logits; Gemma 3 normalises q and k per head. 4B and larger load as
    # `gemma3` (Gemma3ForConditionalGeneration, the text trunk under model.language_model, no logit cap in its
    # forward); 270M and 1B as `gemma3_text`.
    "gemma2": Family("Gemma 2", **_GEMMA, logit_softcap=True),
    "gemma3_text": Family("Gemma 3 text-only (270M, 1B)", **_GEMMA, qk_norm="per_head", logit_softcap=True),
    "gemma3": Family("Gemma 3 (4B and larger; the text trunk of Gemma3ForConditionalGeneration)",
                     **dict(_GEMMA, trunk="model.language_model"), qk_norm="per_head"),
    "phi3": Family("Phi-3", **dict(_LLAMA_LIKE, qkv=("qkv_proj",)), qkv_layout="fused"),
    "olmo2": Family("OLMo 2", **dict(_LLAMA_LIKE, pre_attn_norm=None), post_attn_norm="post_attention_layernorm",
                    post_mlp_norm="post_feedforward_layernorm", qk_norm="all_heads"),
    "qwen3_moe": Family("Qwen3-MoE", **_MOE, qk_norm="per_head"),
    "qwen2_moe": Family("Qwen2-MoE (with a sigmoid-gated shared expert)", **_MOE, shared_expert="shared_expert",
                        shared_expert_gate="shared_expert_gate"),
    "mixtral": Family("Mixtral", **_MOE),
}


def supported_list() -> str:
    return ", ".join(f"{key} ({family.label})" for key, family in FAMILIES.items())


ROW_NEEDS = ("a FAMILIES row (selfmodels.subjects.hf) must give: trunk, blocks, final_norm, pre_attn_norm, attention, "
             "out_proj, mlp, qkv and qkv_layout (and any post-norms, q/k norms, experts)")


def check_supported_config(config, name: str) -> None:
    """Refuse, from its config alone (before any weights are loaded), a model that is not decoder-only. Any other
    architecture is a subject: fully through its row of :data:`FAMILIES`, else found structurally."""
    model_type = getattr(config, "model_type", None)
    if getattr(config, "is_encoder_decoder", False):
        raise UserError(f"model {name!r} ({model_type!r}) is an encoder-decoder model: a subject is a decoder-only causal "
                        f"LM, one stack of blocks over one residual stream; model_type values with a FAMILIES row: "
                        f"{supported_list()} (other decoder-only causal LMs are found structurally)")


def check_causal_lm(model, name: str) -> None:
    """Refuse anything but a decoder-only Hugging Face causal LM with its LM head, one message each."""
    config = getattr(model, "config", None)
    if not isinstance(model, nn.Module) or config is None or not hasattr(model, "get_output_embeddings"):
        raise UserError(f"{name}: a subject needs a Hugging Face causal LM (a PreTrainedModel such as "
                        f"AutoModelForCausalLM returns), not {type(model).__name__}")
    check_supported_config(config, name)
    if model.get_output_embeddings() is None:
        raise UserError(f"{name}: a subject needs a causal LM with its LM head (AutoModelForCausalLM), "
                        f"not a bare {type(model).__name__}")
    can_generate = getattr(model, "can_generate", None)
    if callable(can_generate) and not can_generate():
        raise UserError(f"{name}: {type(model).__name__} is not a causal LM (it cannot generate: an encoder or a "
                        "classifier, not a decoder-only LM): load it with AutoModelForCausalLM")


def find_blocks(model: nn.Module, name: str, n_layers: int | None) -> str:
    """The dotted path (from the model) of its trunk's blocks, found structurally: an ``nn.ModuleList`` of
    ``n_layers`` modules (``config.num_hidden_layers``; any length if the config has none) all of one class,
    holding parameters and not the embedding; of several such lists the one with the most parameters (as
    tuned-lens picks its layers). A UserError naming the family where there is none."""
    embedding = model.get_input_embeddings()
    candidates = []
    for path, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0 or len({type(m) for m in module}) != 1:
            continue
        if n_layers is not None and len(module) != n_layers:
            continue
        if any(m is embedding for m in module.modules()):
            continue
        params = sum(p.numel() for p in module.parameters())
        if params:
            candidates.append((params, path))
    if not candidates:
        family = getattr(model.config, "model_type", None)
        wanted = f"{n_layers} modules" if n_layers is not None else "modules"
        raise UserError(f"{name}: the blocks of {type(model).__name__} (model_type {family!r}) cannot be found: it has no "
                        f"nn.ModuleList of {wanted} of one class (config.num_hidden_layers = {n_layers}), and it has no "
                        f"FAMILIES row; {ROW_NEEDS}. Families with a row: {supported_list()}")
    return max(candidates)[1]


def _path_of(model: nn.Module, target: nn.Module | None) -> str | None:
    return next((path for path, module in model.named_modules() if module is target), None) if target is not None else None


def _get(root: nn.Module, path: str) -> nn.Module:
    return reduce(getattr, path.split("."), root)


class _Recorder(nn.Module):
    """Stands in for block ``k`` during an arguments-only pass: keeps the arguments the model passes it and
    returns the residual unchanged; after block ``last`` it stops the pass."""

    def __init__(self, k: int, last: int, seen: dict, block: nn.Module, tuple_len: int = 0):
        super().__init__()
        self.k, self.last, self.seen, self.tuple_len = k, last, seen, tuple_len
        object.__setattr__(self, "block", block)  # not a submodule: only read for attributes the model's loop uses

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "block"), name)  # e.g. a layer's attention_type

    def forward(self, *args, **kwargs):
        self.seen[self.k] = (args[1:], {key: v for key, v in kwargs.items() if key != "hidden_states"})
        if self.k == self.last:
            raise _StopForward
        return _shaped(_block_input(args, kwargs), self.tuple_len)


class _StandIn(_Recorder):
    """Stands in for block ``k`` in a pass that only needs what comes after the blocks: returns its input, and
    the given residual ``h`` where ``k`` is the last block."""

    def __init__(self, k: int, last: int, block: nn.Module, h: torch.Tensor, tuple_len: int):
        super().__init__(k, last, {}, block, tuple_len)
        self.h = h

    def forward(self, *args, **kwargs):
        return _shaped(self.h if self.k == self.last else _block_input(args, kwargs), self.tuple_len)


def _shaped(hidden: torch.Tensor, tuple_len: int):
    """What a block returns: the hidden state, or a tuple of ``tuple_len`` whose first item it is."""
    return (hidden, *([None] * (tuple_len - 1))) if tuple_len else hidden


def _rms_scale(norm: nn.Module, x: torch.Tensor, gain_offset: float) -> torch.Tensor:
    """The post-norm p(x) = g ⊙ x / rms(x) as a per-token factor: g / rms(x), rms(x) = sqrt(mean(x²) + ε).
    ``x`` (..., d) float32 -> (..., d)."""
    eps = getattr(norm, "eps", None)
    eps = getattr(norm, "variance_epsilon", 1e-6) if eps is None else eps
    gain = norm.weight.detach().float() + gain_offset  # (d,)
    return gain * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def expert_writes(experts: nn.Module, x: torch.Tensor, index: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each expert's write ``r_e(x) · W_down,e (act(W_gate,e x) ⊙ W_up,e x)`` for tokens ``x`` (N, d) routed to the
    experts ``index`` (N, k) with router weights ``weights`` (N, k), from the 3-D weights ``gate_up_proj``
    (E, 2·I, d) as [gate; up] and ``down_proj`` (E, d, I). Returns the writes (N, E, d) and the router weights
    (N, E), both float32 and zero for the experts a token was not routed to; summed over experts the writes are
    the MLP's output."""
    if getattr(experts, "is_transposed", False) or getattr(experts, "has_bias", False) or not getattr(experts, "has_gate", True):
        raise UserError(f"{type(experts).__name__} stores its expert weights in a layout (transposed, with biases or "
                        "without a gate) that block_parts does not decompose: only [gate; up] and down without biases")
    n_experts = experts.num_experts
    x = x.detach().float()
    writes = x.new_zeros(x.shape[0], n_experts, x.shape[1])  # (N, E, d)
    dense = x.new_zeros(x.shape[0], n_experts)  # (N, E)
    for e in index.unique().tolist():
        if not 0 <= e < n_experts:  # a padding id some routers use for dropped tokens
            continue
        token, slot = torch.where(index == e)
        gate, up = F.linear(x[token], experts.gate_up_proj[e].detach().float()).chunk(2, dim=-1)  # (n, I) each
        out = F.linear(experts.act_fn(gate) * up, experts.down_proj[e].detach().float())  # (n, d)
        r = weights[token, slot].detach().float()  # (n,)
        writes[token, e] = out * r[:, None]
        dense[token, e] = r
    return writes, dense


class HFSubject(Subject):
    """A decoder-only Hugging Face causal LM as a subject, in any dtype and on any device: through its row of
    :data:`FAMILIES`, else found structurally (:func:`find_blocks`; ``block_parts`` and ``head_weights`` need a row).

    The subject's own passes (residuals, split, logits, block parts) and the model's passes inside ``skip`` /
    ``splice`` run in eval mode (no dropout), the modules' modes restored after. ``weights_sha256`` is always the
    digest of the weights in memory (:func:`~selfmodels.subjects.base.weights_digest`), never a file's hash.
    ``source`` (the loader passes it) sets ``id``, ``revision`` and any extra keys to record.
    """

    def __init__(self, model: nn.Module, name: str, tokenizer=None, source: dict | None = None):
        check_causal_lm(model, name)
        config = model.config
        if source and "weights_sha256" in source:
            raise ValueError("weights_sha256 is computed from the weights in memory; a source cannot give it")
        self.model, self.name, self.tokenizer = model, name, tokenizer
        self.family = config.model_type
        self.spec: Family | None = FAMILIES.get(self.family)
        self._source = dict(source or {})
        self._identity: tuple | None = None  # (weights_fingerprint, weights_digest)
        self._tuple_len: int | None = None  # what a block returns: 0 = a tensor, n = a tuple of n
        text = config.get_text_config() if hasattr(config, "get_text_config") else config  # Gemma 3: text_config
        self.text_config = text
        head = model.get_output_embeddings()
        self.vocab_size = getattr(head, "out_features", None) or head.weight.shape[0]
        if self.spec is not None:
            self.trunk = _get(model, self.spec.trunk)
            self._blocks_path = f"{self.spec.trunk}.{self.spec.blocks}"
            self.n_layers = text.num_hidden_layers
        else:  # found structurally: the whole causal LM runs (the early exit stops it inside the blocks)
            self.trunk = model
            self._blocks_path = find_blocks(model, name, getattr(text, "num_hidden_layers", None))
            self.n_layers = len(self.blocks)
        embed_width = model.get_input_embeddings().weight.shape[-1]
        self.d_model = getattr(text, "hidden_size", None) or embed_width
        self.n_heads = getattr(text, "num_attention_heads", None) or 1
        self.n_kv_heads = getattr(text, "num_key_value_heads", None) or self.n_heads
        self.d_head = getattr(text, "head_dim", None) or self.d_model // self.n_heads
        if len(self.blocks) != self.n_layers:  # pragma: no cover - a config that disagrees with its model
            raise UserError(f"{name}: config says {self.n_layers} layers, the model has {len(self.blocks)} blocks")
        cap = getattr(text, "final_logit_softcapping", None) if self.spec is not None and self.spec.logit_softcap else None
        self.logit_softcap: float | None = float(cap) if cap else None
        if self.spec is None:
            self.parts_unavailable = (f"model_type {self.family!r} has no FAMILIES row (its blocks were found structurally): "
                                      "a block's per-head writes, MLP write, attention weights and head weights need one")

    @property
    def device(self) -> torch.device:
        """Where token ids go: the input embedding's device, or with a ``device_map`` the device accelerate runs the
        embedding on (its weights may be offloaded to the CPU or disk, on the meta device)."""
        embedding = self.model.get_input_embeddings()
        execution = getattr(getattr(embedding, "_hf_hook", None), "execution_device", None)
        if execution is not None:
            return torch.device(f"cuda:{execution}" if isinstance(execution, int) else execution)
        return embedding.weight.device

    @property
    def structural(self) -> bool:
        """Whether the subject was found structurally (no FAMILIES row)."""
        return self.spec is None

    def _needs_row(self, what: str) -> UserError:
        return UserError(f"{self.name}: {what} needs a FAMILIES row for model_type {self.family!r}, which has none (its "
                         f"blocks were found structurally, which says nothing about a block's insides); {ROW_NEEDS}")

    # --- structure ---------------------------------------------------------------------------------
    @property
    def blocks(self) -> nn.ModuleList:
        return _get(self.model, self._blocks_path)

    def part(self, k: int, which: str) -> nn.Module | None:
        """A named part of block ``k``: ``pre_attn_norm``, ``attention``, ``out_proj``, ``mlp``,
        ``post_attn_norm``, ``post_mlp_norm`` or ``experts``; None where the family has no such part (no
        pre-attention norm in OLMo 2, no experts in a dense block)."""
        if self.spec is None:
            raise self._needs_row(f"the {which} of a block")
        block = self.blocks[k]
        if which == "out_proj":
            return _get(_get(block, self.spec.attention), self.spec.out_proj)
        if which == "experts":
            return getattr(_get(block, self.spec.mlp), self.spec.experts, None) if self.spec.experts else None
        path = getattr(self.spec, which)
        return None if path is None else _get(block, path)

    def expert_blocks(self) -> list[int]:
        """The blocks whose MLP is a mixture of experts (Qwen MoE's ``mlp_only_layers`` are dense)."""
        if self.spec is None:
            return []
        return [k for k in range(self.n_layers) if self.part(k, "experts") is not None]

    def _linear_weight(self, module: nn.Module) -> torch.Tensor:
        """A projection's weight in nn.Linear's (out, in) layout (GPT-2's Conv1D stores (in, out))."""
        return module.weight.t() if self.spec.conv1d else module.weight

    def describe(self) -> dict:
        """:meth:`Subject.describe` plus ``structure``: how the subject was found, where its norms are, how a block
        decomposes into heads and MLP (with post-norms: the shared per-token scale), its attention types, the
        final logit cap and the experts."""
        info = super().describe()
        if self.spec is None:
            info["structure"] = self._found_structurally()
            return info
        post = self.spec.post_attn_norm is not None
        experts = self.expert_blocks()
        first = self.part(experts[0], "experts") if experts else None
        info["structure"] = {
            "found": f"row {self.family!r} of selfmodels.subjects.hf.FAMILIES",
            "norms": self.spec.norms,
            "heads": ("each head writes g * x_h / rms(x) through the post-attention RMSNorm: the per-token scale "
                      "1/rms(x) of the summed attention output x is shared by all heads (exact: the heads sum to "
                      "the attention write)") if post else "each head writes its slice of the output projection",
            "attention_types": sorted(set(self.layer_types())),
            "final_logit_softcap": self.logit_softcap,
            "experts": None if first is None else {
                "n_experts": first.num_experts, "top_k": getattr(self.text_config, "num_experts_per_tok", None),
                "blocks": experts, "shared_expert": self.spec.shared_expert is not None},
        }
        return info

    def _found_structurally(self) -> dict:
        model, blocks = self.model, self.blocks
        norm = None
        parent = _get(model, self._blocks_path.rpartition(".")[0]) if "." in self._blocks_path else model
        for child_name, child in parent.named_children():  # a norm beside the blocks, tuned-lens style
            if child is not blocks and "norm" in type(child).__name__.lower():
                norm = f"{self._blocks_path.rpartition('.')[0]}.{child_name}".lstrip(".")
        return {
            "found": (f"structurally (model_type {self.family!r} has no row of selfmodels.subjects.hf.FAMILIES): blocks "
                      f"{self._blocks_path} ({len(blocks)} x {type(blocks[0]).__name__}); logits through the model's own "
                      "forward after the last block; block_parts and head_weights need a row"),
            "blocks": self._blocks_path, "embedding": _path_of(model, model.get_input_embeddings()),
            "final_norm": norm, "lm_head": _path_of(model, model.get_output_embeddings()),
            "attention_types": sorted(set(self.layer_types())), "experts": None,
        }

    # --- running -----------------------------------------------------------------------------------
    @contextmanager
    def observing(self) -> Iterator[None]:
        """The model in eval mode (dropout off, so observations are deterministic); every module's own mode is
        restored on exit, also when the pass raises."""
        modes = [(m, m.training) for m in self.model.modules()]
        if not any(training for _, training in modes):
            yield
            return
        self.model.eval()
        try:
            yield
        finally:
            for module, training in modes:
                module.training = training

    @contextmanager
    def skip(self, source: int, target: int) -> Iterator["HFSubject"]:
        """:meth:`Subject.skip`, the model in eval mode within the block."""
        with self.observing(), super().skip(source, target):
            yield self

    @contextmanager
    def splice(self, predictor, source: int, target: int) -> Iterator["HFSubject"]:
        """:meth:`Subject.splice`, the model in eval mode within the block."""
        with self.observing(), super().splice(predictor, source, target):
            yield self

    def check_ids(self, ids: torch.Tensor) -> None:
        """Refuse token ids outside the embedding's rows (the model would fail deep inside, or read garbage)."""
        rows = self.model.get_input_embeddings().num_embeddings
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= rows):
            raise UserError(f"token ids of {self.name} must lie in 0..{rows - 1} (its embedding has {rows} rows), got "
                            f"ids from {int(ids.min())} to {int(ids.max())}: use the model's own tokenizer")

    def _run_trunk(self, ids: torch.Tensor) -> None:
        self.check_ids(ids)
        with self.observing():
            self.trunk(input_ids=ids, use_cache=False)

    def _final(self, h: torch.Tensor) -> torch.Tensor:
        """Final norm and head; with ``logit_softcap`` c, ``c · tanh(logits / c)`` as the model's forward does.
        Found structurally: the model's own forward with every block a stand-in, the last returning ``h``, so
        whatever the model does after its blocks (norm, projection, soft-capping, head) applies."""
        with self.observing():
            if self.spec is None:
                return self._through_model(h)
            norm = _get(self.trunk, self.spec.final_norm)
            logits = self.model.get_output_embeddings()(norm(h.to(self.dtype)))
        if self.logit_softcap is not None:
            logits = torch.tanh(logits / self.logit_softcap) * self.logit_softcap
        return logits.float()

    def _block_tuple_len(self) -> int:
        """What the blocks return (0: a tensor; n: a tuple of n), seen once from block 0 on one token."""
        if self._tuple_len is None:
            seen = {}
            handle = self.blocks[0].register_forward_hook(lambda m, a, out: seen.setdefault("out", out))
            try:
                with torch.no_grad():
                    self._capture(torch.zeros(1, 1, dtype=torch.long, device=self.device), [0])
            finally:
                handle.remove()
            self._tuple_len = len(seen["out"]) if isinstance(seen["out"], tuple) else 0
        return self._tuple_len

    @contextmanager
    def _stand_ins(self, make) -> Iterator[None]:
        """Every block replaced by ``make(k, block)`` within the block, always put back."""
        blocks = self.blocks
        originals = list(blocks)
        try:
            for k, block in enumerate(originals):
                blocks[k] = make(k, block)
            yield
        finally:
            for k, block in enumerate(originals):
                blocks[k] = block

    def _through_model(self, h: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, V) of the model's own forward on the residual ``h`` (B, T, d) after the last block."""
        last, tuple_len = self.n_layers - 1, self._block_tuple_len()
        dummy = torch.zeros(h.shape[:2], dtype=torch.long, device=self.device)
        with self._stand_ins(lambda k, block: _StandIn(k, last, block, h.to(self.dtype), tuple_len)):
            return self.model(input_ids=dummy, use_cache=False).logits.float()

    def _starts_sequence(self, args: tuple, kwargs: dict) -> bool:
        """All families with a row pass ``position_ids`` to their blocks as a keyword. A call that contains
        position 0 starts a sequence (left padding also puts 0 on the pad positions); a KV-cached continuation
        only has later positions. A block given a KV cache but no positions cannot tell: refused."""
        position_ids = kwargs.get("position_ids")
        if position_ids is None:
            cache = next((kwargs.get(key) for key in ("cache", "past_key_values", "past_key_value", "layer_past")
                          if kwargs.get(key) is not None), None)
            if cache is not None:
                raise UserError(f"{self.name}: its blocks get a KV cache but no position_ids, so a splice cannot tell a "
                                "new sequence from a continuation: generate with use_cache=False inside the splice")
            return True
        return bool((position_ids == 0).any())

    def layer_types(self) -> list[str]:
        """Each block's attention type (``full_attention``, ``sliding_attention``, ...)."""
        types = getattr(self.text_config, "layer_types", None)
        if types:
            return list(types[: self.n_layers])
        attention = lambda block: _get(block, self.spec.attention) if self.spec is not None else block  # noqa: E731
        return [getattr(block, "attention_type", None) or getattr(attention(block), "layer_type", None)
                or "full_attention" for block in self.blocks]

    # Block arguments. Where all blocks use one attention type, one block's arguments serve them all (the base
    # class). Where types are mixed (sliding-window layers among full ones), the model passes each type its own
    # mask (and Gemma 3 its own rotary embedding), so every block's arguments are recorded: from a pass in which
    # the blocks are stand-ins that keep their arguments and return the residual unchanged (so no block runs).
    def _mixed_attention(self) -> bool:
        return len(set(self.layer_types())) > 1

    def _capture(self, ids: torch.Tensor, at: list[int], block_args_from: int | None = None) -> tuple[dict[int, torch.Tensor], tuple | dict]:
        if block_args_from is None or not self._mixed_attention():
            return super()._capture(ids, at, block_args_from)
        captured, _ = super()._capture(ids, at)
        return captured, self._arguments_per_block(ids)

    def _arguments_per_block(self, ids: torch.Tensor) -> dict[int, tuple]:
        """``{k: (args, kwargs)}``: what the model passes block k for a batch shaped like ``ids``."""
        seen, last, tuple_len = {}, self.n_layers - 1, self._block_tuple_len()
        with self._stand_ins(lambda k, block: _Recorder(k, last, seen, block, tuple_len)):
            try:
                self._run_trunk(ids)
            except _StopForward:
                pass
        return seen

    def run_blocks(self, h: torch.Tensor, start: int, stop: int, block_args: tuple | dict = ((), {})) -> torch.Tensor:
        """Blocks ``start .. stop-1`` applied to ``h`` (B, T, d); ``block_args`` is one ``(args, kwargs)`` for every
        block, or (mixed attention types) a dict of them per block index."""
        h = h.to(self.dtype)
        with self.observing():
            for k in range(start, stop):
                rest, kwargs = block_args[k] if isinstance(block_args, dict) else block_args
                h = hidden_of(self.blocks[k](h, *rest, **kwargs))
        return h

    # --- source ------------------------------------------------------------------------------------
    def source_info(self) -> dict:
        """``id`` (hub id or local directory the config names, else ``<name> (in memory)``), ``revision`` (the hub
        commit, if known; the constructor's ``source`` sets both and may add keys) and ``weights_sha256``, the
        digest of the weights in memory (:func:`~selfmodels.subjects.base.weights_digest`). The digest is kept
        while no weight moves or is written in place (``weights_fingerprint``), and recomputed otherwise."""
        info = dict(self._source)
        config = self.model.config
        origin = getattr(config, "_name_or_path", "") or ""
        info.setdefault("id", origin or f"{self.name} (in memory)")
        info.setdefault("revision", getattr(config, "_commit_hash", None))
        fingerprint = weights_fingerprint(self.model)
        if self._identity is None or self._identity[0] != fingerprint:
            self._identity = (fingerprint, weights_digest(self.model))
        info["weights_sha256"] = self._identity[1]
        info["weights_hash"] = WEIGHTS_HASH
        return info

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
        """:meth:`Subject.block_parts`. With a post-attention norm, ``heads`` are ``g ⊙ x_h / rms(x)`` (the shared
        per-token scale of the summed output x, see the module docstring) and ``attn_out`` is the post-norm's
        output. A mixture-of-experts block adds ``experts`` (B,T,E,d), each expert's write r_e · E_e(x) (zero where
        not routed), and ``expert_weights`` (B,T,E), the router weights r_e; Qwen2-MoE adds ``shared_expert``
        (B,T,d), the gated shared expert's write. ``experts`` summed over E plus ``shared_expert`` is ``mlp_out``."""
        self.check_index(k)
        if self.spec is None:
            raise self._needs_row("block_parts (per-head writes, MLP)")
        if k == EMBED:
            raise ValueError("block_parts needs a block index (0 or more), not the embeddings")
        spec = self.spec
        block, out_proj, experts = self.blocks[k], self.part(k, "out_proj"), self.part(k, "experts")
        post_attn, post_mlp = self.part(k, "post_attn_norm"), self.part(k, "post_mlp_norm")
        if post_attn is not None and out_proj.bias is not None:
            raise UserError(f"{self.name}: block {k}'s attention output projection has a bias before its post-norm, "
                            "whose write is not one (d,) vector: block_parts decomposes post-norm blocks without it")
        parts: dict[str, torch.Tensor] = {}
        routing: dict[str, list] = {}

        def keep(name: str, value: torch.Tensor) -> None:
            parts.setdefault(name, value.detach().float())  # the first call of block k only

        def keeper(name: str):
            return lambda module, args, output: keep(name, hidden_of(output))

        def block_pre(module, args, kwargs):
            keep("input", _block_input(args, kwargs))

        def out_pre(module, args):
            keep("o_in", args[0])

        def experts_pre(module, args, kwargs):
            names = ("hidden_states", "top_k_index", "top_k_weights")
            routing.setdefault("args", [*args, *(kwargs[n] for n in names[len(args):])])

        def attn_post(module, args, output):
            if isinstance(output, tuple) and len(output) > 1 and output[1] is not None:
                keep("attention", output[1])

        def block_post(module, args, output):
            keep("output", hidden_of(output))
            raise _StopForward

        def register() -> list:
            handles = [block.register_forward_pre_hook(block_pre, with_kwargs=True),
                       out_proj.register_forward_pre_hook(out_pre), out_proj.register_forward_hook(keeper("attn_raw")),
                       self.part(k, "mlp").register_forward_hook(keeper("mlp_raw")), block.register_forward_hook(block_post)]
            if post_attn is not None:
                handles.append(post_attn.register_forward_hook(keeper("attn_out")))
            if post_mlp is not None:
                handles.append(post_mlp.register_forward_hook(keeper("mlp_out")))
            if experts is not None:
                handles.append(experts.register_forward_pre_hook(experts_pre, with_kwargs=True))
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
        attn_raw, mlp_raw = parts.pop("attn_raw"), parts.pop("mlp_raw")
        parts.setdefault("attn_out", attn_raw)
        parts.setdefault("mlp_out", mlp_raw)
        w_o = self._linear_weight(out_proj).detach().float()  # (d, H·dh)
        heads = head_writes(parts.pop("o_in"), w_o, self.n_heads, self.d_head)  # (B, T, H, d)
        if post_attn is not None:
            heads = heads * _rms_scale(post_attn, attn_raw, spec.gain_offset).unsqueeze(-2)  # shared per-token scale
        parts["heads"] = heads
        bias = out_proj.bias
        parts["attn_bias"] = torch.zeros(self.d_model, device=w_o.device) if bias is None else bias.detach().float()
        if experts is not None:
            parts.update(self._expert_parts(k, experts, routing["args"], mlp_raw, post_mlp))
        return parts

    def _expert_parts(self, k: int, experts: nn.Module, routed: list, mlp_raw: torch.Tensor,
                      post_mlp: nn.Module | None) -> dict[str, torch.Tensor]:
        """``experts``, ``expert_weights`` and (Qwen2-MoE) ``shared_expert`` of block k, from the tokens, indices and
        weights the router handed the experts module (``routed``)."""
        x, index, weights = routed
        shape = mlp_raw.shape[:-1]  # (B, T)
        writes, dense = expert_writes(experts, x, index, weights)  # (N, E, d), (N, E)
        out = {"experts": writes.reshape(*shape, *writes.shape[1:]), "expert_weights": dense.reshape(*shape, -1)}
        if self.spec.shared_expert is not None:
            mlp = self.part(k, "mlp")
            with torch.no_grad():
                gate = torch.sigmoid(_get(mlp, self.spec.shared_expert_gate)(x))  # (N, 1)
                out["shared_expert"] = (gate * _get(mlp, self.spec.shared_expert)(x)).float().reshape(*shape, -1)
        if post_mlp is not None:  # the same shared per-token scale as the heads'
            scale = _rms_scale(post_mlp, mlp_raw, self.spec.gain_offset)  # (B, T, d)
            out["experts"] = out["experts"] * scale.unsqueeze(-2)
            if "shared_expert" in out:
                out["shared_expert"] = out["shared_expert"] * scale
        return out

    def head_weights(self, k: int) -> list[dict[str, torch.Tensor]]:
        """Per query head: ``q``, ``k``, ``v`` (d_head, d) with the pre-attention norm's gain folded in
        (``W · diag(offset + w)``; no folding where the attention reads the residual itself, OLMo 2), ``o``
        (d, d_head). Projection weights only: biases, a LayerNorm's shift, q/k norms after the projection
        (Qwen3, Gemma 3, OLMo 2), post-norms and the rotary embedding (all applied after or beside these weights)
        are not included."""
        self.check_index(k)
        if self.spec is None:
            raise self._needs_row("head_weights (per-head Q/K/V/O)")
        if k == EMBED:
            raise ValueError("head_weights needs a block index (0 or more), not the embeddings")
        attn = self.part(k, "attention")
        norm = self.part(k, "pre_attn_norm")
        gain = torch.ones(self.d_model) if norm is None else norm.weight.detach().float() + self.spec.gain_offset
        w_o = self._linear_weight(_get(attn, self.spec.out_proj))
        projections = [self._linear_weight(_get(attn, name)).detach().float() for name in self.spec.qkv]
        H, G, dh = self.n_heads, self.n_kv_heads, self.d_head
        if self.spec.qkv_layout == "separate":
            w_q, w_k, w_v = projections
            return split_heads(w_q, w_k, w_v, w_o, gain, H, G, dh)
        if self.spec.qkv_layout == "fused":
            w_q, w_k, w_v = projections[0].split([H * dh, G * dh, G * dh], dim=0)  # [Q | K | V] rows
            return split_heads(w_q, w_k, w_v, w_o, gain, H, G, dh)
        if self.spec.qkv_layout == "fused_per_head":
            per_head = projections[0].reshape(H, 3, dh, -1)  # rows of head h: [q_h; k_h; v_h]
            w_q, w_k, w_v = (per_head[:, i].reshape(H * dh, -1) for i in range(3))
            return split_heads(w_q, w_k, w_v, w_o, gain, H, H, dh)
        raise ValueError(f"unknown qkv layout {self.spec.qkv_layout!r}")  # pragma: no cover
