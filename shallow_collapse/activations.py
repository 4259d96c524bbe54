"""Every activation phi the toolkit knows (MATH.md sections 2, 5-6, 8).

One :class:`Activation` per name in :data:`ACTIVATIONS` (see docs/ACTIVATIONS.md). An activation is
``phi`` (the pointwise function of the network, autograd-aware), ``dphi`` = phi' (by autograd when
not given) and one kernel map: Kphi, Kdphi and the EoS's P of phi, either a closed form of
:mod:`shallow_collapse.closed_forms` or the :class:`~shallow_collapse.kernel_maps.NumericalMaps`
built from phi alone. :func:`register` adds one from phi alone.

What other layers build from an activation lives with them: the fused EoS passes in
:mod:`shallow_collapse.eos.passes` (chosen by the kernel map's type), the trainer's in-place
forms in :mod:`shallow_collapse.fast_gradients` (by name).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Callable

import torch

from .closed_forms import ErfMap, GeluMap, ReluFamilyMap, TrigMap
from .kernel_maps import NumericalMaps, derivative_by_autograd

__all__ = ["Activation", "ACTIVATIONS", "get", "register", "leaky_relu", "ERF_SLOPE", "erf"]

ERF_SLOPE = 2.0 / math.sqrt(math.pi)  # erf'(z) = ERF_SLOPE exp(-z^2)


# -- erf -------------------------------------------------------------------------------------------

class _Erf(torch.autograd.Function):
    """erf with a backward of fewer memory passes than autograd's: (2/sqrt(pi)) exp(-z^2) g,
    computed in place on one temporary (the activations are the largest tensors of a step)."""

    @staticmethod
    def forward(ctx, z):
        ctx.save_for_backward(z)
        return torch.erf(z)

    @staticmethod
    def backward(ctx, grad):
        (z,) = ctx.saved_tensors
        return torch.mul(z, z).neg_().exp_().mul_(grad).mul_(ERF_SLOPE)


def erf(z: torch.Tensor) -> torch.Tensor:
    """``torch.erf`` with the same values and gradient (see :class:`_Erf`)."""
    return _Erf.apply(z)


# -- the registry ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Activation:
    """phi, phi' and the kernel map of one activation (see the module docstring).

    ``kernel_map`` has ``maps(K, k_row=None, k_col=None)`` -> (Kphi, Kdphi) and
    ``terms(K, a, b, p=True)`` -> (Kphi, Kdphi, P) (:mod:`shallow_collapse.closed_forms`).
    """

    name: str
    phi: Callable
    dphi: Callable
    kernel_map: object

    @property
    def closed_form(self) -> bool:
        """Whether the kernel map is a closed form (not computed from phi numerically)."""
        return not isinstance(self.kernel_map, NumericalMaps)

    @property
    def homogeneous(self) -> bool:
        """Whether phi(s z) = s phi(z) for every s > 0 (the ReLU family, abs): the posterior sampler's
        scale move needs it."""
        return isinstance(self.kernel_map, ReluFamilyMap)

    @cached_property
    def numerical(self) -> NumericalMaps:
        """The numerical kernel map of phi (the kernel map itself when there is no closed form;
        the accuracy benchmark and tests compare the two)."""
        if isinstance(self.kernel_map, NumericalMaps):
            return self.kernel_map
        return NumericalMaps(self.phi, self.dphi)


def _make(name: str, phi: Callable, dphi: Callable | None = None, kernel_map=None) -> Activation:
    """An :class:`Activation` (phi' by autograd when ``dphi`` is None; the numerical kernel map of
    phi when ``kernel_map`` is None)."""
    dphi = dphi if dphi is not None else derivative_by_autograd(phi)
    return Activation(name, phi, dphi, kernel_map if kernel_map is not None else NumericalMaps(phi, dphi))


def leaky_relu(slope: float = 0.01) -> Activation:
    """phi(x) = x for x > 0 and ``slope`` x below (closed form; slope = -1 is abs, 0 is ReLU)."""
    p, q = (1.0 + slope) / 2.0, (1.0 - slope) / 2.0
    return _make("leaky_relu", lambda z: p * z + q * z.abs(), lambda z: p + q * torch.sign(z), ReluFamilyMap(slope))


def _sigmoid_d(z):
    s = torch.sigmoid(z)
    return s * (1.0 - s)


def _gelu(z):
    return 0.5 * z * (1.0 + torch.erf(z * (1.0 / math.sqrt(2.0))))


def _gelu_d(z):
    return 0.5 * (1.0 + torch.erf(z * (1.0 / math.sqrt(2.0)))) + z * torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)


def _silu_d(z):
    s = torch.sigmoid(z)
    return s * (1.0 + z * (1.0 - s))


ACTIVATIONS: dict[str, Activation] = {
    "erf": _make("erf", erf, lambda z: ERF_SLOPE * torch.exp(-z * z), ErfMap()),
    "relu": _make("relu", torch.relu, lambda z: (z > 0).to(z.dtype), ReluFamilyMap(0.0)),
    "leaky_relu": leaky_relu(),
    "abs": _make("abs", torch.abs, torch.sign, ReluFamilyMap(-1.0)),
    "gelu": _make("gelu", _gelu, _gelu_d, GeluMap()),
    "sin": _make("sin", torch.sin, torch.cos, TrigMap("sin")),
    "cos": _make("cos", torch.cos, lambda z: -torch.sin(z), TrigMap("cos")),
    "silu": _make("silu", torch.nn.functional.silu, _silu_d),
    "softplus": _make("softplus", torch.nn.functional.softplus, torch.sigmoid),
    "tanh": _make("tanh", torch.tanh, lambda z: 1.0 - torch.tanh(z) ** 2),
    "sigmoid": _make("sigmoid", torch.sigmoid, _sigmoid_d),
}


def register(name: str, phi: Callable, dphi: Callable | None = None, *, kernel_map=None) -> Activation:
    """Add the activation ``phi`` (an elementwise torch function) under ``name`` and return it.

    phi' is by autograd unless ``dphi`` is given; the kernel maps are computed from phi
    numerically unless ``kernel_map`` gives a closed form (an object with ``terms`` and ``maps``
    as in :mod:`shallow_collapse.closed_forms`; test it against ``Activation.numerical``).
    Configs can then name it; a name already taken is refused.
    """
    if name in ACTIVATIONS:
        raise ValueError(f"activation {name!r} is already registered")
    ACTIVATIONS[name] = _make(name, phi, dphi, kernel_map)
    return ACTIVATIONS[name]


def get(name, *, slope: float | None = None) -> Activation:
    """The :class:`Activation` called ``name`` (an Activation is returned as it is); ``slope`` makes
    leaky_relu's negative-side slope. ValueError naming the known ones otherwise."""
    if isinstance(name, Activation):
        return name
    if name == "leaky_relu" and slope is not None and slope != 0.01:
        return _leaky_cache(float(slope))
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; expected one of {', '.join(sorted(ACTIVATIONS))}") from None


_LEAKY: dict[float, Activation] = {}


def _leaky_cache(slope: float) -> Activation:
    if slope not in _LEAKY:
        _LEAKY[slope] = leaky_relu(slope)
    return _LEAKY[slope]
