"""The settings of the LLC estimator (no torch here: ``--help`` and config files read them without it)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from selfmodels.configs import option
from selfmodels.errors import require

PATHS = ("stacked", "vmap", "sequential")


SAMPLERS = ("sgld", "rmsprop_sgld")


@dataclass
class LLCConfig:
    """Hyperparameters of the SGLD LLC estimator."""

    epsilon: float = option(1e-4, "SGLD step size epsilon")
    gamma: float = option(100.0, "localization strength gamma (pull towards the trained weights w*)")
    nbeta: float | None = option(None, "inverse temperature n*beta; default b/ln(b), b = batch size")
    use_dataset_size_for_nbeta: bool = option(False, "default n*beta = n/ln(n) with n the dataset size instead of b/ln(b)")
    chains: int = option(4, "number of SGLD chains (chain c is seeded seed + c)")
    draws: int = option(1000, "draws per chain (burn-in included)")
    burn_in: int | None = option(None, "draws dropped from the start of each chain; default: the first half")
    steps_between_draws: int = option(1, "SGLD steps per draw")
    batch_size: int = option(512, "minibatch size b (ignored when a DataLoader is given)")
    init_loss_batches: int = option(4, "L(w*) is the mean loss over this many first minibatches")
    seed: int = option(42, "seed of the data order; chain c's noise uses seed + c")
    shuffle: bool = option(True, "reshuffle the data each epoch with a seeded permutation (off: dataset order)")
    batched: str = option("auto", "how chains advance: as stacked matrix products (stacked: plain MLPs only), "
                          "all at once through torch.func.vmap (vmap), one by one (sequential), or the first of "
                          "these that the model allows (auto)", choices=("auto", *PATHS))
    chain_groups: int = option(0, "run the chains as this many independent groups, each in its own thread with "
                               "torch_threads/groups intra-op threads; 0 = automatic: min(chains, torch threads) "
                               "on CPU, 1 on GPU")
    model_mode: str = option("eval", "module mode while sampling: eval (BatchNorm running stats, no dropout) or train",
                             choices=("eval", "train"))
    convergence_tolerance: float = option(0.1, "flag not_converged when the kept trace's half means differ by more "
                                          "than this times max(|estimate|, 1)")
    sampler: str = option("sgld", "SGLD update: plain (sgld) or RMSprop-preconditioned (rmsprop_sgld: drift and noise "
                          "scaled per parameter by G = 1/(sqrt(V) + rmsprop_eps); vmap or sequential paths)",
                          choices=SAMPLERS)
    rmsprop_alpha: float = option(0.99, "rmsprop_sgld: decay of V, the running mean of squared loss gradients")
    rmsprop_eps: float = option(0.1, "rmsprop_sgld: added to sqrt(V); bounds each parameter's step at epsilon / eps")

    def kept_from(self) -> int:
        """Index of the first draw that enters the estimate."""
        return self.draws // 2 if self.burn_in is None else self.burn_in

    def validate(self) -> None:
        """Raise :class:`UserError` for values the estimator cannot use (never rewrites a field)."""
        for name in ("epsilon", "gamma", "convergence_tolerance", "rmsprop_alpha", "rmsprop_eps"):
            value = getattr(self, name)
            require(isinstance(value, (int, float)) and math.isfinite(value),
                    f"LLC {name} must be a finite number, got {value!r}")
        require(self.epsilon > 0, f"LLC epsilon must be > 0, got {self.epsilon}")
        require(self.gamma >= 0, f"LLC gamma must be >= 0, got {self.gamma}")
        if self.nbeta is not None:
            require(isinstance(self.nbeta, (int, float)) and math.isfinite(self.nbeta) and self.nbeta > 0,
                    f"LLC nbeta must be a finite number > 0 (or unset for b/ln b), got {self.nbeta!r}")
        require(self.chains >= 1, f"LLC chains must be at least 1, got {self.chains}")
        require(self.draws >= 1, f"LLC draws must be at least 1, got {self.draws}")
        require(self.steps_between_draws >= 1, f"LLC steps_between_draws must be at least 1, got {self.steps_between_draws}")
        require(self.batch_size >= 1, f"LLC batch_size must be at least 1, got {self.batch_size}")
        require(self.init_loss_batches >= 1, f"LLC init_loss_batches must be at least 1, got {self.init_loss_batches}")
        if self.burn_in is not None:
            require(0 <= self.burn_in < self.draws,
                    f"LLC burn_in must be in [0, draws) = [0, {self.draws}), got {self.burn_in}")
        require(isinstance(self.chain_groups, int) and 0 <= self.chain_groups <= self.chains,
                f"LLC chain_groups must be between 0 (automatic) and chains = {self.chains}, got {self.chain_groups!r}")
        require(self.batched in ("auto", *PATHS),
                f"LLC batched must be one of auto, {', '.join(PATHS)}; got {self.batched!r}")
        require(self.model_mode in ("eval", "train"), f"LLC model_mode must be eval or train, got {self.model_mode!r}")
        require(self.sampler in SAMPLERS, f"LLC sampler must be one of {', '.join(SAMPLERS)}; got {self.sampler!r}")
        require(0 <= self.rmsprop_alpha < 1, f"LLC rmsprop_alpha must be in [0, 1), got {self.rmsprop_alpha}")
        require(self.rmsprop_eps > 0, f"LLC rmsprop_eps must be > 0, got {self.rmsprop_eps}")
        require(not (self.sampler != "sgld" and self.batched == "stacked"),
                f"LLC sampler={self.sampler} needs batched=auto, vmap or sequential (the stacked path runs plain SGLD)")
        require(not (self.model_mode == "train" and self.batched not in ("auto", "sequential")),
                "LLC model_mode=train needs batched=sequential or auto (train-mode BatchNorm cannot be batched)")
