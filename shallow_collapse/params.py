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

import math
from dataclasses import dataclass, field, fields
from typing import ClassVar

__all__ = ["NetworkParams", "EoSParams", "SolverOptions", "EOS_STRATEGIES", "SGDParams", "PosteriorParams",
           "ProbeParams"]

# The EoS solver's strategies (shallow_collapse.eos.strategies.STRATEGIES has one entry each); named
# here so that a config is read without importing the solver.
EOS_STRATEGIES = ("minimize", "anderson", "newton-krylov")
NOT_A_KEY = {"config": False}  # metadata of a field that no config key sets


class _Group:
    CONFIG_KEYS: ClassVar[dict[str, str]] = {}  # field name -> config key, where they differ

    @classmethod
    def from_config(cls, cfg: dict):
        """The group's fields read from a resolved config (see :func:`shallow_collapse.config.resolve`);
        a field that no key sets keeps its default."""
        values = {f.name: cfg[cls.CONFIG_KEYS.get(f.name, f.name)] for f in fields(cls)
                  if f.metadata.get("config", True)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

    def to_config(self) -> dict:
        """The group's fields as config keys: what :meth:`from_config` reads back to this group."""
        return {self.CONFIG_KEYS.get(f.name, f.name): getattr(self, f.name) for f in fields(self)
                if f.metadata.get("config", True)}


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
    """The network the Equations of State describe (MATH.md sections 6 and 7): the prior and noise
    of the posterior network, and the continuation that reaches it.

    ``sigw2``: prior variance of W_1 times d; ``siga2``: readout variance; ``sig2``: GP noise;
    ``h``: width (chi at the solution); ``annealing_factors``: chi values of the continuation,
    large to small. How they are solved is :class:`SolverOptions`.
    """

    sigw2: float = 1.0
    siga2: float = 1.0 / 128
    sig2: float = 1e-6
    h: int = 500
    annealing_factors: tuple[float, ...] = (1e5, 1e4, 2000.0, 1000.0, 500.0)

    def network(self, activation: str = "erf", leaky_relu_slope: float = 0.01) -> "NetworkParams":
        """The prior network in the convention of MATH section 2 (its NNGP is the AK's starting
        kernel): one hidden layer, sw^2 = sigw2, so^2 = siga2, no bias."""
        return NetworkParams(L=2, activation=activation, leaky_relu_slope=leaky_relu_slope,
                             hidden_weight_std=math.sqrt(self.sigw2),
                             final_weight_std=math.sqrt(self.siga2), bias_std=0.0)


@dataclass(frozen=True, kw_only=True)
class SolverOptions(_Group):
    """How the EoS are solved (:func:`~shallow_collapse.eos.solve_eos`, docs/SOLVER.md):
    ``strategy`` (one of :data:`EOS_STRATEGIES`) and the further ``candidates`` whose solutions
    compete, ``rtol`` (converged when max|Sigma - Sigma_new| / max|Sigma| <= rtol), ``maxiter``
    (per step: L-BFGS iterations per round, Anderson iterations, Newton steps), ``inner_maxiter``
    (Krylov iterations per Newton step), ``max_subdivisions`` (nested subdivisions of a failed
    continuation step), and the ``anderson`` strategy's memory, mixing ``beta``, relative
    Tikhonov regularisation and stall window (0 disables it), which no config key sets."""

    CONFIG_KEYS: ClassVar[dict[str, str]] = {"strategy": "eos_update_strategy", "candidates": "eos_candidates"}

    strategy: str = "minimize"
    candidates: tuple[str, ...] = ()
    rtol: float = 1e-8
    maxiter: int = 500
    inner_maxiter: int = 100
    max_subdivisions: int = 4
    anderson_memory: int = field(default=3, metadata=NOT_A_KEY)
    anderson_beta: float = field(default=1.0, metadata=NOT_A_KEY)
    anderson_regularization: float = field(default=1e-10, metadata=NOT_A_KEY)
    anderson_stall: int = field(default=8, metadata=NOT_A_KEY)


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
