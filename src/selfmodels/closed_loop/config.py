"""The settings of a closed-loop run, their checks and the presets that fill them in (no torch here).

Residual indices follow the package's one convention: -1 is the embeddings, k the residual after block k. The loop
reads h_i (``source``), writes into h_m (``inject``, i.e. before block m + 1) and F predicts h_j (``target``), with
``-1 <= i <= m < j <= n_layer - 1``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from selfmodels.closed_loop.battery_config import BatteryConfig
from selfmodels.closed_loop.conditions import CONDITIONS
from selfmodels.configs import option, to_dict
from selfmodels.errors import require
from selfmodels.forward.config import ForwardModelConfig
from selfmodels.nets.config import GPTConfig
from selfmodels.options import Presets
from selfmodels.subjects.config import GPT_NAME, CorpusConfig, LMTrainConfig

RESULT_VERSION = 1

# ``selfmodels closed-loop --preset NAME``: data files, ``preset_files/*.json`` (our GPT only, for now); full (the
# author's setting, one GPU) is the default, as for selfmodel-lm; quick is CPU-sized.
PRESETS = Presets("selfmodels.closed_loop", (("", None),), folder="preset_files")


def default_bottleneck(d_model: int) -> int:
    """The autoencoder's bottleneck when none is set: 64, or 16 at widths of 64 and below."""
    return 16 if d_model <= 64 else 64


def check_indices(source: int, inject: int, target: int, n_layers: int | None) -> None:
    """One message when (i, m, j) is out of range for ``n_layers`` blocks or not ``i <= m < j`` (``n_layers`` None:
    a pretrained subject not read yet; only the lower bound and the order are checked)."""
    for name, value in (("i (source)", source), ("m (inject)", inject), ("j (target)", target)):
        require(value >= -1, f"closed-loop index {name} = {value} is out of range: indices run from -1 (the embeddings) "
                             "up to the last block's")
        require(n_layers is None or value <= n_layers - 1,
                f"closed-loop index {name} = {value} is out of range for a network with {n_layers} blocks: indices run "
                f"from -1 (the embeddings) to {(n_layers or 0) - 1} (after the last block)")
    require(source <= inject < target,
            f"closed-loop indices i = {source}, m = {inject}, j = {target} do not satisfy i <= m < j (F reads h_i, G "
            "writes into h_m, F predicts h_j): set --pair I J and --inject M accordingly")


@dataclass
class LoopConfig:
    """Where the loop closes, what is injected and how the forward model F is trained."""

    condition: str = option("forward", "what is injected, from the registry (closed_loop/conditions.py CONDITIONS): "
                            "open-loop, forward, shifted, random-projection, autoencoder or forward-frozen",
                            choices=CONDITIONS)
    source: int = option(0, "i: the residual F reads (-1 = embeddings, k = after block k)")
    inject: int = option(1, "m: the residual G's output is added to (before block m + 1); i <= m < j")
    target: int = option(3, "j: the residual F predicts (on-policy: h_j of the same pass, injection active)")
    shift: int = option(10, "k: the shifted condition gives position t the prediction for t - k (zeros for t < k)")
    forward_lr: float = option(1e-3, "F's learning rate (AdamW)")
    forward_weight_decay: float = option(0.01, "F's AdamW weight decay (matrices only)")
    forward_grad_clip: float = option(1.0, "F's gradient-norm clip")
    lm_into_forward: bool = option(False, "let the LM loss's gradient into F's parameters through the injection "
                                   "(F's input stays detached); off: F learns from its MSE alone")
    bottleneck: int | None = option(None, "the autoencoder's bottleneck width (none: 64, or 16 at d <= 64)")

    def validate(self, n_layers: int | None) -> None:
        """Everything that can be wrong with the loop for a model of ``n_layers`` blocks (None: not known yet), as one
        message."""
        CONDITIONS.get(self.condition)  # unknown -> UserError listing the registered ones
        check_indices(self.source, self.inject, self.target, n_layers)
        require(self.shift >= 1, f"--shift must be at least 1 (position t receives the prediction for t - k), got "
                                 f"{self.shift}")
        require(self.forward_lr > 0, f"--loop.forward-lr must be positive, got {self.forward_lr}")
        require(self.forward_grad_clip > 0, f"--loop.forward-grad-clip must be positive, got {self.forward_grad_clip}")
        require(self.bottleneck is None or self.bottleneck >= 1,
                f"--loop.bottleneck must be at least 1 (or unset), got {self.bottleneck}")


@dataclass
class ClosedLoopConfig:
    """One closed-loop run: one condition on our GPT trained from scratch or on a pretrained subject fine-tuned."""

    main: str = option("gpt", "gpt (ours, trained from scratch) or a pretrained model to fine-tune (--subject)", cli=False)
    seq_len: int = option(64, "tokens per window (our GPT's context)")
    gpt: GPTConfig = field(default_factory=lambda: GPTConfig(n_layer=4, n_head=4, d_model=64))
    lm: LMTrainConfig = field(default_factory=lambda: LMTrainConfig(steps=1000, batch_size=16, lr=1e-3, eval_every=100))
    corpus: CorpusConfig = field(default_factory=lambda: CorpusConfig(vocab_size=512))
    loop: LoopConfig = field(default_factory=LoopConfig)
    forward: ForwardModelConfig = field(default_factory=lambda: ForwardModelConfig(n_layer=2, n_head=1, d_head=16))
    eval_windows: int = option(64, "held-out windows for the validation losses, F's fit and the norms")
    seed: int = option(0, "seed of the initialisation and the data order (every condition of a seed starts alike)")
    battery: BatteryConfig = field(default_factory=BatteryConfig)  # what measures the trained loop; not in key()

    def validate(self, n_layers: int | None = None) -> None:
        """Everything that can be wrong, as one message. The indices are checked against our GPT's ``--gpt.n-layer``
        or, for a pretrained subject, against ``n_layers`` (its config's blocks; None before it is read: the command
        reads its config first, the build checks them against the loaded model)."""
        self.loop.validate(self.gpt.n_layer if self.main == GPT_NAME else n_layers)
        require(self.seq_len >= 2, f"--seq-len must be at least 2, got {self.seq_len}")
        require(self.eval_windows >= 1, f"--eval-windows must be at least 1, got {self.eval_windows}")
        require(not self.corpus.bos, "our GPT's BPE has no BOS token: run without --corpus.bos")

    def key(self) -> str:
        """The training's key: every setting but the battery's, and the result layout's version (a changed battery
        setting re-measures a trained run, never retrains it: the battery's own key is
        :func:`selfmodels.closed_loop.grid.battery_key`)."""
        from selfmodels.stages import content_key

        settings = {k: v for k, v in to_dict(self).items() if k != "battery"}
        return content_key({"config": settings, "version": RESULT_VERSION})
