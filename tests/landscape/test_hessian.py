"""Hessian eigenpairs, trace and SLQ against the dense Hessian of a tiny network."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from distill.data import Dataset, Split
from distill.models import build_model, seeded
from landscape.hessian import HessianOperator, hessian, power_iteration, spectral_density, top_eigenpairs, trace


def _tiny(seed=0, head="linear", widths=(6,), **kw):
    with seeded(seed):
        return (
            build_model(
                "mlp", (1, 3, 3), head=head, num_classes=3 if head == "linear" else None, widths=list(widths), **kw
            )
            .double()
            .eval()
        )


def _batches():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 1, 3, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (40,), generator=g)
    return [(x[:24], y[:24]), (x[24:], y[24:])]  # unequal sizes: the mean must weight by examples


def _dense(model, loss_of_outputs):
    names = [k for k, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for _, p in model.named_parameters()])

    def f(flat):
        params, i = {}, 0
        for k, s in zip(names, shapes):
            n = int(np.prod(s))
            params[k] = flat[i : i + n].view(s)
            i += n
        return loss_of_outputs(lambda x: functional_call(model, params, (x,)))

    return torch.autograd.functional.hessian(f, flat0)


@pytest.fixture(scope="module")
def dense_case():
    model = _tiny()
    bs = _batches()
    x = torch.cat([b[0] for b in bs])
    y = torch.cat([b[1] for b in bs])
    h = _dense(model, lambda fn: F.cross_entropy(fn(x), y))
    return model, bs, h


def test_top5_eigenvalues_match_the_dense_hessian(dense_case):
    model, bs, h = dense_case
    op = HessianOperator(model, bs)
    values, vectors = top_eigenpairs(op, k=5, tol=1e-10)
    expected = torch.linalg.eigvalsh(h).flip(0)[:5].numpy()
    np.testing.assert_allclose(values, expected, rtol=1e-4)
    hn = h.numpy()
    for lam, v in zip(values, vectors):  # eigenvectors too: H v = lambda v, unit norm
        assert np.linalg.norm(v) == pytest.approx(1.0, abs=1e-8)
        np.testing.assert_allclose(hn @ v, lam * v, atol=1e-5 * abs(values[0]))


def test_trace_within_5_percent_at_100_probes(dense_case):
    model, bs, h = dense_case
    exact = float(torch.trace(h))
    est, _ = trace(HessianOperator(model, bs), probes=100, seed=0)  # Hutch++ (the default)
    assert est == pytest.approx(exact, rel=0.05)
    # plain Hutchinson: unbiased with variance 2 sum_{i != j} H_ij^2 / probes (Rademacher probes);
    # on this net that is ~8 % of the trace, so 5 % is not a property of it: check it against 3 sigma
    est_h, samples = trace(HessianOperator(model, bs), probes=30, seed=0, method="hutchinson")
    hn = h.numpy()
    sigma = np.sqrt(2 * ((hn**2).sum() - (np.diag(hn) ** 2).sum()) / 30)
    assert len(samples) == 30 and abs(est_h - exact) < 3 * sigma


def test_power_iteration_and_slq_agree_with_the_dense_spectrum(dense_case):
    model, bs, h = dense_case
    value, _, iters = power_iteration(HessianOperator(model, bs[:1] + bs[1:]), tol=1e-8, max_iter=500)
    assert value == pytest.approx(float(torch.linalg.eigvalsh(h)[-1]), rel=1e-4)
    model = _tiny(widths=[3])
    x, y = (torch.cat(t) for t in zip(*_batches()))
    h = _dense(model, lambda fn: F.cross_entropy(fn(x), y))
    op = HessianOperator(model, [(x, y)])
    eig = torch.linalg.eigvalsh(h).numpy()
    nodes, weights = spectral_density(op, runs=1, steps=op.n, seed=0)
    np.testing.assert_allclose(weights.sum(1), 1.0, atol=1e-8)
    for node, w in zip(nodes.ravel(), weights.ravel()):
        if w > 1e-6:  # every node that carries weight is an eigenvalue of H
            assert np.abs(eig - node).min() < 1e-6 * max(1.0, abs(eig).max())


def test_distillation_loss_hessian_matches_dense():
    student = _tiny(head="dino", out_dim=7, hidden_dim=5, bottleneck_dim=4, nlayers=2)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(16, 1, 3, 3, generator=g, dtype=torch.float64)
    t_logits = torch.randn(16, 7, generator=g, dtype=torch.float64)
    pt = torch.softmax(t_logits, -1)
    h = _dense(student, lambda fn: -(pt * torch.log_softmax(fn(x), -1)).sum(-1).mean())
    values, _ = top_eigenpairs(HessianOperator(student, [(x, t_logits)], loss="distillation"), k=2, tol=1e-10)
    np.testing.assert_allclose(values, torch.linalg.eigvalsh(h).flip(0)[:2].numpy(), rtol=1e-4)


def test_hessian_dataset_records_batches_and_matches_dense_on_the_full_split():
    g = torch.Generator().manual_seed(5)
    imgs = torch.randint(0, 256, (48, 1, 3, 3), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 3, (48,), generator=g)
    data = Dataset("synthetic", Split(imgs, labels), Split(imgs[:8], labels[:8]), ["0", "1", "2"], (0.5,), (0.25,))
    model = _tiny()
    ds = hessian(model, data, k=2, batches=None, batch_size=20, trace_probes=10, slq_runs=1, slq_steps=10, device="cpu")
    assert ds.attrs["batches"] == 3 and ds.attrs["examples"] == 48 and ds.attrs["full_split"] == 1
    x = ((imgs.double() / 255) - 0.5) / 0.25
    h = _dense(model, lambda fn: F.cross_entropy(fn(x), labels))
    np.testing.assert_allclose(ds.eigenvalue.values, torch.linalg.eigvalsh(h).flip(0)[:2].numpy(), rtol=1e-4)
    for v in ds.data_vars.values():
        assert v.attrs["long_name"] and v.attrs["units"]
    part = hessian(model, data, k=1, batches=2, batch_size=8, trace_probes=0, device="cpu")
    assert part.attrs["batches"] == 2 and part.attrs["examples"] == 16 and part.attrs["full_split"] == 0
    with pytest.raises(ValueError, match="teacher"):
        hessian(model, data, k=1, loss="distillation", device="cpu")


def test_hessian_over_lottery_levels_is_restricted_to_the_unpruned_weights(tmp_path):
    from distill.store import Store
    from landscape.hessian import hessian_over_levels

    g = torch.Generator().manual_seed(7)
    imgs = torch.randint(0, 256, (32, 1, 3, 3), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 3, (32,), generator=g)
    data = Dataset("synthetic", Split(imgs, labels), Split(imgs[:8], labels[:8]), ["0", "1", "2"], (0.5,), (0.25,))
    store = Store.create(tmp_path / "lt.h5", {}, kind="lottery")
    dense = _tiny().float()
    pruned = _tiny().float()
    w = "backbone.layers.1.weight"
    mask = (torch.rand(pruned.state_dict()[w].shape, generator=g) > 0.5).to(torch.uint8)
    with torch.no_grad():
        dict(pruned.named_parameters())[w].mul_(mask)
    store.save_module("lottery/start/00", dense, {"level": 0})
    store.save_module("lottery/start/01", pruned, {"level": 1}, masks={w: mask})
    ds = hessian_over_levels(store, data, k=1, batches=None, batch_size=32, trace_probes=0, tol=1e-5, device="cpu")
    assert list(ds.level.values) == [0, 1]
    assert ds.remaining.values[0] == 1.0 and ds.remaining.values[1] == pytest.approx(float(mask.float().mean()))
    x = ((imgs.double() / 255) - 0.5) / 0.25
    for level, model, keep in ((0, dense, None), (1, pruned, mask)):
        h = _dense(model.double(), lambda fn: F.cross_entropy(fn(x), labels))
        if keep is not None:  # keep the rows and columns of the unpruned weights only
            flags = torch.cat(
                [
                    keep.reshape(-1).bool() if k == w else torch.ones(p.numel(), dtype=torch.bool)
                    for k, p in model.named_parameters()
                ]
            )
            h = h[flags][:, flags]
        expected = torch.linalg.eigvalsh(h).flip(0)[:1].numpy()
        np.testing.assert_allclose(ds.eigenvalue.sel(level=level).values, expected, rtol=2e-3)


def test_hessian_along_a_path_matches_dense_hessians_at_every_point():
    from landscape.hessian import hessian_along_path
    from landscape.paths import interpolate_state

    g = torch.Generator().manual_seed(8)
    imgs = torch.randint(0, 256, (24, 1, 3, 3), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 3, (24,), generator=g)
    data = Dataset("synthetic", Split(imgs, labels), Split(imgs[:8], labels[:8]), ["0", "1", "2"], (0.5,), (0.25,))
    a, b = _tiny(0).float(), _tiny(1).float()
    ds = hessian_along_path(
        a,
        b,
        data,
        alphas=[0.0, 0.25, 0.5, 0.75],
        k=1,
        batches=None,
        batch_size=24,
        trace_probes=0,
        tol=1e-6,
        device="cpu",
    )
    x = ((imgs.double() / 255) - 0.5) / 0.25
    for alpha in (0.0, 0.25, 0.5, 0.75):  # later points would start from the previous one if the ends were aliased
        m = _tiny(0)
        m.load_state_dict(interpolate_state(a.double().state_dict(), b.double().state_dict(), alpha))
        h = _dense(m, lambda fn: F.cross_entropy(fn(x), labels))
        assert float(ds.eigenvalue.sel(alpha=alpha, eigen=0)) == pytest.approx(
            float(torch.linalg.eigvalsh(h)[-1]), rel=1e-3
        )


def test_lanczos_stop_and_its_eigsh_fallback_agree_with_the_dense_top_eigenvalue(dense_case):
    model, bs, h = dense_case
    expected = torch.linalg.eigvalsh(h).flip(0)[:2].numpy()
    for kw in (dict(method="lanczos"), dict(stop="value"), dict(method="lanczos", max_steps=3), dict(method="eigsh")):
        op = HessianOperator(model, bs)
        values, _ = top_eigenpairs(op, k=2, tol=1e-9, **kw)
        np.testing.assert_allclose(values, expected, rtol=1e-6)
        if kw == dict(method="lanczos"):  # stopped early: fewer products than parameters
            assert op.hvps < op.n
