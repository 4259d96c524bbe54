"""Shared fixtures and helpers of the test files (none imports another test file):

- tiny configs written to a temporary folder (override only what a test needs), the output root,
  and the check that a command was refused cleanly;
- ``parse_page`` / ``parse_report``: an HTML page parsed, its links checked to stay inside a root;
- ``only_folder``: the single run folder under a job's folder;
- ``PHI``, ``paper_points``, ``assert_within_standard_errors``: what the kernel and activation
  tests compare against (plain torch activations, paper-like data, Monte Carlo tolerances)."""
from __future__ import annotations

import math
import os
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]  # the repository

torch.set_num_threads(1)  # the suite runs beside other work on a 2-core machine

TINY_SWEEP = {
    "name": "tiny", "seed": 3, "N_list": [16, 32], "class_sizes_list": [[8, 8], [4, 12]],
    "in_features_list": [1, 4], "repeat": 2, "workers": 1,
}


@pytest.fixture
def write_config(tmp_path):
    """``write_config(**keys) -> path`` of a YAML config with the tiny sweep grid and ``keys``."""
    def write(filename="config.yml", **keys):
        path = tmp_path / filename
        path.write_text(yaml.safe_dump({**TINY_SWEEP, **keys}))
        return path
    return write


@pytest.fixture
def out_root(tmp_path):
    return tmp_path / "out"


def files_under(root) -> dict:
    """Every file, folder and link under ``root`` (links not followed) with its size and mtime."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            stat = os.lstat(Path(folder) / name)
            found[os.path.relpath(Path(folder) / name, root)] = (stat.st_size, stat.st_mtime_ns)
    return found


@pytest.fixture
def refused(tmp_path, capsys):
    """``refused(call, *words) -> line``: ``call()`` returns exit status 2 and prints one line
    ``...: error: ...`` holding every one of ``words``, no traceback, and changes nothing under
    the test's folder (no new file or folder, nothing written through a link)."""
    def check(call, *words):
        capsys.readouterr()
        before = files_under(tmp_path)
        status = call()
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert status == 2 and "Traceback" not in err and len(lines) == 1 and ": error: " in lines[0], err
        for word in words:
            assert word in lines[0], (word, lines[0])
        assert files_under(tmp_path) == before
        return lines[0]
    return check


class Page(HTMLParser):
    """Collects every src/href and the tags; fails on unbalanced tags of the elements we write."""

    CHECKED = {"html", "body", "table", "tr", "td", "th", "figure", "figcaption", "a", "ul", "li", "h1", "h2",
               "details", "summary"}

    def __init__(self):
        super().__init__()
        self.links, self.images, self.stack = [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "href" in attrs:
            self.links.append(attrs["href"])
        if "src" in attrs:
            self.links.append(attrs["src"])
            self.images.append(attrs["src"])
        if tag in self.CHECKED:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in self.CHECKED:
            assert self.stack and self.stack[-1] == tag, f"unbalanced </{tag}>"
            self.stack.pop()


def parse_page(path: Path, root: Path) -> Page:
    """Parse the HTML page ``path``; every link must be relative and name an existing file inside
    ``root``."""
    root = Path(root).resolve()
    page = Page()
    page.feed(Path(path).read_text())
    page.close()
    assert not page.stack, f"unclosed tags {page.stack}"
    assert page.links
    for link in page.links:
        assert "://" not in link and not link.startswith("/"), link
        target = (Path(path).parent / unquote(link)).resolve()
        assert target.is_file(), link
        assert target.is_relative_to(root), link
    return page


def parse_report(folder: Path, root: Path | None = None) -> Page:
    """Parse ``folder/report.html``; every link must name an existing file inside ``root``
    (the folder itself unless given)."""
    return parse_page(Path(folder) / "report.html", root or folder)


def only_folder(root: Path) -> Path:
    """The one folder under ``root`` (e.g. the run folder under ``out/<name>/``)."""
    (folder,) = Path(root).iterdir()
    return folder


PHI = {"erf": (torch.erf, lambda u: 2 / math.sqrt(math.pi) * torch.exp(-u * u)),
       "relu": (torch.relu, lambda u: (u > 0).to(u.dtype))}


def paper_points(n=6, d=3, seed=0):
    """``n`` points of the paper's two-class data in ``d`` dimensions (float64)."""
    from shallow_collapse.data import gaussian_data

    return gaussian_data([n // 2, n - n // 2], d, [-2, 2], [0.5, 0.5], seed=seed).X


def assert_within_standard_errors(estimate, samples_mean_se, exact, k=5.0):
    """|MC - exact| <= k standard errors (entrywise). With k=5 and a few dozen entries the chance
    of a false failure is ~1e-5; the seeds are fixed, so the outcome is deterministic anyway."""
    # + 1e-12: entries whose samples do not vary (se = 0, e.g. a constant bias term), where both
    # sides are the same O(1) number up to a few roundings
    assert torch.all((estimate - exact).abs() <= k * samples_mean_se + 1e-12), (estimate - exact) / samples_mean_se


def kernel_phi(K, activation):
    """Kphi ``(N, N)`` of a symmetric ``K`` in plain out-of-place torch ops (differentiable): the
    autograd oracle of the EoS gradient. erf and ReLU are written apart from the package's closed
    forms (shallow_collapse/closed_forms.py): erf with each variance's own rsqrt, ReLU with acos
    instead of atan2 and without the snap at |cos| = 1. Any other activation: the differentiable
    evaluation of its numerical table (``NumericalMaps.kernel_phi``)."""
    d = torch.diagonal(K)
    if activation == "erf":
        r = (1.0 + 2.0 * d).rsqrt()
        return (2.0 / math.pi) * torch.asin(2.0 * K * r[:, None] * r[None, :])
    if activation != "relu":
        from shallow_collapse import activations

        return activations.get(activation).numerical.kernel_phi(K)
    # The diagonal (theta = 0, Kphi_ii = K_ii / 2) is written separately so that autograd never
    # differentiates acos at 1 (its derivative is infinite there; the limit is finite).
    eye = torch.eye(K.shape[-1], dtype=torch.bool, device=K.device)
    n = torch.sqrt(d[:, None] * d[None, :])
    cos = torch.where(eye, 0.0, K / n)
    theta = torch.acos(cos)
    off = n * (torch.sin(theta) + (math.pi - theta) * cos) / (2.0 * math.pi)
    return torch.where(eye, 0.5 * n, off)


def dense_action(X, y, Sigma, chi, *, activation="erf", sigw2=1.0, siga2=1.0 / 128, sig2=1e-6):
    """S(Sigma) written independently of the solver: plain torch ops (differentiable), a dense
    solve and slogdet instead of the Cholesky path, and no closed-form gradient."""
    N, d = X.shape
    M = siga2 * kernel_phi(X @ Sigma @ X.T, activation) + sig2 * torch.eye(N, dtype=torch.float64)
    prior = 0.5 * chi * ((d / sigw2) * torch.trace(Sigma) - torch.linalg.slogdet(Sigma)[1])
    return prior + 0.5 * y @ torch.linalg.solve(M, y) + 0.5 * torch.linalg.slogdet(M)[1]


def assert_slope_is_a_central_difference(X, y, S, chi, params, activation, grad, generator, value_tol=0.0):
    """The closed-form gradient ``grad`` of the action at ``S`` against a central difference of S
    along a random symmetric direction: truncation O(eps^2 times the third derivative) and
    round-off (error of each action) / eps with eps = 1e-5 relative. ``value_tol``: the caller's
    bound on each action's round-off (e.g. N eps kappa(M) of the data terms, which reaches ~1e-7
    of |S| at sig2 = 1e-6); at least 1e-9 |S| (the sums of O(N^2) terms of a well-conditioned M)."""
    from shallow_collapse import eos

    d = S.shape[0]
    value, _ = eos.action(X, y, S, chi, params, activation=activation)
    D = torch.randn(d, d, generator=generator, dtype=torch.float64)
    D = (D + D.T) * float(S.abs().max())
    eps = 1e-5
    plus, _ = eos.action(X, y, S + eps * D, chi, params, activation=activation)
    minus, _ = eos.action(X, y, S - eps * D, chi, params, activation=activation)
    slope = float((grad * D).sum())
    assert math.isclose((plus - minus) / (2 * eps), slope, rel_tol=1e-5,
                        abs_tol=max(1e-9 * abs(value), value_tol) / eps)


def solve_round_off(N: int, kappa: float, c: float = 1.0) -> float:
    """Relative error bound ``c N eps kappa`` of a backward-stable solve (Cholesky or LU) with an
    N x N matrix of condition number ``kappa``: the factorisation is exact for M + E with
    ||E|| <= c N eps ||M|| (Higham, Thm 10.3/10.4), and c ~ 1 normwise in practice."""
    import torch
    return c * N * torch.finfo(torch.float64).eps * kappa


def nc1_round_off(K, labels, entry_rel: float = 64 * torch.finfo(torch.float64).eps, dK=None) -> float:
    """Bound on ``|NC1(K') - NC1(K)|`` for two float64 computations of one kernel ``K`` ``(N, N)``
    whose entries agree to ``entry_rel`` relative (a kernel map's few roundings times its
    condition, ~1; 64 eps by default), each reduced to NC1 by block sums of N^2 terms.
    Tr(Sigma_W) and Tr(Sigma_B) are signed sums of K's entries (:func:`metrics.kernel_traces`):
    each moves by at most ``(entry_rel + 2 N eps) sum_ij |dTr/dK_ij| |K_ij|`` (the sizes of its
    terms, by autograd here; 2 N eps for sums of N row sums, Higham section 4.2), so NC1 = w / b
    moves by at most ``(dw + NC1 db) / b``, twice that for two computations. It grows where the
    traces cancel (classes far apart or mixed) and stays ~1e-11 relative on the paper's data.
    ``dK``: a further entrywise perturbation (e.g. from Sigma != Sigma0), counted to first order."""
    from shallow_collapse.metrics import kernel_traces

    K = torch.as_tensor(K).detach().to(torch.float64).clone().requires_grad_(True)
    w, b = kernel_traces(K, labels)
    gw, gb = (torch.autograd.grad(t, K, retain_graph=True)[0] for t in (w, b))
    delta = entry_rel + 2 * K.shape[-1] * torch.finfo(torch.float64).eps
    size = delta * K.detach().abs() + (0.0 if dK is None else torch.as_tensor(dK).abs())
    dw, db = (float((g.abs() * size).sum()) for g in (gw, gb))
    w, b = float(w.detach()), float(b.detach())
    return 2 * (dw + (w / b) * db) / b
