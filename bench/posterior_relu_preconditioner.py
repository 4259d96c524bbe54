"""Does a Hessian preconditioner make the collapsed posterior of a ReLU network mix at small sig2?
(docs/POSTERIOR.md, "ReLU at the paper's noise"). Not part of the package: the measurement behind
that section.

MALA with a fixed preconditioner M = the exact Hessian of U(v) (autograd; eigenvalues |lambda|
clipped below at 1, the prior's curvature), recomputed at the start of each sig2 level and halfway
through its burn-in, then frozen, so the sampling phase is an exact MH chain. Erf or ReLU, N = 64
(32 + 32) Gaussian points, d = 8, sig2 lowered 1e-2 -> 1e-6 by factors of 10 (each level starts
from the chains of the one above), 4 chains, B burn-in steps (step adapted toward acceptance
0.574) and 1000 frozen steps per level. Prints the step, acceptance, split R-hat and ESS of U and
of |v|^2 per level.

    PYTHONPATH=. python bench/posterior_relu_preconditioner.py [h=64] [relu|erf] [B=400]
"""
import math, sys, time
import numpy as np, torch
torch.set_default_dtype(torch.float64)
from shallow_collapse.data import gaussian_data
from shallow_collapse.posterior.target import CollapsedPosterior
from shallow_collapse.posterior.diagnostics import split_rhat, effective_size
torch.manual_seed(0)  # the one seed of this experiment
N, d, h, M = 64, 8, int(sys.argv[1]) if len(sys.argv) > 1 else 64, 4
act = sys.argv[2] if len(sys.argv) > 2 else "relu"
phi = torch.relu if act == "relu" else torch.erf
ds = gaussian_data([N // 2, N // 2], d, [-2.0, 2.0], [0.5, 0.5], 0)
X = ds.X.to(torch.float64)[None].expand(M, -1, -1); Y = ds.y.to(torch.float64)[None, :, None].expand(M, -1, -1)
B, S = int(sys.argv[3]) if len(sys.argv) > 3 else 400, 1000

def hessian_precond(t, v):
    out = []
    for m in range(M):
        def U1(z):
            tt = CollapsedPosterior(t.X[m:m+1], t.Y[m:m+1], t.phi, t.sigw2, t.siga2, t.sig2)
            return tt.potential(z.reshape(1, h, d))[0]
        H = torch.autograd.functional.hessian(U1, v[m].reshape(-1))
        lam, V = torch.linalg.eigh(0.5 * (H + H.T))
        lam = lam.abs().clamp_min(1.0)
        out.append((V, lam))
    return out

def apply(P, g, power):  # M^power g per chain, g (M, h, d)
    res = []
    for m, (V, lam) in enumerate(P):
        x = g[m].reshape(-1)
        res.append((V @ (lam ** power * (V.T @ x))).reshape(h, d))
    return torch.stack(res)

def logq(P, to, frm, gfrm, eps):  # log q(to | frm), up to a constant common to both directions
    mu = frm - 0.5 * eps[:, None, None] ** 2 * apply(P, gfrm, -1.0)
    r = to - mu
    return -0.5 * (r * apply(P, r, 1.0)).sum((-1, -2)) / eps ** 2

v = torch.randn(M, h, d)
eps = torch.full((M,), 0.5)
for sig2 in (1e-2, 1e-3, 1e-4, 1e-5, 1e-6):
    t = CollapsedPosterior(X, Y, phi, 1.0, 1.0 / 128, sig2)
    def Ug(v):
        p, g = t.data_term_and_grad(v)
        return 0.5 * v.pow(2).sum((-1, -2)) + p, g + v
    U, g = Ug(v)
    start = time.time(); trace_U, trace_v, accs = [], [], []
    for it in range(B + S):
        if it == 0 or it == B // 2:
            P = hessian_precond(t, v)
        xi = torch.randn_like(v)
        prop = v - 0.5 * eps[:, None, None] ** 2 * apply(P, g, -1.0) + eps[:, None, None] * apply(P, xi, -0.5)
        Up, gp = Ug(prop)
        log_a = -(Up - U) + logq(P, v, prop, gp, eps) - logq(P, prop, v, g, eps)
        acc = torch.rand(M).log() < torch.nan_to_num(log_a, nan=-math.inf)
        v = torch.where(acc[:, None, None], prop, v); U = torch.where(acc, Up, U); g = torch.where(acc[:, None, None], gp, g)
        a = torch.clamp(torch.nan_to_num(log_a, nan=-math.inf).exp(), max=1.0)
        if it < B:
            eps = eps * torch.exp((a - 0.574) / math.sqrt(it + 1.0))
        else:
            trace_U.append(U.numpy().copy()); trace_v.append(v.pow(2).sum((-1, -2)).numpy().copy()); accs.append(acc.float().mean().item())
    tu, tv = np.array(trace_U), np.array(trace_v)
    print(f"{act} h={h} sig2={sig2:g}: step {eps.mean():.3g} acc {np.mean(accs):.2f} R-hat U {split_rhat(tu):.3f} |v|2 {split_rhat(tv):.3f} "
          f"ESS U {effective_size(tu):.0f} |v|2 {effective_size(tv):.0f} of {S * M}  {time.time() - start:.0f}s", flush=True)
