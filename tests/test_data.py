import numpy as np
import torch

from shallow_collapse.data import class_labels, gaussian_data, one_hot_targets, scalar_targets


def test_draw_depends_only_on_seed_cell_and_repeat():
    a = gaussian_data([5, 7], 3, [-2, 2], [0.5, 0.5], seed=1, repeat=4)
    gaussian_data([9, 9], 2, [-2, 2], [0.5, 0.5], seed=1, repeat=0)  # an unrelated draw in between
    b = gaussian_data([5, 7], 3, [-2, 2], [0.5, 0.5], seed=1, repeat=4)
    assert torch.equal(a.X, b.X)
    for other in (dict(seed=2, repeat=4), dict(seed=1, repeat=5)):
        assert not torch.equal(a.X, gaussian_data([5, 7], 3, [-2, 2], [0.5, 0.5], **other).X)


def test_class_moments_match_the_spec():
    # n = 20000 independent points per class in d = 4 (fixed seed): the standard error of a sample
    # mean is s / sqrt(n) and of a sample standard deviation s / sqrt(2 (n - 1)); 5 of them each
    # (the fixed 0.02 max(s, 1) it replaces was only 2.8 standard errors of the mean at s = 1.5).
    ds = gaussian_data([20000, 20000], 4, [-2.0, 1.0], [0.5, 1.5], seed=0)
    assert ds.X.dtype == torch.float64 and ds.X.shape == (40000, 4)
    for c, (m, s) in enumerate([(-2.0, 0.5), (1.0, 1.5)]):
        Xc = ds.X[ds.labels == c]
        n = len(Xc)
        np.testing.assert_allclose(Xc.mean(0), m, atol=5 * s / np.sqrt(n))
        np.testing.assert_allclose(Xc.std(0), s, atol=5 * s / np.sqrt(2 * (n - 1)))


def test_targets_follow_2c_minus_c_minus_1():
    assert scalar_targets(class_labels([1, 1]), 2).tolist() == [-1.0, 1.0]
    assert scalar_targets(class_labels([1, 1, 1, 1]), 4).tolist() == [-3.0, -1.0, 1.0, 3.0]
    assert one_hot_targets(class_labels([1, 2]), 2).tolist() == [[1, 0], [0, 1], [0, 1]]
