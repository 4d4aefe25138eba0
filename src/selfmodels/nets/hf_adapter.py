"""An adapter over Hugging Face causal LMs of the Llama family (Llama, SmolLM, Mistral, Qwen2, Qwen3).

These share one shape: ``model.model.embed_tokens``, a list of decoder layers ``model.model.layers``, each
``h_out = h + attn(norm1(h)); h_out = h_out + mlp(norm2(h_out))`` with the attention output projection
``self_attn.o_proj`` whose input is the concatenation of the per-head outputs, then ``model.model.norm``
and ``model.lm_head``. Layer indices follow transformers: "layer k" is decoder layer k (0-based) and its
activation is the residual stream at that layer's output (``output_hidden_states[k + 1]``).

Everything works through plain PyTorch forward hooks registered in context managers that always remove
them (also when the forward pass raises). Activation collection stops the forward pass with a private
exception right after the last layer needed, so later layers and the LM head are never computed.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn

from selfmodels.errors import UserError

# model_type -> family name shown to users. All of these have the decoder-layer shape described above.
SUPPORTED_ARCHITECTURES = {
    "llama": "Llama / SmolLM / SmolLM2",
    "mistral": "Mistral",
    "qwen2": "Qwen2 / Qwen2.5",
    "qwen3": "Qwen3",
}


def supported_list() -> str:
    return ", ".join(f"{k} ({v})" for k, v in SUPPORTED_ARCHITECTURES.items())


def check_supported_config(config, name: str) -> None:
    """Refuse an architecture the adapter does not know, listing the supported ones."""
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_ARCHITECTURES:
        raise UserError(
            f"model {name!r} has architecture {model_type!r}, which is not supported; supported model_type values: "
            f"{supported_list()}"
        )


class _StopForward(Exception):
    """Raised from a hook after the last layer needed, so the rest of the model is never run."""


def _hidden_of(output):
    """Decoder layers return a tensor (transformers >= 5) or a tuple whose first item is the hidden state."""
    return output[0] if isinstance(output, tuple) else output


def _with_hidden(output, hidden: torch.Tensor):
    """The layer's output with its hidden state replaced, keeping the tuple structure if there is one."""
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


def _input_hidden(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


@contextmanager
def hooks(handles_factory: Callable[[], list]) -> Iterator[None]:
    """Register hooks (a callable returning their handles) for the block; always remove them after."""
    handles: list = []
    try:
        handles.extend(handles_factory())
        yield
    finally:
        for handle in handles:
            handle.remove()


class HFAdapter:
    """Named access to a Llama-family causal LM's layers, and hooks for collection and substitution."""

    def __init__(self, model: nn.Module, name: str = "model"):
        check_supported_config(model.config, name)
        self.model = model
        self.name = name
        config = model.config
        self.n_layers: int = config.num_hidden_layers
        self.d_model: int = config.hidden_size
        self.n_heads: int = config.num_attention_heads
        self.n_kv_heads: int = getattr(config, "num_key_value_heads", None) or self.n_heads
        self.d_head: int = getattr(config, "head_dim", None) or self.d_model // self.n_heads
        self.mlp_hidden: int = config.intermediate_size

    # --- structure -------------------------------------------------------------------------------
    @property
    def layers(self) -> nn.ModuleList:
        return self.model.model.layers

    def o_proj(self, k: int) -> nn.Linear:
        return self.layers[k].self_attn.o_proj

    def mlp(self, k: int) -> nn.Module:
        return self.layers[k].mlp

    @property
    def n_params(self) -> int:
        """Parameters of the whole model (tied embeddings counted once)."""
        return sum(p.numel() for p in self.model.parameters())

    @property
    def heads_per_group(self) -> int:
        return self.n_heads // self.n_kv_heads

    def check_layers(self, source: int, target: int) -> None:
        """Layer indices in range and target after source, or a UserError saying which are valid."""
        last = self.n_layers - 1
        if not (0 <= source < last):
            raise UserError(f"source layer {source} out of range for {self.name} ({self.n_layers} layers): use 0..{last - 1}")
        if not (source < target <= last):
            raise UserError(f"target layer {target} must be after source {source} and at most {last} for {self.name}")

    def describe(self) -> dict:
        return {
            "name": self.name, "model_type": self.model.config.model_type, "params": self.n_params,
            "n_layers": self.n_layers, "d_model": self.d_model, "n_heads": self.n_heads,
            "n_kv_heads": self.n_kv_heads, "d_head": self.d_head, "mlp_hidden": self.mlp_hidden,
            "vocab_size": self.model.config.vocab_size,
        }

    # --- collection --------------------------------------------------------------------------------
    @torch.no_grad()
    def collect(self, input_ids: torch.Tensor, layers: list[int]) -> dict[int, torch.Tensor]:
        """Residual stream at the output of each layer in ``layers``, each (B, T, d) float32.

        Runs the base model only up to ``max(layers)`` (a hook raises after it) and never the LM head.
        """
        for k in layers:
            if not 0 <= k < self.n_layers:
                raise UserError(f"layer {k} out of range for {self.name}: use 0..{self.n_layers - 1}")
        stop = max(layers)
        captured: dict[int, torch.Tensor] = {}

        def make(k: int):
            def hook(module, args, output):
                captured[k] = _hidden_of(output).float()
                if k == stop:
                    raise _StopForward

            return hook

        with hooks(lambda: [self.layers[k].register_forward_hook(make(k)) for k in set(layers)]):
            try:
                self.model.model(input_ids=input_ids, use_cache=False)
            except _StopForward:
                pass
        return captured

    @torch.no_grad()
    def collect_layer_parts(self, input_ids: torch.Tensor, layer: int, attention: bool = True) -> dict[str, torch.Tensor]:
        """Everything the analyses of one layer need, stopping after it (all float32):

        ``input`` (B,T,d) the layer's input residual; ``output`` (B,T,d); ``o_proj_in`` (B,T,H*d_head) the
        concatenated per-head outputs; ``attn_out`` (B,T,d) = o_proj(o_proj_in); ``mlp_out`` (B,T,d); and
        with ``attention`` the attention weights ``attention`` (B,H,T,T), computed with the eager kernel.
        """
        if not 0 <= layer < self.n_layers:
            raise UserError(f"layer {layer} out of range for {self.name}: use 0..{self.n_layers - 1}")
        block = self.layers[layer]
        parts: dict[str, torch.Tensor] = {}

        def pre_layer(module, args, kwargs):
            parts["input"] = _input_hidden(args, kwargs).float()

        def o_in(module, args):
            parts["o_proj_in"] = args[0].float()

        def o_out(module, args, output):
            parts["attn_out"] = output.float()

        def mlp_out(module, args, output):
            parts["mlp_out"] = output.float()

        def attn_weights(module, args, output):
            if isinstance(output, tuple) and len(output) > 1 and output[1] is not None:
                parts["attention"] = output[1].float()

        def post_layer(module, args, output):
            parts["output"] = _hidden_of(output).float()
            raise _StopForward

        def register() -> list:
            handles = [
                block.register_forward_pre_hook(pre_layer, with_kwargs=True),
                block.self_attn.o_proj.register_forward_pre_hook(o_in),
                block.self_attn.o_proj.register_forward_hook(o_out),
                block.mlp.register_forward_hook(mlp_out),
                block.register_forward_hook(post_layer),
            ]
            if attention:
                handles.append(block.self_attn.register_forward_hook(attn_weights))
            return handles

        with self.attention_implementation("eager" if attention else None), hooks(register):
            try:
                self.model.model(input_ids=input_ids, use_cache=False)
            except _StopForward:
                pass
        if attention and "attention" not in parts:
            raise RuntimeError(f"{self.name}: the eager attention did not return its weights")
        return parts

    @contextmanager
    def attention_implementation(self, name: str | None) -> Iterator[None]:
        """Temporarily switch the attention kernel (eager returns attention weights; sdpa does not)."""
        previous = self.model.config._attn_implementation
        if name is None or name == previous:
            yield
            return
        self.model.set_attn_implementation(name)
        try:
            yield
        finally:
            self.model.set_attn_implementation(previous)

    # --- interventions through hooks -----------------------------------------------------------
    @contextmanager
    def replace_output(self, layer: int, fn: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
        """Within the block, layer ``layer``'s output hidden state h becomes ``fn(h)``."""

        def hook(module, args, output):
            return _with_hidden(output, fn(_hidden_of(output)))

        with hooks(lambda: [self.layers[layer].register_forward_hook(hook)]):
            yield

    @contextmanager
    def skip(self, source: int, target: int) -> Iterator[None]:
        """Within the block, layers source+1..target are the identity (their input passes through)."""

        def hook(module, args, kwargs, output):
            return _with_hidden(output, _input_hidden(args, kwargs))

        with hooks(lambda: [self.layers[k].register_forward_hook(hook, with_kwargs=True) for k in range(source + 1, target + 1)]):
            yield

    # --- running pieces of the model (causal substitution with the prefix computed once) ------------
    def _check_uniform_attention(self, start: int) -> None:
        """Layers from ``start`` on must share one attention type, so one captured mask serves them all."""
        kinds = {getattr(layer, "attention_type", "full_attention") for layer in self.layers[start:]}
        if len(kinds) > 1:
            raise UserError(
                f"{self.name} mixes attention types {sorted(kinds)} after layer {start}: layer-by-layer substitution "
                "is supported only for models whose layers all use the same attention (no sliding-window mix)"
            )

    @torch.no_grad()
    def prefix(self, input_ids: torch.Tensor, source: int) -> tuple[torch.Tensor, dict]:
        """Residual after layer ``source`` (B,T,d) and the keyword arguments (attention mask, rotary position
        embeddings, ...) the model passes to its layers, captured from layer ``source``'s call. Stops there."""
        captured: dict = {}

        def pre(module, args, kwargs):
            captured["kwargs"] = {key: v for key, v in kwargs.items() if key != "hidden_states"}

        def post(module, args, output):
            captured["hidden"] = _hidden_of(output)
            raise _StopForward

        block = self.layers[source]
        with hooks(lambda: [block.register_forward_pre_hook(pre, with_kwargs=True), block.register_forward_hook(post)]):
            try:
                self.model.model(input_ids=input_ids, use_cache=False)
            except _StopForward:
                pass
        return captured["hidden"], captured["kwargs"]

    @torch.no_grad()
    def run_layers(self, hidden: torch.Tensor, start: int, stop: int, layer_kwargs: dict) -> torch.Tensor:
        """Decoder layers start..stop-1 applied to the residual ``hidden`` (B,T,d), with the model's own
        layer keyword arguments (from :meth:`prefix`)."""
        h = hidden.to(self.dtype)
        for k in range(start, stop):
            h = _hidden_of(self.layers[k](h, **layer_kwargs))
        return h

    @torch.no_grad()
    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm and LM head: residual after the last layer (B,T,d) -> logits (B,T,V) float32."""
        return self.model.lm_head(self.model.model.norm(hidden.to(self.dtype))).float()

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def split(self, source: int, target: int):
        """A :class:`selfmodels.forward.substitution.LayerSplit` of this model at layers source < target:
        ``prefix(ids)`` -> residual after ``source`` (running no later layer), ``middle`` -> layers
        source+1..target, ``suffix`` -> layers target+1..L-1, norm and head. The mask and rotary embeddings
        captured by the last ``prefix`` call are reused by ``middle`` and ``suffix`` (same batch shape)."""
        from selfmodels.forward.substitution import LayerSplit

        self.check_layers(source, target)
        self._check_uniform_attention(source)
        state: dict = {}

        def prefix(ids: torch.Tensor) -> torch.Tensor:
            hidden, state["kwargs"] = self.prefix(ids, source)
            return hidden.float()

        def middle(h: torch.Tensor) -> torch.Tensor:
            return self.run_layers(h, source + 1, target + 1, state["kwargs"]).float()

        def suffix(h: torch.Tensor) -> torch.Tensor:
            return self.head(self.run_layers(h, target + 1, self.n_layers, state["kwargs"]))

        return LayerSplit(prefix=prefix, middle=middle, suffix=suffix)


def pack_tokens(token_ids: torch.Tensor, seq_len: int, bos_id: int | None = None) -> torch.Tensor:
    """Cut a 1-D token stream into whole chunks (N, seq_len); with ``bos_id``, each chunk starts with it.

    The remainder that does not fill a chunk is dropped. Whether a BOS leads each chunk is a choice the
    caller records (the paper's Llama inputs were packed 2048-token chunks without BOS).
    """
    if seq_len < 2:
        raise UserError(f"sequence length must be at least 2, got {seq_len}")
    body = seq_len - 1 if bos_id is not None else seq_len
    n = token_ids.numel() // body
    if n == 0:
        raise UserError(f"only {token_ids.numel()} tokens: not enough text for one chunk of {seq_len}")
    chunks = token_ids[: n * body].reshape(n, body)  # (N, body)
    if bos_id is not None:
        chunks = torch.cat([torch.full((n, 1), bos_id, dtype=chunks.dtype), chunks], dim=1)  # (N, seq_len)
    return chunks
