import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distill.probe import (
    PROBES,
    embed,
    fit_linear,
    knn_accuracy,
    knn_predict,
    linear_probe,
    probe_features,
    probe_input,
    probe_model,
    standardize_features,
)

# ----------------------------------------------------------------------------- helpers


def brute_force_knn(train_x, train_y, test_x, k, metric, weighted, temperature=0.07):
    """Plain loop reference: stable sort of all distances, vote, smallest class wins ties."""
    tr = train_x.double().numpy()
    te = test_x.double().numpy()
    ys = train_y.numpy()
    c = int(ys.max()) + 1
    if metric == "cosine":
        tr = tr / np.linalg.norm(tr, axis=1, keepdims=True)
        te = te / np.linalg.norm(te, axis=1, keepdims=True)
    preds = []
    for q in te:
        if metric == "cosine":
            sim = np.array([float(np.dot(q, t)) for t in tr])
            dist = -sim
        else:
            dist = np.array([float(np.sqrt(np.sum((q - t) ** 2))) for t in tr])
        order = np.argsort(dist, kind="stable")[:k]
        votes = [0.0] * c
        for j in order:
            # cosine: exp(sim / T) (DINO); euclidean: exp(-distance / T)
            votes[ys[j]] += float(np.exp(-dist[j] / temperature)) if weighted else 1.0
        best = 0
        for cls in range(c):
            if votes[cls] > votes[best]:
                best = cls
        preds.append(best)
    return torch.tensor(preds)


def clusters(n_per_class, num_classes, dim, sep, noise, seed):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, dim, generator=g) * sep
    y = torch.arange(num_classes).repeat_interleave(n_per_class)
    x = centres[y] + noise * torch.randn(len(y), dim, generator=g)
    perm = torch.randperm(len(y), generator=g)
    return x[perm], y[perm]


def random_data(n, dim, num_classes, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g), torch.randint(0, num_classes, (n,), generator=g)


# ----------------------------------------------------------------------------- k-NN


@pytest.mark.parametrize("gemm", ["torch", "numpy"])
@pytest.mark.parametrize("k", [1, 5, 20])
@pytest.mark.parametrize(
    "metric,weighted", [("euclidean", False), ("cosine", True), ("cosine", False), ("euclidean", True)]
)
def test_knn_matches_brute_force(k, metric, weighted, gemm):
    train_x, train_y = random_data(300, 8, 5, seed=1)
    test_x, test_y = random_data(120, 8, 5, seed=2)
    ref = brute_force_knn(train_x, train_y, test_x, k, metric, weighted)
    got = knn_predict(train_x, train_y, test_x, k=k, metric=metric, weighted=weighted, chunk=37, gemm=gemm)
    assert torch.equal(got, ref)
    acc = knn_accuracy(train_x, train_y, test_x, test_y, k=k, metric=metric, weighted=weighted)
    assert acc == int((ref == test_y).sum()) / len(test_y)


def test_knn_unweighted_vote_ties_exercised():
    # k=20 with 5 classes: many tied votes, so the smallest-class rule is actually tested above.
    train_x, train_y = random_data(300, 8, 5, seed=1)
    test_x, _ = random_data(120, 8, 5, seed=2)
    d = torch.cdist(test_x.double(), train_x.double())
    idx = d.argsort(dim=1, stable=True)[:, :20]
    counts = torch.nn.functional.one_hot(train_y[idx], 5).sum(1)
    tied = (counts == counts.max(1, keepdim=True).values).sum(1) > 1
    assert int(tied.sum()) >= 10


def test_knn_tie_rules():
    # Vote tie: one neighbour each of classes 3 and 1 -> the smaller class, 1.
    train_x = torch.tensor([[1.0], [-1.0], [5.0]])
    train_y = torch.tensor([3, 1, 0])
    assert knn_predict(train_x, train_y, torch.tensor([[0.0]]), k=2).tolist() == [1]
    # Distance tie: equal distances are taken in training-row order.
    train_x = torch.ones(4, 2)
    train_y = torch.tensor([2, 0, 1, 1])
    assert knn_predict(train_x, train_y, torch.zeros(1, 2), k=1).tolist() == [2]
    assert knn_predict(train_x, train_y, torch.zeros(1, 2), k=2).tolist() == [0]  # {2, 0} tie -> 0
    assert knn_predict(train_x, train_y, torch.zeros(1, 2), k=3).tolist() == [0]  # {2, 0, 1} -> 0
    assert knn_predict(train_x, train_y, torch.zeros(1, 2), k=4).tolist() == [1]


def test_knn_collapsed_features_are_deterministic():
    # All training embeddings identical (a collapsed representation): every distance ties.
    g = torch.Generator().manual_seed(0)
    train_y = torch.randint(0, 4, (500,), generator=g)
    train_x = torch.full((500, 16), 0.3)
    test_x = torch.randn(10, 16, generator=g)
    ref = brute_force_knn(train_x, train_y, test_x, 20, "euclidean", False)
    assert torch.equal(knn_predict(train_x, train_y, test_x, k=20), ref)
    expected = int(torch.bincount(train_y[:20], minlength=4).argmax())
    assert ref.tolist() == [expected] * 10


def test_knn_separated_clusters_perfect():
    x, y = clusters(60, 5, 16, sep=10.0, noise=0.5, seed=3)
    assert knn_accuracy(x[:200], y[:200], x[200:], y[200:], k=20) == 1.0
    assert knn_accuracy(x[:200], y[:200], x[200:], y[200:], k=20, metric="cosine", weighted=True) == 1.0


def test_knn_random_labels_near_chance():
    train_x, train_y = random_data(2000, 16, 5, seed=4)
    test_x, test_y = random_data(1500, 16, 5, seed=5)
    acc = knn_accuracy(train_x, train_y, test_x, test_y, k=20)
    assert abs(acc - 0.2) < 0.06


def test_knn_chunking_invariant():
    train_x, train_y = random_data(500, 12, 7, seed=6)
    test_x, _ = random_data(101, 12, 7, seed=7)
    for metric, weighted in [("euclidean", False), ("cosine", True)]:
        whole = knn_predict(train_x, train_y, test_x, k=20, metric=metric, weighted=weighted, chunk=10**6)
        for chunk in (1, 13, 100):
            part = knn_predict(train_x, train_y, test_x, k=20, metric=metric, weighted=weighted, chunk=chunk)
            assert torch.equal(part, whole)


def test_knn_large_common_offset():
    # ReLU-like features with a big shared offset: ranking must match the exact computation.
    train_x, train_y = random_data(300, 8, 5, seed=20)
    test_x, _ = random_data(100, 8, 5, seed=21)
    off = torch.full((8,), 3000.0)
    ref = brute_force_knn(train_x + off, train_y, test_x + off, 5, "euclidean", False)
    assert torch.equal(knn_predict(train_x + off, train_y, test_x + off, k=5), ref)


def test_knn_rejects_bad_input():
    x, y = random_data(10, 3, 2, seed=0)
    with pytest.raises(ValueError, match="k=11"):
        knn_accuracy(x, y, x, y, k=11)
    with pytest.raises(ValueError, match="metric"):
        knn_accuracy(x, y, x, y, k=1, metric="manhattan")
    with pytest.raises(ValueError, match="test_x"):
        knn_accuracy(x, y, x[:, :2], y, k=1)
    bad = x.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        knn_accuracy(bad, y, x, y, k=1)
    with pytest.raises(ValueError, match="NaN"):
        linear_probe(x, y, bad, y)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_finite_check_agrees_with_elementwise_isfinite(dtype):
    from distill.probe import _check_finite

    big = torch.finfo(dtype).max
    cases = {
        "finite": torch.randn(50, 7, generator=torch.Generator().manual_seed(0), dtype=dtype),
        "nan": torch.tensor([[1.0, float("nan")], [2.0, 3.0]], dtype=dtype),
        "+inf": torch.tensor([[1.0, float("inf")], [2.0, 3.0]], dtype=dtype),
        "-inf": torch.tensor([[1.0, 2.0], [float("-inf"), 3.0]], dtype=dtype),
        "+inf and -inf": torch.tensor([[float("inf"), 2.0], [float("-inf"), 3.0]], dtype=dtype),
        "sum overflows, all finite": torch.full((4, 3), big, dtype=dtype),
        "overflow and a nan": torch.tensor([[big, big], [big, float("nan")]], dtype=dtype),
        "empty": torch.zeros(0, 5, dtype=dtype),
    }
    for what, x in cases.items():
        ok = bool(torch.isfinite(x).all())
        assert ok == (what in ("finite", "sum overflows, all finite", "empty")), what
        if ok:
            _check_finite(x, "train_x")
        else:
            with pytest.raises(ValueError, match="train_x contains NaN or infinite"):
                _check_finite(x, "train_x")


def test_probes_reject_infinite_features():
    x, y = random_data(10, 3, 2, seed=0)
    bad = x.clone()
    bad[2, 0] = float("-inf")
    with pytest.raises(ValueError, match="train_x contains NaN or infinite"):
        knn_accuracy(bad, y, x, y, k=1)
    with pytest.raises(ValueError, match="train_x contains NaN or infinite"):
        fit_linear(bad, y)


# ----------------------------------------------------------------------------- linear probe


def test_linear_probe_separable_reaches_one():
    x, y = clusters(200, 4, 10, sep=3.0, noise=0.3, seed=8)
    acc = linear_probe(x[:600], y[:600], x[600:], y[600:], epochs=10, lr=1e-2, batch_size=32)
    assert acc == 1.0


def test_linear_probe_random_labels_near_chance():
    train_x, train_y = random_data(2000, 32, 5, seed=9)
    test_x, test_y = random_data(1500, 32, 5, seed=10)
    acc = linear_probe(train_x, train_y, test_x, test_y, epochs=10)
    assert abs(acc - 0.2) < 0.06


def test_linear_probe_deterministic_and_global_rng_untouched():
    x, y = clusters(100, 5, 20, sep=1.0, noise=1.0, seed=11)
    state = torch.random.get_rng_state()
    a = linear_probe(x[:400], y[:400], x[400:], y[400:], seed=3)
    assert torch.equal(state, torch.random.get_rng_state())
    torch.manual_seed(12345)  # must not matter
    b = linear_probe(x[:400], y[:400], x[400:], y[400:], seed=3)
    assert a == b


def _noisy_problem():
    x, y = clusters(300, 5, 20, sep=0.6, noise=1.0, seed=12)
    return x[:1000], y[:1000], x[1000:], y[1000:]


def test_until_convergence_stopping_rule():
    xtr, ytr, xte, yte = _noisy_problem()
    kw = dict(lr=3e-3, batch_size=64, seed=1)
    one = linear_probe(xtr, ytr, xte, yte, epochs=1, **kw)
    three = linear_probe(xtr, ytr, xte, yte, epochs=3, **kw)
    assert one != three  # so the comparisons below can tell epoch counts apart
    # A huge tolerance stops after the first epoch; tol=0 runs to max_epochs.
    assert linear_probe(xtr, ytr, xte, yte, until_convergence=True, tol=10.0, epochs=7, **kw) == one
    assert linear_probe(xtr, ytr, xte, yte, until_convergence=True, tol=0.0, max_epochs=3, **kw) == three


def test_until_convergence_uses_relative_loss_change():
    xtr, ytr, _, _ = _noisy_problem()
    kw = dict(lr=3e-3, batch_size=64, seed=1, until_convergence=True, max_epochs=25)
    _, free = fit_linear(xtr, ytr, tol=0.0, **kw)
    assert len(free) == 26
    rel = [abs(a - b) / a for a, b in zip(free[:-1], free[1:])]
    tol = float(np.median(rel[:10]))  # stops somewhere in the first ten epochs
    stop = next(e for e, r in enumerate(rel, start=1) if r <= tol)
    layer, losses = fit_linear(xtr, ytr, tol=tol, **kw)
    assert len(losses) == stop + 1
    assert losses == free[: stop + 1]
    # The losses are the full-train mean cross-entropy of the returned layer.
    with torch.no_grad():
        final = torch.nn.functional.cross_entropy(xtr @ layer.weight.T + layer.bias, ytr)
    assert losses[-1] == pytest.approx(float(final), rel=1e-5)
    # Losses here are above 1, so an absolute criterion would have stopped no later.
    assert free[0] > 1.0


def test_standardized_probe_invariant_to_affine_rescale():
    xtr, ytr, xte, yte = _noisy_problem()
    g = torch.Generator().manual_seed(13)
    scale = 10 ** (torch.rand(xtr.shape[1], generator=g) * 4 - 1)  # 0.1 .. 1000
    shift = torch.randn(xtr.shape[1], generator=g) * 100
    kw = dict(standardize=True, epochs=5, seed=2)
    ref = linear_probe(xtr, ytr, xte, yte, **kw)
    got = linear_probe(xtr * scale + shift, ytr, xte * scale + shift, yte, **kw)
    assert abs(got - ref) <= 1 / len(yte) + 1e-12
    # And the transform itself: same standardised features up to float32 round-off.
    a, _ = standardize_features(xtr, xte)
    b, _ = standardize_features(xtr * scale + shift, xte * scale + shift)
    assert torch.allclose(a, b, atol=1e-4)


def test_raw_probe_suffers_from_bad_scaling():
    x, y = clusters(300, 5, 20, sep=2.0, noise=1.0, seed=12)
    xtr, ytr, xte, yte = x[:1000], y[:1000], x[1000:], y[1000:]
    noise_tr = torch.randn(len(xtr), 20, generator=torch.Generator().manual_seed(14))
    noise_te = torch.randn(len(xte), 20, generator=torch.Generator().manual_seed(15))
    # Informative features shrunk, pure-noise features blown up.
    btr = torch.cat([xtr * 1e-3, noise_tr * 1e3], 1)
    bte = torch.cat([xte * 1e-3, noise_te * 1e3], 1)
    raw = linear_probe(btr, ytr, bte, yte)
    std = linear_probe(btr, ytr, bte, yte, standardize=True)
    assert std > 0.4
    assert raw < std - 0.2


def test_standardize_matches_manual_and_handles_constant_feature():
    x = torch.randn(50, 4, generator=torch.Generator().manual_seed(16))
    x[:, 2] = 7.0
    t = torch.randn(5, 4)
    a, b = standardize_features(x, t)
    m, s = x.double().mean(0), x.double().std(0)
    s[2] = 1.0
    assert torch.allclose(a.double(), (x.double() - m) / s, atol=1e-6)
    assert torch.allclose(b.double(), (t.double() - m) / s, atol=1e-6)
    assert torch.isfinite(b).all()


# ----------------------------------------------------------------------------- embed

MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


def _images(n=24, seed=17):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 6, 6), generator=g, dtype=torch.uint8)


def _manual_normalise(images):
    m = torch.tensor(MEAN).view(1, 3, 1, 1)
    s = torch.tensor(STD).view(1, 3, 1, 1)
    return (images.float() / 255.0 - m) / s


def _convnet(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 5, 3),
        nn.BatchNorm2d(5),
        nn.ReLU(),
        nn.Conv2d(5, 4, 3),
        nn.BatchNorm2d(4),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    with torch.no_grad():  # non-trivial running statistics
        for bn in (net[1], net[4]):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
    return net


def test_embed_matches_manual_forward_eval_mode():
    net = _convnet().eval()
    images = _images()
    out = embed(net, images, MEAN, STD, batch_size=5)
    with torch.no_grad():
        ref = net(_manual_normalise(images))
    assert out.dtype == torch.float32 and out.device.type == "cpu" and out.shape == (24, 4)
    assert not out.requires_grad
    assert torch.allclose(out, ref, atol=1e-5)
    assert not any(m.training for m in net.modules())


def test_embed_keeps_mixed_modes():
    net = _convnet().train()
    net[1].eval()  # a BN deliberately in eval mode inside a module in train mode
    modes = [m.training for m in net.modules()]
    images = _images()
    ref_net = _convnet()
    ref_net.load_state_dict(net.state_dict())
    ref_net.train()
    ref_net[1].eval()
    out = embed(net, images, MEAN, STD, batch_size=len(images))
    with torch.no_grad():
        ref = ref_net(_manual_normalise(images))
    assert [m.training for m in net.modules()] == modes
    assert torch.allclose(out, ref, atol=1e-5)
    # The eval-mode BN kept its running stats; the train-mode BN used batch statistics.
    assert torch.equal(net[1].running_mean, ref_net[1].running_mean)
    assert torch.allclose(net[4].running_mean, ref_net[4].running_mean)
    # Had embed switched everything to eval, the output would differ.
    with torch.no_grad():
        assert not torch.allclose(out, ref_net.eval()(_manual_normalise(images)), atol=1e-3)


class _ModeRecorder(nn.Module):
    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append(self.training)
        return x.flatten(1)


def test_embed_runs_in_callers_mode():
    for mode in (True, False):
        rec = _ModeRecorder().train(mode)
        embed(rec, _images(10), MEAN, STD, batch_size=4)
        assert rec.seen == [mode] * 3 and rec.training == mode


class _FormatRecorder(nn.Module):
    """Records whether each batch arrives in channels-last format; optionally holds a Conv2d."""

    def __init__(self, conv: bool):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1) if conv else None
        self.seen: list[bool] = []

    def forward(self, x):
        self.seen.append(x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())
        return (self.conv(x) if self.conv is not None else x).flatten(1)


@pytest.mark.parametrize(
    "conv, flag, expected", [(True, None, True), (False, None, False), (True, False, False), (False, True, True)]
)
def test_embed_channels_last_by_default_for_conv_nets_only(conv, flag, expected):
    rec = _FormatRecorder(conv).eval()
    out = embed(rec, _images(10), MEAN, STD, batch_size=4, channels_last=flag)
    assert rec.seen == [expected] * 3
    with torch.no_grad():  # flatten follows the logical (C, H, W) order whatever the memory format
        ref = (rec.conv if conv else nn.Identity())(_manual_normalise(_images(10))).flatten(1)
    assert torch.allclose(out, ref, atol=1e-5)


def test_embed_checks_channels():
    with pytest.raises(ValueError, match="channels"):
        embed(nn.Flatten(), _images(4), (0.5, 0.5), (0.2, 0.2))


# ----------------------------------------------------------------------------- drivers


def _fake_dataset():
    x, y = clusters(40, 3, 3 * 6 * 6, sep=40.0, noise=30.0, seed=18)
    imgs = (x.view(-1, 3, 6, 6) + 128).clamp(0, 255).to(torch.uint8)
    split = lambda a, b: SimpleNamespace(images=imgs[a:b], labels=y[a:b])
    return SimpleNamespace(train=split(0, 80), test=split(80, 120), mean=MEAN, std=STD)


def test_probe_features_keys_and_values():
    x, y = clusters(50, 3, 8, sep=5.0, noise=0.5, seed=19)
    out = probe_features(x[:100], y[:100], x[100:], y[100:], linear_lr=1e-2)
    assert tuple(out) == PROBES
    assert out["knn"] == knn_accuracy(x[:100], y[:100], x[100:], y[100:], k=20)
    assert out["linear"] == linear_probe(x[:100], y[:100], x[100:], y[100:], lr=1e-2)
    assert out["linear_std"] == linear_probe(x[:100], y[:100], x[100:], y[100:], lr=1e-2, standardize=True)
    assert probe_features(x[:100], y[:100], x[100:], y[100:], probes=("knn",)).keys() == {"knn"}
    with pytest.raises(ValueError, match="unknown probe"):
        probe_features(x, y, x, y, probes=("svm",))


def test_probe_input_equals_probes_on_flattened_pixels():
    data = _fake_dataset()
    out = probe_input(data, linear_epochs=3)
    tr = _manual_normalise(data.train.images).flatten(1)
    te = _manual_normalise(data.test.images).flatten(1)
    assert out["knn"] == knn_accuracy(tr, data.train.labels, te, data.test.labels, k=20)
    assert out["linear"] == pytest.approx(
        linear_probe(tr, data.train.labels, te, data.test.labels, epochs=3), abs=1 / 40 + 1e-12
    )
    raw = probe_input(data, probes=("knn",), normalized=False)
    ref = knn_accuracy(
        data.train.images.flatten(1) / 255.0,
        data.train.labels,
        data.test.images.flatten(1) / 255.0,
        data.test.labels,
        k=20,
    )
    assert raw["knn"] == ref


def test_probe_model_uses_backbone_and_subset():
    data = _fake_dataset()
    wrapped = nn.Module()
    wrapped.backbone = nn.Flatten()
    wrapped.head = nn.Linear(108, 1000)
    a = probe_model(wrapped, data, probes=("knn",))
    b = probe_input(data, probes=("knn",))
    assert a == b
    full = probe_model(nn.Flatten(), data, probes=("knn",), train_subset=80)
    assert full == b
    small = probe_model(nn.Flatten(), data, probes=("knn",), train_subset=30, seed=5, knn_k=5)
    idx = torch.randperm(80, generator=torch.Generator().manual_seed(5))[:30].sort().values
    tr = _manual_normalise(data.train.images[idx]).flatten(1)
    te = _manual_normalise(data.test.images).flatten(1)
    assert small["knn"] == knn_accuracy(tr, data.train.labels[idx], te, data.test.labels, k=5)


def test_knn_numpy_gemm_keeps_torchs_thread_count():
    from threadpoolctl import threadpool_info

    from distill.probe import _blas_threads

    with _blas_threads(1):
        blas = [i for i in threadpool_info() if i["user_api"] == "blas"]
        assert blas and all(i["num_threads"] == 1 for i in blas)


@pytest.mark.parametrize("workers", [1, 2, 3])
@pytest.mark.parametrize("gemm", ["torch", "numpy"])
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_knn_workers_match_brute_force_and_restore_threads(workers, gemm, metric):
    # chunk=7 makes 18 chunks, so several are in flight when workers > 1 and the order of the
    # concatenated predictions is tested.
    train_x, train_y = random_data(300, 8, 5, seed=1)
    test_x, _ = random_data(120, 8, 5, seed=2)
    ref = brute_force_knn(train_x, train_y, test_x, 5, metric, False)
    before = torch.get_num_threads()
    got = knn_predict(train_x, train_y, test_x, k=5, metric=metric, chunk=7, gemm=gemm, workers=workers)
    assert torch.equal(got, ref)
    assert torch.get_num_threads() == before


def test_knn_workers_must_be_positive():
    train_x, train_y = random_data(30, 4, 3, seed=1)
    with pytest.raises(ValueError, match="workers"):
        knn_predict(train_x, train_y, train_x, k=3, workers=0)


def test_knn_numpy_and_torch_gemm_agree_at_scale():
    train_x, train_y = clusters(200, 10, 64, sep=1.0, noise=2.0, seed=3)
    test_x, _ = clusters(50, 10, 64, sep=1.0, noise=2.0, seed=4)
    a = knn_predict(train_x, train_y, test_x, gemm="torch")
    assert torch.equal(a, knn_predict(train_x, train_y, test_x, gemm="numpy"))
    with pytest.raises(ValueError, match="gemm"):
        knn_predict(train_x, train_y, test_x, gemm="blas")


def test_fit_linear_without_reshuffle_replays_one_order():
    # The authors' probe: one random order drawn before training, its batches replayed every epoch;
    # written out here with torch.optim.AdamW and the same generator draws (init, then one randperm).
    x, y = random_data(70, 6, 3, seed=4)
    layer, _ = fit_linear(x, y, epochs=3, batch_size=16, seed=9, weight_decay=0.01, reshuffle=False)
    g = torch.Generator().manual_seed(9)
    ref = nn.Linear(6, 3)
    bound = 1 / math.sqrt(6)
    with torch.no_grad():
        ref.weight.uniform_(-bound, bound, generator=g)
        ref.bias.uniform_(-bound, bound, generator=g)
    opt = torch.optim.AdamW(ref.parameters(), lr=1e-3, weight_decay=0.01)
    order = torch.randperm(70, generator=g)
    for _ in range(3):
        for i in range(0, 70, 16):
            j = order[i : i + 16]
            loss = F.cross_entropy(ref(x[j]), y[j])
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert torch.allclose(layer.weight, ref.weight, atol=1e-6) and torch.allclose(layer.bias, ref.bias, atol=1e-6)
    again, _ = fit_linear(x, y, epochs=3, batch_size=16, seed=9, weight_decay=0.01)
    assert not torch.allclose(again.weight, layer.weight, atol=1e-6)  # the default reshuffles each epoch


def test_knn_std_is_the_knn_probe_on_features_standardised_with_the_training_split():
    """Against numpy: standardise with the training split's mean and unbiased std, then 1-NN. One feature
    is large noise, the other small signal, so the raw k-NN and the standardised one disagree."""
    from distill.probe import probe_features

    rng = np.random.default_rng(0)
    n, m = 200, 100
    ytr, yte = rng.integers(0, 2, n), rng.integers(0, 2, m)
    xtr = np.stack([rng.normal(0, 100, n), ytr * 0.5 + rng.normal(0, 0.05, n)], 1).astype(np.float32)
    xte = np.stack([rng.normal(0, 100, m), yte * 0.5 + rng.normal(0, 0.05, m)], 1).astype(np.float32)
    mu, sd = xtr.astype(np.float64).mean(0), xtr.astype(np.float64).std(0, ddof=1)
    a, b = (xtr - mu) / sd, (xte - mu) / sd
    nearest = ((b[:, None, :] - a[None, :, :]) ** 2).sum(-1).argmin(1)
    want = float((ytr[nearest] == yte).mean())
    got = probe_features(
        torch.from_numpy(xtr),
        torch.from_numpy(ytr),
        torch.from_numpy(xte),
        torch.from_numpy(yte),
        probes=["knn", "knn_std"],
        knn_k=1,
        device="cpu",
    )
    assert got["knn_std"] == pytest.approx(want)
    assert want > 0.95 and got["knn"] < 0.8  # standardising is what makes the signal visible
