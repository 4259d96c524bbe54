import numpy as np
import pytest
import torch

from shallow_collapse import metrics
from conftest import nc1_round_off
from shallow_collapse.metrics import (kernel_traces, nc1_features, nc1_features_pinv, nc1_kernel,
                                      relative_nc1)


def numpy_nc1(H, labels):
    """NC1 by the definitions of MATH.md section 3, written out with loops."""
    H, labels = np.asarray(H), np.asarray(labels)
    classes = np.unique(labels)
    mu_g = H.mean(0)
    tr_w = sum(((H[labels == c] - H[labels == c].mean(0)) ** 2).sum() for c in classes) / len(H)
    tr_b = sum(((H[labels == c].mean(0) - mu_g) ** 2).sum() for c in classes) / len(classes)
    sw = sum((H[labels == c] - H[labels == c].mean(0)).T @ (H[labels == c] - H[labels == c].mean(0))
             for c in classes) / len(H)
    sb = sum(np.outer(H[labels == c].mean(0) - mu_g, H[labels == c].mean(0) - mu_g) for c in classes) / len(classes)
    return tr_w / tr_b, np.trace(sw @ np.linalg.pinv(sb, hermitian=True)) / len(classes)


EPS = np.finfo(np.float64).eps


def trace_round_off(H, labels):
    """Bound on |NC1 - NC1'| of two feature-form computations (centred sums of squares): a centred
    entry h - mu errs by ~eps (|h| + |mu|), a sum of N squares by N eps of its terms (Higham, section
    4.2), so Tr W and Tr B err by 4 (N + p) eps times the sums of (|h| + |mu|)^2 (their terms'
    sizes), which exceed the traces where the class means sit far from the origin or each other."""
    H, labels = np.asarray(H), np.asarray(labels)
    (N, p), classes = H.shape, np.unique(labels)
    mu = {c: H[labels == c].mean(0) for c in classes}
    mu_g = H.mean(0)
    size_w = sum(((np.abs(H[labels == c]) + np.abs(mu[c])) ** 2).sum() for c in classes) / N
    size_b = sum(((np.abs(mu[c]) + np.abs(mu_g)) ** 2).sum() for c in classes) / len(classes)
    nc1, _ = numpy_nc1(H, labels)
    tr_w = sum(((H[labels == c] - mu[c]) ** 2).sum() for c in classes) / N
    tr_b = sum(((mu[c] - mu_g) ** 2).sum() for c in classes) / len(classes)
    return 2 * 4 * (N + p) * EPS * nc1 * (size_w / tr_w + size_b / tr_b)


def pinv_round_off(H, labels):
    """Bound on |NC1 - NC1'| of two computations of Tr(S_W S_B^+) / C: S_B has rank C - 1; each
    computation is exact for S_B + E, S_W + E' with |E| <= delta |S_B|, delta = 4 (N + p) eps
    (sums of N products), and the pseudo-inverse of a rank-preserving perturbation moves by
    <= 3 |S_B^+|^2 |E| (Wedin), so NC1 moves by <= (3 kappa_+ + 1) delta Tr S_W / (lambda_min C), with
    kappa_+ = lambda_max / lambda_min over S_B's C - 1 non-zero eigenvalues (computed here)."""
    H, labels = np.asarray(H), np.asarray(labels)
    (N, p), classes = H.shape, np.unique(labels)
    C = len(classes)
    mu_g = H.mean(0)
    sw = sum((H[labels == c] - H[labels == c].mean(0)).T @ (H[labels == c] - H[labels == c].mean(0))
             for c in classes) / N
    sb = sum(np.outer(H[labels == c].mean(0) - mu_g, H[labels == c].mean(0) - mu_g) for c in classes) / C
    lam = np.linalg.eigvalsh(sb)[::-1][: C - 1]
    delta = 4 * (N + p) * EPS
    return 2 * (3 * lam[0] / lam[-1] + 1) * delta * np.trace(sw) / (lam[-1] * C)


@pytest.mark.parametrize("sizes", [[10, 10], [3, 17], [4, 9, 2, 6]])
def test_kernel_nc1_equals_feature_nc1(sizes):
    gen = torch.Generator().manual_seed(0)
    labels = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    labels = labels[torch.randperm(len(labels), generator=gen)]  # rows need not be sorted by class
    H = torch.randn(3, len(labels), 7, generator=gen, dtype=torch.float64) + labels[:, None]  # 3 repeats
    by_features = nc1_features(H, labels)
    by_kernel = nc1_kernel(H @ H.transpose(-1, -2), labels)
    for r in range(3):
        # exact identity: the kernel form's block sums (nc1_round_off, dot products of p = 7 terms)
        # against the centred feature sums (trace_round_off), round-off only
        bound = nc1_round_off(H[r] @ H[r].T, labels, 2 * 7 * EPS) + trace_round_off(H[r], labels)
        assert abs(by_kernel[r].item() - by_features[r].item()) <= bound
        trace_form, pinv_form = numpy_nc1(H[r], labels)
        assert abs(by_features[r].item() - trace_form) <= trace_round_off(H[r], labels)
        assert abs(nc1_features_pinv(H[r], labels).item() - pinv_form) <= pinv_round_off(H[r], labels)


def test_balanced_kernel_formula_is_wrong_for_imbalanced_classes():
    """The balanced shortcut of MATH.md section 4 disagrees with the features when n_c differ."""
    gen = torch.Generator().manual_seed(1)
    labels = torch.tensor([0] * 5 + [1] * 25)
    H = torch.randn(30, 4, generator=gen, dtype=torch.float64) + 2 * labels[:, None]
    K = H @ H.T
    S = [K[labels == a][:, labels == b].sum() for a in (0, 1) for b in (0, 1)]
    n = torch.tensor([5.0, 25.0])
    tr_b_balanced = (S[0] / n[0] ** 2 + S[3] / n[1] ** 2) / 2 - K.sum() / 30**2
    _, tr_b = kernel_traces(K, labels)
    assert abs(tr_b_balanced - tr_b) > 0.1 * tr_b


def test_relative_nc1():
    assert relative_nc1(0.1, 1.0, tau=0.0) == pytest.approx(-1.0)  # one division and a log10: a few ulps
    assert np.isnan(relative_nc1(float("nan"), 1.0))


@pytest.mark.parametrize("sizes,p", [((20, 20), 1), ((20, 20), 50), ((7, 33), 30), ((5, 9, 12, 6), 3),
                                     ((5, 9, 12, 6), 40)])
def test_fast_pinv_nc1_equals_the_metric_function(sizes, p):
    from shallow_collapse.data import class_labels

    torch.manual_seed(len(sizes) * 100 + p)
    labels = class_labels(sizes)
    F64 = torch.float64
    H = torch.randn(3, len(labels), p, dtype=F64) + 2.0 * torch.randn(len(sizes), p, dtype=F64)[labels]
    fast, direct = metrics.nc1_pinv_from_means(H, labels), metrics.nc1_features_pinv(H, labels)
    for r in range(3):  # both are Tr(S_W S_B^+) / C: round-off of the pseudo-inverse, by its conditioning
        assert abs(fast[r].item() - direct[r].item()) <= pinv_round_off(H[r], labels)
