"""Typed parameter groups with the paper's defaults, the one place those defaults live.

The numerics take these groups (:func:`~shallow_collapse.kernels.limiting_kernels`,
:class:`~shallow_collapse.model.FCNEnsemble`, :func:`~shallow_collapse.training.train`,
:func:`~shallow_collapse.eos.solve_eos`), the experiments build them with ``from_config(cfg)``,
and :data:`shallow_collapse.config.SCHEMA` reads its defaults from them, so a notebook call with
the defaults and a config that leaves the keys out compute the same numbers. Every field is
keyword-only (two standard deviations cannot be swapped by position). Field names are the config
keys, except where :attr:`_Group.CONFIG_KEYS` renames them.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar

__all__ = ["NetworkParams", "EoSParams", "SGDParams", "PosteriorParams", "ProbeParams"]


class _Group:
    CONFIG_KEYS: ClassVar[dict[str, str]] = {}  # field name -> config key, where they differ

    @classmethod
    def from_config(cls, cfg: dict):
        """The group's fields read from a resolved config (see :func:`shallow_collapse.config.resolve`)."""
        values = {f.name: cfg[cls.CONFIG_KEYS.get(f.name, f.name)] for f in fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


@dataclass(frozen=True, kw_only=True)
class NetworkParams(_Group):
    """The network of MATH.md sections 2 and 5: ``L`` layers (L=2: one hidden layer), activation
    phi (a name of :data:`shallow_collapse.activations.ACTIVATIONS`; ``leaky_relu_slope`` is
    leaky_relu's slope below 0), W_1 ~ N(0, sw^2/d), hidden W_l ~ N(0, sw^2/h),
    W_L ~ N(0, so^2/h), biases ~ N(0, sb^2). :attr:`act` is the resolved activation."""

    L: int = 2
    activation: str = "erf"
    leaky_relu_slope: float = 0.01
    hidden_weight_std: float = 1.0  # sw
    final_weight_std: float = 1.97  # so
    bias_std: float = 0.0  # sb

    @property
    def act(self):
        """The :class:`~shallow_collapse.activations.Activation` named by ``activation``."""
        from . import activations

        return activations.get(self.activation, slope=self.leaky_relu_slope)


@dataclass(frozen=True, kw_only=True)
class EoSParams(_Group):
    """The adaptive kernel's Equations of State (MATH.md sections 6 and 7) and their solver.

    ``sigw2``: prior variance of W_1 times d; ``siga2``: readout variance; ``sig2``: GP noise;
    ``h``: width (chi at the solution); ``annealing_factors``: chi values of the continuation,
    large to small; ``strategy``/``candidates``: see :func:`~shallow_collapse.eos.solve_eos`;
    ``rtol``: converged when max|Sigma - Sigma_new| / max|Sigma| <= rtol; ``maxiter``,
    ``inner_maxiter``, ``max_subdivisions``: solver budgets.
    """

    CONFIG_KEYS: ClassVar[dict[str, str]] = {"strategy": "eos_update_strategy", "candidates": "eos_candidates"}

    sigw2: float = 1.0
    siga2: float = 1.0 / 128
    sig2: float = 1e-6
    h: int = 500
    annealing_factors: tuple[float, ...] = (1e5, 1e4, 2000.0, 1000.0, 500.0)
    strategy: str = "minimize"
    candidates: tuple[str, ...] = ()
    rtol: float = 1e-8
    maxiter: int = 500
    inner_maxiter: int = 100
    max_subdivisions: int = 4


@dataclass(frozen=True, kw_only=True)
class SGDParams(_Group):
    """SGD on the MSE loss (MATH.md section 2); ``batch_size`` None (or >= N) is full batch."""

    num_epochs: int = 1000
    lr: float = 1e-3
    momentum: float = 0.0
    weight_decay: float = 0.0
    batch_size: int | None = None


@dataclass(frozen=True, kw_only=True)
class PosteriorParams(_Group):
    """Exact MCMC of the collapsed posterior of the network the EoS describe (docs/POSTERIOR.md,
    :func:`~shallow_collapse.posterior.sample_posterior`): collapsed Gibbs over neurons by
    elliptical slice sampling, with no step size to tune.

    ``burn_in``: sweeps per chain discarded; ``samples``: sweeps per chain retained (one sweep
    updates every neuron once); ``chains``: chains per draw, even (half start from the prior, half
    from the AK's Sigma). A draw is not converged when its largest rank R-hat exceeds ``rhat_max``,
    its smallest bulk or tail effective size is below ``ess_min``, the Monte Carlo SE of its
    log10 NC1 exceeds ``se_max``, or the two halves of its chains disagree. (``rhat_max`` 1.05: at
    an ESS of a few hundred over 4 chains the rank R-hat of well-mixed chains still spreads by
    ~0.01-0.02 (measured: 1.019 at ESS 192, erf, N = 128, d = 8); Vehtari et al.'s 1.01 pairs with an
    ESS of 400 or more.)
    """

    CONFIG_KEYS: ClassVar[dict[str, str]] = {name: f"posterior_{name}" for name in (
        "burn_in", "samples", "chains", "rhat_max", "ess_min", "se_max")}

    burn_in: int = 50
    samples: int = 250
    chains: int = 4
    rhat_max: float = 1.05
    ess_min: float = 100.0
    se_max: float = 0.01


@dataclass(frozen=True, kw_only=True)
class ProbeParams(_Group):
    """What :func:`~shallow_collapse.training.train` probes: NC1 of every layer's features, the
    spectra of W^T W, every ``probing_frequency`` epochs (None: only at init and at the end)."""

    probe_features: bool = True
    probe_weights: bool = True
    probing_frequency: int | None = 100
