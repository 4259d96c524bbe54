import numpy as np
import pytest
import torch

from shallow_collapse import metrics
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


@pytest.mark.parametrize("sizes", [[10, 10], [3, 17], [4, 9, 2, 6]])
def test_kernel_nc1_equals_feature_nc1(sizes):
    gen = torch.Generator().manual_seed(0)
    labels = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    labels = labels[torch.randperm(len(labels), generator=gen)]  # rows need not be sorted by class
    H = torch.randn(3, len(labels), 7, generator=gen, dtype=torch.float64) + labels[:, None]  # 3 repeats
    by_features = nc1_features(H, labels)
    by_kernel = nc1_kernel(H @ H.transpose(-1, -2), labels)
    torch.testing.assert_close(by_kernel, by_features, rtol=1e-12, atol=0)  # exact identity, round-off only
    for r in range(3):
        trace_form, pinv_form = numpy_nc1(H[r], labels)
        assert by_features[r].item() == pytest.approx(trace_form, rel=1e-12)
        assert nc1_features_pinv(H[r], labels).item() == pytest.approx(pinv_form, rel=1e-9)


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
    assert relative_nc1(0.1, 1.0, tau=0.0) == pytest.approx(-1.0)
    assert np.isnan(relative_nc1(float("nan"), 1.0))


@pytest.mark.parametrize("sizes,p", [((20, 20), 1), ((20, 20), 50), ((7, 33), 30), ((5, 9, 12, 6), 3),
                                     ((5, 9, 12, 6), 40)])
def test_fast_pinv_nc1_equals_the_metric_function(sizes, p):
    from shallow_collapse.data import class_labels

    torch.manual_seed(len(sizes) * 100 + p)
    labels = class_labels(sizes)
    F64 = torch.float64
    H = torch.randn(3, len(labels), p, dtype=F64) + 2.0 * torch.randn(len(sizes), p, dtype=F64)[labels]
    torch.testing.assert_close(metrics.nc1_pinv_from_means(H, labels), metrics.nc1_features_pinv(H, labels),
                               rtol=1e-9, atol=0)
