"""The trainer's fast path (:func:`shallow_collapse.training.train`): the gradients of a two-layer
network written by hand (:class:`TwoLayerGradients`), and the in-place forms of phi and phi' they
use, chosen by the activation's kernel map (:func:`fast_forms`).

``phi_out(z, out)`` writes phi(z) into ``out``; ``dphi_(z, zero)`` turns ``z`` into
phi'(z) / ``slope`` in place (``zero`` a 0-d tensor of z's dtype and device); the trainer applies
``slope`` once to the summed gradients. erf and ReLU have forms without temporaries; every other
activation copies the results of its ``phi`` and ``dphi``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from . import activations
from .closed_forms import ErfMap, is_relu
from .model import FCNEnsemble

__all__ = ["FastForms", "fast_forms", "TwoLayerGradients"]


@dataclass(frozen=True)
class FastForms:
    """``phi_out``, ``dphi_`` and ``slope`` of one activation (see the module docstring)."""

    phi_out: Callable
    dphi_: Callable
    slope: float = 1.0


def _erf_dphi_(z, zero):
    return torch.addcmul(zero, z, z, value=-1.0, out=z).exp_()  # exp(-z^2) = erf'(z) / ERF_SLOPE


def _relu_out(z, out):
    return torch.clamp(z, min=0.0, out=out)


def _relu_dphi_(z, zero):
    return z.gt_(0.0)


ERF_FORMS = FastForms(lambda z, out: torch.erf(z, out=out), _erf_dphi_, activations.ERF_SLOPE)
RELU_FORMS = FastForms(_relu_out, _relu_dphi_)


def fast_forms(act: activations.Activation) -> FastForms:
    """The in-place forms of ``act``, by its kernel map (which says what phi is): the written ones
    of erf and of ReLU (leaky_relu with slope 0 included), copies of its ``phi`` and ``dphi`` otherwise."""
    if isinstance(act.kernel_map, ErfMap):
        return ERF_FORMS
    if is_relu(act.kernel_map):
        return RELU_FORMS
    phi, dphi = act.phi, act.dphi
    return FastForms(lambda z, out: out.copy_(phi(z)), lambda z, zero: z.copy_(dphi(z)))


def _worker_init():
    """Per-thread settings of a gradient worker: single-threaded torch ops (OpenMP's thread count
    is a per-thread setting) and subnormals flushed to zero (a per-thread CPU flag)."""
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)


class TwoLayerGradients:
    """Loss and hand-written gradients of a two-layer ensemble without batch norm (the paper's
    network), equal to autograd's up to round-off, computed in chunks of samples so that the
    ``(R, chunk, h)`` activations stay in cache and no large tensor is allocated per step.

    For f = W2 phi(z) + b2, z = W1 x + b1, per-network loss mean((f - y)^2) and r = d loss/d f:
    grad W2 = r^T a, grad b2 = sum r, and with t = phi'(z) (erf: (2/sqrt pi) exp(-z^2); ReLU: 1[z>0];
    in place, see :func:`fast_forms`)
    dz = t o (r W2). For one output dz = t o r w2^T, so grad W1 = w2 o (t^T (r o X)) and
    grad b1 = w2 o (t^T r): one batched product with [r o X, r] per chunk and no pass over dz.
    Every quantity is a sum over samples, so chunks accumulate exactly what one pass would.
    Networks with ``alive`` False (diverged before this step) get zero loss weight; ``alive`` is
    then updated with the finiteness of this step's losses.
    """

    def __init__(self, model: FCNEnsemble, chunk_elements: int = 2**18, workers: int = 1):
        if not self.applies(model):
            raise ValueError("TwoLayerGradients needs L=2 without batch norm")
        self.model = model
        self.chunk_elements = chunk_elements
        self.workers = max(1, int(workers))
        self.buffers: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self.zero = model.weights[0].new_zeros(())
        self.forms = fast_forms(model.net.act)
        self.pool = None
        if self.workers > 1:
            from concurrent.futures import ThreadPoolExecutor

            self.pool = ThreadPoolExecutor(self.workers, thread_name_prefix="fcn-grad", initializer=_worker_init)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
            self.pool = None

    @staticmethod
    def applies(model: FCNEnsemble) -> bool:
        return model.num_layers == 2 and not model.use_batch_norm

    def _buffers(self, key, shape, like):
        if (key, shape) not in self.buffers:
            self.buffers[(key, shape)] = (like.new_empty(shape), like.new_empty(shape))
        return self.buffers[(key, shape)]

    @torch.no_grad()
    def _partial(self, worker, starts, rows, xb, tb, weight):
        """Sums over the chunks starting at ``starts``: squared residuals, grad W2, grad b2 and
        either G = t^T [r o X, r] (one output) or (t o r W2)^T X and its column sums."""
        m = self.model
        W1, b1, W2, b2 = m.weights[0], m.biases[0], m.weights[1], m.biases[1]
        R, B, d = xb.shape
        h, o = W1.shape[1], W2.shape[1]
        act = self.forms
        b1u, b2u, W1t, W2t = b1.unsqueeze(-2), b2.unsqueeze(-2), W1.transpose(-1, -2), W2.transpose(-1, -2)
        sq = W1.new_zeros(R)
        gW2, gb2 = torch.zeros_like(W2), torch.zeros_like(b2)
        G = W1.new_zeros(R, h, d + 1) if o == 1 else None
        gW1, gb1 = (None, None) if o == 1 else (torch.zeros_like(W1), torch.zeros_like(b1))
        for s in starts:
            x = xb[:, s:s + rows]
            z, a = self._buffers(worker, (R, x.shape[1], h), W1)
            torch.baddbmm(b1u, x, W1t, out=z)
            act.phi_out(z, a)
            res = torch.baddbmm(b2u, a, W2t).sub_(tb[:, s:s + rows])  # (R, n, o)
            sq += res.square().sum((-2, -1))
            r = res.mul_(weight)
            gW2.baddbmm_(r.transpose(-1, -2), a)
            gb2 += r.sum(-2)
            t = act.dphi_(z, self.zero)  # phi'(z) / slope in place; the slope is applied at the end
            if o == 1:
                G.baddbmm_(t.transpose(-1, -2), torch.cat([r * x, r], -1))
            else:
                dz = torch.bmm(r, W2, out=a).mul_(t)
                gW1.baddbmm_(dz.transpose(-1, -2), x)
                gb1 += dz.sum(-2)
        return sq, gW2, gb2, G, gW1, gb1

    @torch.no_grad()
    def __call__(self, xb: torch.Tensor, tb: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
        m = self.model
        W1, b1, W2, b2 = m.weights[0], m.biases[0], m.weights[1], m.biases[1]
        R, B, d = xb.shape
        h, o = W1.shape[1], W2.shape[1]
        rows = max(1, min(B, self.chunk_elements // (R * h)))
        weight = alive.to(W1.dtype).mul_(2.0 / (B * o))[:, None, None]
        starts = list(range(0, B, rows))
        if self.pool is None or len(starts) == 1:
            parts = [self._partial(0, starts, rows, xb, tb, weight)]
        else:
            futures = [self.pool.submit(self._partial, w, starts[w::self.workers], rows, xb, tb, weight)
                       for w in range(min(self.workers, len(starts)))]
            parts = [f.result() for f in futures]
        sq, gW2, gb2, G, gW1, gb1 = parts[0]
        for p in parts[1:]:  # fixed order: the result does not depend on thread timing
            sq += p[0]
            gW2 += p[1]
            gb2 += p[2]
            if o == 1:
                G += p[3]
            else:
                gW1 += p[4]
                gb1 += p[5]
        slope = self.forms.slope
        W2.grad, b2.grad = gW2, gb2
        if o == 1:
            w2 = W2.transpose(-1, -2) * slope  # (R, h, 1)
            W1.grad = G[..., :d].mul_(w2)
            b1.grad = G[..., d].mul_(w2[..., 0])
        else:
            W1.grad, b1.grad = gW1.mul_(slope), gb1.mul_(slope)
        losses = sq / (B * o)
        alive &= torch.isfinite(losses)
        return losses
