"""The forward self-model: a small pre-norm causal transformer from layer-i to layer-j activations.

Each block computes, on the residual ``h`` of shape (B, T, d)::

    h = h + W_o · softmax(mask(Q Kᵀ / sqrt(d_head))) V,   [Q, K, V] = W_qkv · LN(h) + b_qkv
    h = h + MLP(LN(h)),   MLP = W_2 · GELU(W_1 x + b_1) + b_2        (GELU)
                          MLP = W_down · (SiLU(W_gate x) ⊙ W_up x)   (SwiGLU, no biases)

There is no position embedding and no final LayerNorm: position information already lives in the
source activations, and the output lives in the target's own (un-normalised) space. The output
projections (attention ``W_o`` and the MLP's last layer) start at zero, so a fresh model is exactly
the identity map; it then learns only the layer's update (faster training, and an honest start).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from selfmodels.errors import require
from selfmodels.forward import pretrained
from selfmodels.forward.config import ForwardModelConfig  # defined there, torch-free


class _Attention(nn.Module):
    def __init__(self, cfg: ForwardModelConfig):
        super().__init__()
        self.n_head, self.d_head, self.causal = cfg.n_head, cfg.d_head, cfg.causal
        inner = cfg.n_head * cfg.d_head
        self.qkv = nn.Linear(cfg.d_model, 3 * inner)  # fused Q, K, V
        self.out = nn.Linear(inner, cfg.d_model)

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        B, T, _ = x.shape
        q, k, v = self.qkv(x).split(self.n_head * self.d_head, dim=-1)
        q, k, v = (t.view(B, T, self.n_head, self.d_head).transpose(1, 2) for t in (q, k, v))  # (B, H, T, dh)
        if return_attention:
            scores = q @ k.transpose(-2, -1) / math.sqrt(self.d_head)  # (B, H, T, T)
            if self.causal:
                mask = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
                scores = scores.masked_fill(mask, float("-inf"))
            attn = scores.softmax(dim=-1)  # (B, H, T, T)
            y = attn @ v  # (B, H, T, dh)
        else:
            attn = None
            y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)  # (B, H, T, dh)
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.d_head)  # (B, T, H*dh)
        return self.out(y), attn


class _GeluMLP(nn.Module):
    def __init__(self, d: int, hidden: int):
        super().__init__()
        self.fc, self.proj = nn.Linear(d, hidden), nn.Linear(hidden, d)

    @property
    def out(self) -> nn.Linear:
        """The output projection (zero-initialised by ForwardModel)."""
        return self.proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


class _SwiGLUMLP(nn.Module):
    def __init__(self, d: int, hidden: int):
        super().__init__()
        self.gate = nn.Linear(d, hidden, bias=False)
        self.up = nn.Linear(d, hidden, bias=False)
        self.down = nn.Linear(hidden, d, bias=False)

    @property
    def out(self) -> nn.Linear:
        return self.down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class _Block(nn.Module):
    def __init__(self, cfg: ForwardModelConfig):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.attn = _Attention(cfg)
        self.mlp = _GeluMLP(cfg.d_model, cfg.mlp_hidden) if cfg.mlp == "gelu" else _SwiGLUMLP(cfg.d_model, cfg.mlp_hidden)

    def forward(self, h: torch.Tensor, return_attention: bool = False):
        a, attn = self.attn(self.ln1(h), return_attention)
        h = h + a  # (B, T, d)
        h = h + self.mlp(self.ln2(h))  # (B, T, d)
        return h, attn


class ForwardModel(nn.Module):
    """Maps source activations (B, T, d) to a prediction of the target activations (B, T, d)."""

    def __init__(self, cfg: ForwardModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.blocks = nn.ModuleList(_Block(cfg) for _ in range(cfg.n_layer))
        for block in self.blocks:
            # Zero output projections: the model starts as the identity map.
            for linear in (block.attn.out, block.mlp.out):
                nn.init.zeros_(linear.weight)
                if linear.bias is not None:
                    nn.init.zeros_(linear.bias)

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        require(
            x.shape[-1] == self.cfg.d_model,
            f"forward model expects activations of width {self.cfg.d_model}, got {x.shape[-1]}: "
            "build it with --d-model equal to the main model's width",
        )
        patterns = []
        h = x
        for block in self.blocks:
            h, attn = block(h, return_attention)
            patterns.append(attn)
        return (h, patterns) if return_attention else h

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, seq_len: int) -> int:
        """Forward-pass FLOPs per token: 2 per weight of each matmul, plus the attention products
        (2 · T · H · d_head each for QKᵀ and AV, averaged over a causal sequence as T/2)."""
        c = self.cfg
        inner = c.n_head * c.d_head
        mlp = (3 if c.mlp == "swiglu" else 2) * c.d_model * c.mlp_hidden
        per_layer = 2 * (c.d_model * 3 * inner + inner * c.d_model + mlp) + 2 * 2 * (seq_len // 2) * inner
        return c.n_layer * per_layer

    # --- artifacts (format: selfmodels.forward.pretrained) ---------------------------------------------
    def save_pretrained(self, directory, *, subject: dict, source: int, target: int, data: dict):
        """Save to ``directory``: ``config.json`` (this config, the subject's id / revision / weight hash, the layer
        pair, the data) and ``model.safetensors``. ``subject`` is the subject's ``describe()``."""
        return pretrained.save_pretrained(self, directory, subject=subject, source=source, target=target, data=data)

    @classmethod
    def from_pretrained(cls, name_or_dir, subfolder: str | None = None, *, subject=None, device="cpu", revision=None) -> "ForwardModel":
        """Load a saved forward model (eval mode) from a directory or a Hugging Face hub repository (``subfolder``:
        one model of a repository holding several). With ``subject`` (a Subject or its ``describe()``), refuse a
        model trained on other weights. The loaded model's ``pair`` is its ``(source, target)``, ``record`` its config."""
        return pretrained.load_forward_model(name_or_dir, subfolder, subject=subject, device=device, revision=revision)
