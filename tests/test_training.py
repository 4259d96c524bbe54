import math

import numpy as np
import pytest
import torch

from shallow_collapse import activations, metrics
from shallow_collapse.data import gaussian_data
from shallow_collapse.model import FCNEnsemble
from shallow_collapse.params import NetworkParams, ProbeParams, SGDParams
from shallow_collapse.training import (TrainResult, make_targets, predicted_classes, probe_epochs, train,
                                       weight_spectra)

from conftest import nc1_round_off

F64 = torch.float64
EPS = torch.finfo(F64).eps


def fit(model, X, targets, labels, probing_frequency=None, fast_path=True, **sgd) -> TrainResult:
    """:func:`train` with SGD keywords, probing every ``probing_frequency`` epochs."""
    return train(model, X, targets, labels, SGDParams(**sgd), ProbeParams(probing_frequency=probing_frequency),
                 fast_path=fast_path)


def perturbed(params, delta, seed=0):
    """Copies of ``params`` times (1 +- ``delta``), signs drawn from a fixed seed."""
    g = torch.Generator().manual_seed(seed)
    return [p.detach() * (1 + delta * (2.0 * torch.randint(0, 2, p.shape, generator=g) - 1.0).to(p))
            for p in params]


def perturb_(model, delta, seed=0):
    with torch.no_grad():
        for p, q in zip(model.parameters(), perturbed(list(model.parameters()), delta, seed)):
            p.copy_(q)


def training_round_off(run, n, dtype=F64):
    """``(outputs, bounds)``: the outputs of one training ``run(0.0)`` and, per output, a bound on
    max|o - o'| for another computation of the same run whose arithmetic differs only in the
    order of its sums (batched vs alone, fused vs autograd, another BLAS's blocking).

    ``run(delta)`` trains from the initial parameters perturbed by ``delta`` relative (fixed random
    signs) and returns ``(moved, outputs)``, ``moved`` = max over parameter tensors of
    |p(end) - p(start)| / |p(end)|. Each step's sums of <= ``n`` terms round differently by <= n
    eps of their sizes, which perturbs that step's update (lr times the momentum buffer) by n eps
    relative: summed over the run, <= n eps ``moved`` relative of the parameters. The rest of the
    run amplifies a relative perturbation of the parameters into an output by A, measured here by
    the run from the perturbed start (delta = 1e3 eps: far above the round-off, still linear).
    Bound: n eps |o| (1 + 4 A moved), the 4 for the direction of the perturbation and for the
    constants; the first n eps |o| for the output's own last sums. In float64 it stays below ~5e-12
    relative on these runs: a wrong rule (another seed, a step mixing networks: O(lr); a missing
    weight decay: lr wd steps, >= 3e-7 here) is far outside it."""
    eps = torch.finfo(dtype).eps
    delta = 1e3 * eps
    change, base = run(0.0)
    _, other = run(delta)
    bounds = []
    for o, q in zip(base, other):
        o, q = torch.as_tensor(o, dtype=torch.float64), torch.as_tensor(q, dtype=torch.float64)
        size = float(o.abs().max())
        A = max(1.0, float((o - q).abs().max()) / size / delta)
        bounds.append(n * eps * size * (1 + 4 * A * change))
    return base, bounds


def moved(before, after):
    """Max over tensors of |after - before| / max|after|: a run's total relative parameter change."""
    return max(float((a - b).abs().max() / a.abs().max()) for b, a in zip(before, after))


def _data(sizes=(6, 10), d=3, repeat=0, seed=1):
    return gaussian_data(sizes, d, (-1.0, 1.0), (0.7, 0.7), seed, repeat)


def _hand_sgd(X, y, params, lr, momentum, weight_decay, steps):
    """Full-batch SGD on mean((W2 erf(W1 x + b1) + b2 - y)^2) with gradients written out by hand."""
    W1, b1, W2, b2 = [p.clone() for p in params]
    bufs = [None] * 4
    N = X.shape[0]
    for _ in range(steps):
        z = X @ W1.T + b1
        a = torch.erf(z)
        f = a @ W2.T + b2
        df = 2.0 * (f - y) / N  # (N, 1)
        gW2, gb2 = df.T @ a, df.sum(0)
        dz = (df @ W2) * (2.0 / math.sqrt(math.pi)) * torch.exp(-z * z)
        gW1, gb1 = dz.T @ X, dz.sum(0)
        new = []
        for i, (p, g) in enumerate(zip((W1, b1, W2, b2), (gW1, gb1, gW2, gb2))):
            g = g + weight_decay * p
            bufs[i] = g if bufs[i] is None else momentum * bufs[i] + g
            new.append(p - lr * bufs[i])
        W1, b1, W2, b2 = new
    return W1, b1, W2, b2


@pytest.mark.parametrize("steps", [1, 3])
def test_sgd_steps_match_a_hand_computed_update(steps):
    ds = _data()
    m = FCNEnsemble([4], 3, 8, net=NetworkParams(bias_std=0.5), dtype=F64)
    init = [p[0].detach().clone() for p in (m.weights[0], m.biases[0], m.weights[1], m.biases[1])]
    lr, mom, wd = 0.05, 0.9, 0.01

    def hand(delta):
        start = perturbed(init, delta)
        end = _hand_sgd(ds.X, ds.y.unsqueeze(-1), start, lr, mom, wd, steps)
        return moved(start, end), end

    # the hand-written and the trainer's gradients: the same sums (N = 16 samples, 8 hidden) in
    # another order; bound from training_round_off (A measured, ~1e-15 relative here)
    expected, bounds = training_round_off(hand, n=16)
    fit(m, ds.X, ds.y, ds.labels, lr=lr, momentum=mom, weight_decay=wd, num_epochs=steps)
    got = [m.weights[0][0], m.biases[0][0], m.weights[1][0], m.biases[1][0]]
    without_decay = _hand_sgd(ds.X, ds.y.unsqueeze(-1), init, lr, mom, 0.0, steps)
    for g, e, i, w, bound in zip(got, expected, init, without_decay, bounds):
        assert not torch.allclose(e, i)  # the update is not trivially zero
        assert float((g.detach() - e).abs().max()) <= bound
        assert float((w - e).abs().max()) > 100 * bound  # and the bound tells a missing weight decay


def _plain_network(model, r):
    """Network r of an ensemble as torch.nn.Linear layers (the one-network-at-a-time path)."""
    layers = []
    for l in range(model.num_layers):
        W = model.weights[l][r].detach()
        lin = torch.nn.Linear(W.shape[1], W.shape[0]).to(W.dtype)
        with torch.no_grad():
            lin.weight.copy_(W)
            lin.bias.copy_(model.biases[l][r].detach())
        layers.append(lin)
    return layers


def test_ensemble_matches_plain_linear_networks_trained_one_at_a_time():
    R, lr, mom, wd, epochs = 3, 0.02, 0.5, 1e-3, 15
    draws = [_data(repeat=r) for r in range(R)]
    X = torch.stack([ds.X for ds in draws])
    m = FCNEnsemble([10, 11, 12], 3, 12, net=NetworkParams(bias_std=0.2), dtype=F64)
    plain = [_plain_network(m, r) for r in range(R)]
    fit(m, X, torch.stack([ds.y for ds in draws]), draws[0].labels, lr=lr, momentum=mom, weight_decay=wd,
          num_epochs=epochs)
    for r, (l1, l2) in enumerate(plain):
        def one_at_a_time(delta):
            layers = [torch.nn.Linear(l.in_features, l.out_features).double() for l in (l1, l2)]
            start = perturbed([l1.weight, l1.bias, l2.weight, l2.bias], delta)
            with torch.no_grad():
                for p, q in zip([*layers[0].parameters(), *layers[1].parameters()], start):
                    p.copy_(q)
            opt = torch.optim.SGD([*layers[0].parameters(), *layers[1].parameters()], lr=lr, momentum=mom,
                                  weight_decay=wd)
            for _ in range(epochs):
                opt.zero_grad()
                loss = torch.nn.functional.mse_loss(layers[1](torch.erf(layers[0](draws[r].X))),
                                                    draws[r].y.unsqueeze(-1))
                loss.backward()
                opt.step()
            end = [p.detach() for p in (layers[0].weight, layers[0].bias, layers[1].weight)]
            return moved(start[:3], end), end

        # torch.optim.SGD on nn.Linear and the ensemble's own step: the same sums (N = 16 samples,
        # 12 hidden) in another order, 15 steps; bound from training_round_off (~1e-13 of |W| here)
        (W1, b1, W2), bounds = training_round_off(one_at_a_time, n=16)
        for got, ref, bound in zip((m.weights[0][r], m.biases[0][r], m.weights[1][r]), (W1, b1, W2), bounds):
            assert float((got.detach() - ref).abs().max()) <= bound


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("batch_size,bn", [(None, False), (5, False), (7, True)])
@pytest.mark.parametrize("layers,activation", [(3, "relu"), (2, "erf")])
def test_ensemble_equals_each_network_trained_alone(dtype, batch_size, bn, layers, activation):
    seeds = [3, 1, 4]
    draws = [_data((9, 7), 4, repeat=r) for r in range(3)]
    X = torch.stack([ds.X for ds in draws])
    T = torch.stack([ds.y for ds in draws]).unsqueeze(-1)
    kw = dict(lr=0.02, momentum=0.9, weight_decay=1e-3, num_epochs=6, batch_size=batch_size)
    net = dict(in_features=4, hidden_features=10, net=NetworkParams(L=layers, activation=activation, bias_std=0.1),
               use_batch_norm=bn, dtype=dtype)
    ens = FCNEnsemble(seeds, **net)
    rec = fit(ens, X, T, draws[0].labels, probing_frequency=2, **kw)
    last = f"post{layers - 1}"
    for r, seed in enumerate(seeds):
        def alone_run(delta):
            alone = FCNEnsemble([seed], **net)
            start = [p.detach().clone() for p in alone.parameters()]
            perturb_(alone, delta)
            rec1 = fit(alone, X[r], T[r], draws[0].labels, probing_frequency=2, **kw)
            end = [p[0].detach() for p in alone.parameters()]
            return moved(start, end), [*end, rec1.nc1[last][:, 0]]

        # one network of the ensemble and the same network alone: the same sums (16 samples, 10
        # hidden) per network, maybe blocked otherwise by the BLAS; bound from training_round_off in
        # the parameters' dtype (float64 ~1e-13 relative, float32 ~1e-4: A up to ~250 with batch norm
        # on batches of 7). NC1 of the last features (probed in float64 from these parameters) is one
        # more output of the run, with its own A.
        (*ref, nc1), bounds = training_round_off(alone_run, n=16, dtype=dtype)
        for p, q, bound in zip(ens.parameters(), ref, bounds):
            assert float((p[r].detach() - q).abs().max()) <= bound
        assert float(np.abs(rec.nc1[last][:, r] - nc1).max()) <= bounds[-1]
    assert rec.epochs == [0, 2, 4, 6] and rec.status == ["ok"] * 3


def test_minibatch_shuffling_is_seeded_and_changes_the_result():
    ds = _data((10, 10), 2)
    runs = []
    for batch_size in (4, 4, None):
        m = FCNEnsemble([9], 2, 6, dtype=F64)
        fit(m, ds.X, ds.y, ds.labels, lr=0.05, num_epochs=3, batch_size=batch_size)
        runs.append(m.weights[0].detach().clone())
    # same seed: bit-identical (the same operations in the same order); batches of 4 against the full
    # batch move the weights by O(lr) = 5e-2 of their steps, far outside allclose's 1e-5 relative
    assert torch.equal(runs[0], runs[1]) and not torch.allclose(runs[0], runs[2])


def test_probes_agree_with_the_metric_functions():
    ds = _data((12, 20), 5)
    m = FCNEnsemble([2], 5, 16, net=NetworkParams(L=3, bias_std=0.1))
    rec = fit(m, ds.X, ds.y, ds.labels, lr=0.01, momentum=0.9, num_epochs=10, probing_frequency=5)
    assert rec.epochs == [0, 5, 10]
    layers = _plain_network(m, 0)  # float32 trained weights -> float64 features by hand
    # Both sides evaluate the same float64 parameters in float64 (the probe: model(X, dtype=float64)),
    # so they differ by round-off alone, propagated here as an absolute bound per feature: a layer
    # z = h W^T + b of fan-in k rounds by <= (k + 1) eps (|h| |W|^T + |b|) and carries the error of h
    # through |W|; erf' <= 2 / sqrt(pi) carries it to the next h. x2: two computations.
    h, err = ds.X, torch.zeros_like(ds.X)
    feats, errs = {}, {}
    for l, lin in enumerate(layers, start=1):
        W, b = lin.weight.detach().double(), lin.bias.detach().double()
        z = h @ W.T + b
        err = err @ W.abs().T + 2 * (W.shape[1] + 1) * EPS * (h.abs() @ W.abs().T + b.abs())
        feats[f"pre{l}"], errs[f"pre{l}"] = z, err
        if l < len(layers):
            h = feats[f"post{l}"] = torch.erf(z)
            err = errs[f"post{l}"] = (2 / math.sqrt(math.pi)) * err + 2 * EPS * h.abs()
    assert sorted(rec.final_nc1) == sorted(feats)
    for name, H in feats.items():
        # NC1 of features = NC1 of their linear kernel H H^T, whose entries move by
        # err |H|^T + |H| err^T: nc1_round_off (conftest) carries that and the block sums to NC1
        dK = errs[name] @ H.abs().T + H.abs() @ errs[name].T
        nc1 = float(metrics.nc1_features(H, ds.labels))
        assert abs(rec.final_nc1[name][0] - nc1) <= nc1_round_off(H @ H.T, ds.labels, dK=dK)
        # the pinv form (two classes: Sigma_B = lambda u u^T of rank one) is u^T Sigma_W u / (2 lambda):
        # u and lambda of the probe's Gram-of-means path and of pinv's eigendecomposition differ by ~p eps
        # (p <= 16 features), and turning u by p eps moves u^T Sigma_W u by 2 p eps ||Sigma_W||_2, i.e.
        # by 2 p eps kappa relative with kappa = ||Sigma_W||_2 / u^T Sigma_W u (large where the classes
        # collapse along u; computed here); the features' own error enters as for NC1 (rel, times kappa)
        pinv = float(metrics.nc1_features_pinv(H, ds.labels))
        within = H - torch.stack([H[ds.labels == c].mean(0) for c in (0, 1)])[ds.labels]
        sigma_w = within.T @ within / len(H)
        diff = H[ds.labels == 1].mean(0) - H[ds.labels == 0].mean(0)
        u = diff / diff.norm()
        kappa = float(torch.linalg.matrix_norm(sigma_w, 2)) / float(u @ sigma_w @ u)
        feat_rel = float(errs[name].max() / diff.norm())
        pinv_tol = 4 * kappa * (2 * H.shape[1] * EPS + 2 * feat_rel) * pinv
        assert abs(rec.final_nc1_pinv[name][0] - pinv) <= pinv_tol
        assert rec.nc1[name].shape == (3, 1) and rec.nc1[name][-1, 0] == rec.final_nc1[name][0]
    f, f_err = feats["pre3"][:, 0], errs["pre3"][:, 0]
    # the mean of N squares: moved by 2 mean(|f - y| err_f) and its own N eps
    loss = float(((f - ds.y) ** 2).mean())
    assert abs(rec.final_loss[0] - loss) <= 2 * float(((f - ds.y).abs() * f_err).mean()) + len(f) * EPS * loss
    np.testing.assert_allclose(rec.final_accuracy[0], ((torch.sign(f) > 0).long() == ds.labels).double().mean())
    # the same function of the same float64 inputs (a BLAS's threads may sum otherwise): nc1_round_off
    assert abs(rec.data_nc1[0] - float(metrics.nc1_features(ds.X, ds.labels))) <= nc1_round_off(ds.X @ ds.X.T,
                                                                                                ds.labels)
    # weight spectra: eigenvalues of W^T W (svdvals^2 in the probe). Both are backward stable: absolute
    # error <= ~p eps ||W||_2^2 (Weyl; p = the largest dimension), plus the Gram's k eps |W|^T |W|;
    # 4 (k + 3 p) eps ||W||_2^2 in all, without a relative part (the old rtol 1e-8 had no source)
    for l, lin in enumerate(layers, start=1):
        W = lin.weight.detach().double()
        eig = torch.linalg.eigvalsh(W.T @ W).flip(0)[: min(W.shape)]
        norm2 = float(torch.linalg.matrix_norm(W, 2)) ** 2
        spectra_tol = 4 * (W.shape[0] + 3 * max(W.shape)) * EPS * norm2
        assert float(np.abs(rec.spectra[f"W{l}"][-1, 0] - eig.numpy()).max()) <= spectra_tol
        # the Gram: sums of k = out_l products, <= k eps |W|^T |W| each, two computations
        gram_tol = 2 * W.shape[0] * EPS * (W.abs().T @ W.abs()).numpy()
        assert (np.abs(rec.gram_final[f"W{l}"][0] - (W.T @ W).numpy()) <= gram_tol).all()


def test_divergence_is_caught_and_the_other_networks_continue():
    draws = [_data((8, 8), 3, repeat=r) for r in range(3)]
    X = torch.stack([ds.X for ds in draws])
    X[1] *= 1e3  # network 1 sees huge inputs: its ReLU features make lr far too large; 0 and 2 are fine
    T = torch.stack([ds.y for ds in draws])
    kw = dict(lr=0.05, momentum=0.5, num_epochs=20, probing_frequency=5)
    relu = NetworkParams(activation="relu", final_weight_std=1.0)
    ens = FCNEnsemble([1, 2, 3], 3, 8, net=relu, dtype=F64)
    rec = fit(ens, X, T, draws[0].labels, **kw)
    assert rec.status == ["ok", "diverged", "ok"]
    assert isinstance(rec.diverged_epoch[1], int) and 1 <= rec.diverged_epoch[1] <= 20
    assert rec.diverged_epoch[0] is None and rec.diverged_epoch[2] is None
    assert np.isnan(rec.final_nc1["post1"][1]) and np.isfinite(rec.final_nc1["post1"][[0, 2]]).all()
    assert not np.isfinite(rec.final_loss[1])
    for r in (0, 2):
        def alone_run(delta):
            alone = FCNEnsemble([r + 1], 3, 8, net=relu, dtype=F64)
            start = [p.detach().clone() for p in alone.parameters()]
            perturb_(alone, delta)
            fit(alone, X[r], T[r], draws[0].labels, **kw)
            return moved(start, [p.detach() for p in alone.parameters()]), [alone.weights[0][0].detach()]

        # the same network in the ensemble (beside a diverged one) and alone: the same sums (16
        # samples, 8 hidden) per network, 20 steps; bound from training_round_off
        (W1,), (bound,) = training_round_off(alone_run, n=16)
        assert float((ens.weights[0][r].detach() - W1).abs().max()) <= bound


def test_huge_learning_rate_diverges_without_raising():
    ds = _data((16, 16), 2)
    m = FCNEnsemble([0, 1], 2, 32)
    rec = fit(m, ds.X, ds.y, ds.labels, lr=50.0, num_epochs=200, probing_frequency=50)
    assert rec.status == ["diverged", "diverged"]
    assert len(rec.train_loss) < 200  # stopped early once every network diverged
    assert rec.epochs[-1] == len(rec.train_loss)


def test_one_hot_targets_and_argmax_accuracy():
    ds = gaussian_data((10, 10, 10, 10), 3, (-3.0, -1.0, 1.0, 3.0), (0.2, 0.2, 0.2, 0.2), 0)
    T = make_targets(ds.labels, 4, 4)
    assert T.shape == (40, 4) and torch.equal(T.argmax(-1), ds.labels)
    m = FCNEnsemble([5], 3, 64, out_features=4)
    rec = fit(m, ds.X, T, ds.labels, lr=0.01, momentum=0.9, num_epochs=150)
    assert rec.final_accuracy[0] == 1.0 and rec.final_output.shape == (1, 40, 4)
    with pytest.raises(ValueError):
        make_targets(ds.labels, 4, 3)


def test_predicted_classes_from_a_scalar_output():
    f = torch.tensor([[-3.4], [-1.2], [-0.1], [0.2], [1.9], [2.5], [9.0]])
    assert predicted_classes(f, 4).tolist() == [0, 1, 1, 2, 2, 3, 3]
    assert predicted_classes(f, 2).tolist() == [0, 0, 0, 1, 1, 1, 1]
    assert predicted_classes(torch.tensor([[0.1, 0.7, 0.2]]), 3).tolist() == [1]


def test_probe_epochs():
    assert probe_epochs(10, 3) == [0, 3, 6, 9, 10]
    assert probe_epochs(10, None) == [0, 10]
    assert probe_epochs(10, 20) == [0, 10]


def test_weight_spectra_of_a_diverged_network_are_nan_not_an_error():
    m = FCNEnsemble([0, 1], 2, 4)
    with torch.no_grad():
        m.weights[0][1].fill_(float("nan"))
    s = weight_spectra(m)
    assert np.isnan(s["W1"][1]).all() and np.isfinite(s["W1"][0]).all()


@pytest.mark.parametrize("activation", ["erf", "relu", "tanh", "gelu", "leaky_relu"])
@pytest.mark.parametrize("out_features,batch_size", [(1, None), (1, 6), (3, None)])
def test_two_layer_fast_gradients_equal_autograd(activation, out_features, batch_size):
    from shallow_collapse.fast_gradients import TwoLayerGradients

    ds = gaussian_data((5, 6, 5), 4, (-1.0, 0.0, 1.0), (0.8, 0.8, 0.8), 2)
    T = make_targets(ds.labels, 3, out_features)
    kw = dict(lr=0.01, momentum=0.9, weight_decay=1e-2, num_epochs=8, batch_size=batch_size, probing_frequency=4)
    recs, models = [], []
    for fast in (True, False):
        m = FCNEnsemble([7, 8], 4, 12, out_features=out_features, net=NetworkParams(activation=activation, bias_std=0.3),
                        dtype=F64)
        recs.append(fit(m, ds.X, T, ds.labels, fast_path=fast, **kw))
        models.append(m)
    assert TwoLayerGradients.applies(models[0])

    def autograd_run(delta):
        m = FCNEnsemble([7, 8], 4, 12, out_features=out_features, net=NetworkParams(activation=activation, bias_std=0.3),
                        dtype=F64)
        start = [p.detach().clone() for p in m.parameters()]
        perturb_(m, delta)
        rec = fit(m, ds.X, T, ds.labels, fast_path=False, **kw)
        return moved(start, [p.detach() for p in m.parameters()]), [*(p.detach() for p in m.parameters()),
                                                                     rec.train_loss]

    # the fused gradients and autograd's: the same sums (16 samples, 12 hidden) in another order, 8
    # epochs; bound from training_round_off (the losses are one more output of the run)
    (*ref, loss), bounds = training_round_off(autograd_run, n=16)
    for p, q, bound in zip(models[0].parameters(), ref, bounds):
        assert float((p.detach() - q).abs().max()) <= bound
    assert float(np.abs(recs[0].train_loss - loss).max()) <= bounds[-1]
    assert recs[0].status == ["ok", "ok"] and np.all(recs[0].train_loss[-1] < recs[0].train_loss[0])


@pytest.mark.parametrize("activation,out_features", [("erf", 1), ("relu", 1), ("erf", 3)])
@pytest.mark.parametrize("rows,workers", [(1, 1), (5, 2), (7, 3), (1000, 2)])
def test_chunked_threaded_gradients_equal_autograd(activation, out_features, rows, workers):
    """Chunks of ``rows`` samples split over ``workers`` threads give autograd's gradients."""
    from shallow_collapse.fast_gradients import TwoLayerGradients

    torch.manual_seed(rows + workers)
    R, B, h = 3, 23, 10
    m = FCNEnsemble([1, 2, 3], 4, h, out_features=out_features, net=NetworkParams(activation=activation, bias_std=0.3),
                    dtype=F64)
    xb, tb = torch.randn(R, B, 4, dtype=F64), torch.randn(R, B, out_features, dtype=F64)
    fast = TwoLayerGradients(m, chunk_elements=rows * R * h, workers=workers)
    alive = torch.tensor([True, False, True])
    losses = fast(xb, tb, alive)
    fast.close()
    got = [p.grad.clone() for p in m.parameters()]
    for p in m.parameters():
        p.grad = None
    ref_losses = (m(xb) - tb).pow(2).mean((-2, -1))
    torch.where(torch.tensor([True, False, True]), ref_losses, 0.0).sum().backward()
    # One evaluation, two orders of the same sums (chunks over threads vs one batch). The losses are
    # means of B * out squares: <= 2 B out eps relative. A gradient entry sums <= B products whose
    # factors carry the forward's round-off (z: d + 1 terms, f: h + 1 terms), so it errs by
    # <= (B + h + d) eps times the envelope: the same sums with every factor replaced by a bound
    # on its size (z by |x| |W1|^T + |b1|, phi(z) and phi'(z) by their size plus that, as
    # |phi'|, |phi''| <= 1.13; f - t by |a| |W2|^T + |b2| + |t|), x2 for two computations. A wrong
    # term (the 2 / (B out) of the mean, the slope of phi) is O(1).
    n = B + h + 4
    torch.testing.assert_close(losses, ref_losses.detach(), rtol=2 * B * out_features * EPS, atol=0)
    act = activations.get(activation)
    W1, b1, W2, b2 = m.weights[0].detach(), m.biases[0].detach(), m.weights[1].detach(), m.biases[1].detach()
    z = torch.baddbmm(b1.unsqueeze(-2), xb, W1.transpose(-1, -2))
    z_size = xb.abs() @ W1.abs().transpose(-1, -2) + b1.abs().unsqueeze(-2)
    a = act.phi(z).abs() + 1.13 * z_size
    slope = act.dphi(z).abs() + 1.13 * z_size
    res = (2.0 / (B * out_features)) * (a @ W2.abs().transpose(-1, -2) + b2.abs().unsqueeze(-2) + tb.abs())
    back = (res @ W2.abs()) * slope  # (R, B, h): the sizes of the terms of dL/dz
    envelope = {"W1": back.transpose(-1, -2) @ xb.abs(), "b1": back.sum(-2),
                "W2": res.transpose(-1, -2) @ a, "b2": res.sum(-2)}
    for (name, g), p in zip(zip(("W1", "W2", "b1", "b2"), got), m.parameters()):
        assert g.shape == envelope[name].shape
        assert bool(((g - p.grad).abs() <= 2 * n * EPS * envelope[name]).all()), name
    assert all(torch.count_nonzero(g[1]) == 0 for g in got)  # network 1 (not alive) gets no gradient


def test_threaded_training_restores_the_thread_count():
    ds = _data((20, 20), 3)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        runs = []
        for _ in range(2):
            m = FCNEnsemble([4, 5], 3, 16)
            fit(m, ds.X, ds.y, ds.labels, lr=0.01, momentum=0.9, num_epochs=5)
            assert torch.get_num_threads() == 2
            runs.append(m.weights[0].detach().clone())
        assert torch.equal(runs[0], runs[1])  # deterministic despite the threads
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("fast_path", [True, False])
@pytest.mark.parametrize("layers,activation", [(2, "erf"), (3, "relu")])
def test_cuda_training_matches_cpu(fast_path, layers, activation):
    """The same ensemble trained on the GPU and on the CPU in float64: the same arithmetic up to
    the order of reductions (and a few ulp of the elementwise kernels): the bound of
    :func:`training_round_off` from the CPU run (sums of <= 16 samples / 10 hidden)."""
    seeds = [3, 1, 4]
    draws = [_data((9, 7), 4, repeat=r) for r in range(3)]
    X = torch.stack([ds.X for ds in draws])
    T = torch.stack([ds.y for ds in draws]).unsqueeze(-1)
    net = dict(in_features=4, hidden_features=10, net=NetworkParams(L=layers, activation=activation, bias_std=0.1),
               dtype=F64)
    last = f"post{layers - 1}"
    kw = dict(probing_frequency=5, fast_path=fast_path, lr=0.02, momentum=0.9, num_epochs=10)

    def run(delta, device="cpu"):
        m = FCNEnsemble(seeds, **net, device=device)
        start = [p.detach().clone() for p in m.parameters()]
        perturb_(m, delta)
        rec = fit(m, X, T, draws[0].labels, **kw)
        end = [p.detach().cpu() for p in m.parameters()]
        return moved([p.cpu() for p in start], end), [*end, rec.nc1[last]]

    (*cpu, cpu_nc1), bounds = training_round_off(run, n=16)
    _, (*cuda, cuda_nc1) = run(0.0, "cuda")
    for p, q, bound in zip(cpu, cuda, bounds):
        assert float((p - q).abs().max()) <= bound
    assert float(np.abs(cpu_nc1 - cuda_nc1).max()) <= bounds[-1]


# Final float64 losses of short fixed-seed runs (erf, ReLU; full batch and batches of 8; one and two
# outputs; fast path and autograd), computed before _train was split into named steps (main at
# e790e81) and bit-identical after it on the machine that split it. Another machine's BLAS may
# round the O(N) sums of a step differently (~16 eps ~ 4e-15 relative per step); a relative change
# of 1e-13 in every initial parameter was measured to move these losses by <= 1.5e-12 relative
# (amplification <= 15), so 18 steps move them by <= 18 * 4e-15 * 15 ~ 1e-12: rtol 1e-10 leaves 100x.
PINNED_RUNS = {
    ("erf", None, 1, True): (4.508347137656817, 1.931119074726584),
    ("erf", 8, 2, True): (0.11677992088924635, 0.04085774644428861),
    ("erf", 8, 1, False): (0.4318853007756369, 0.09149723570934698),
    ("relu", None, 1, True): (1.3948294860970707, 0.8449700907639137),
    ("relu", 8, 2, True): (0.3065147060678751, 0.21984880337680024),
    ("relu", 8, 1, False): (0.5086155854161576, 0.3188562438501694),
}


@pytest.mark.parametrize("run", sorted(PINNED_RUNS, key=str))
def test_short_fixed_seed_runs_are_pinned(run):
    activation, batch_size, out, fast_path = run
    ds = gaussian_data((12, 20), 3, (-1.0, 1.0), (0.7, 0.7), 1, 0)
    m = FCNEnsemble([3, 7], 3, 16, out_features=out, net=NetworkParams(activation=activation, bias_std=0.5),
                    dtype=F64)
    res = train(m, ds.X, make_targets(ds.labels, 2, out), ds.labels,
                SGDParams(lr=0.05, momentum=0.9, num_epochs=6, batch_size=batch_size),
                ProbeParams(probing_frequency=3), fast_path=fast_path)
    assert res.epochs == [0, 3, 6] and res.status == ["ok", "ok"]
    np.testing.assert_allclose(res.final_loss, PINNED_RUNS[run], rtol=1e-10, atol=0)
