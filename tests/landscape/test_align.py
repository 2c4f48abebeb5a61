"""Permutation alignment: permuted copies aligned back exactly (every family), weight matching equals
brute force on an enumerable hidden layer, aligned paths, REPAIR statistics."""

from __future__ import annotations

import copy
import itertools
import json

import numpy as np
import pytest
import torch
from torch import nn

from distill.data import Dataset, Split
from distill.models import build_model, seeded
from landscape.align import (
    activation_matching,
    align,
    apply_permutation,
    permutation_spec,
    random_permutations,
    repair_state,
    weight_matching,
)
from landscape.paths import linear_path

FAMILIES = [
    ("mlp", (1, 6, 6), dict(widths=[12, 10]), "linear"),
    ("mlp", (1, 6, 6), dict(widths=[12], out_dim=16, hidden_dim=9, bottleneck_dim=5), "dino"),
    (
        "mlp",
        (1, 6, 6),
        dict(widths=[7], out_dim=16, hidden_dim=9, bottleneck_dim=5, last_layer="weightnorm", norm_last_layer=False),
        "dino",
    ),
    ("convnet", (3, 8, 8), dict(width=8, depth=2, bn=True), "linear"),
    ("convnet", (3, 8, 8), dict(width=8, depth=2, bn=False), "linear"),
    ("vgg11_bn", (3, 8, 8), {}, "linear"),
    ("resnet20", (3, 8, 8), {}, "linear"),
]


def _build(arch, in_shape, opts, head, seed=0):
    with seeded(seed):
        model = build_model(arch, in_shape, head=head, num_classes=5 if head == "linear" else None, **opts)
        for m in model.modules():  # non-trivial BN parameters and statistics, so BN permutation matters
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.data.uniform_(0.5, 1.5)
                m.bias.data.normal_()
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.mark.parametrize("arch,in_shape,opts,head", FAMILIES, ids=lambda v: str(v) if isinstance(v, str) else None)
def test_permuted_copy_is_aligned_back_exactly(arch, in_shape, opts, head):
    a = _build(arch, in_shape, opts, head)
    spec = permutation_spec(a)
    assert spec.sizes, "the spec found no permutation"
    perms = random_permutations(spec, seed=1)
    assert any((p != np.arange(len(p))).any() for p in perms.values())
    b = copy.deepcopy(a)
    b.load_state_dict(apply_permutation(spec, perms, a.state_dict()))
    x = torch.randn(4, *in_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ya = a(x)
        torch.testing.assert_close(b(x), ya, rtol=0, atol=1e-5 * float(ya.abs().max()) + 1e-6)
    aligned, record = align(a, b, "weights")
    found = json.loads(record["permutations"])
    for p, pi in perms.items():
        np.testing.assert_array_equal(found[p], np.argsort(pi), err_msg=p)  # sigma = pi^-1
    for k, t in a.state_dict().items():
        assert torch.equal(aligned.state_dict()[k], t), k
    with torch.no_grad():
        torch.testing.assert_close(aligned(x), ya, rtol=0, atol=1e-6)


def test_weight_matching_equals_brute_force_on_one_hidden_layer():
    a = _build("mlp", (1, 3, 3), dict(widths=[6]), "linear", seed=0)
    b = _build("mlp", (1, 3, 3), dict(widths=[6]), "linear", seed=1)
    spec = permutation_spec(a)
    assert list(spec.sizes.values()) == [6]
    keys = {k for k, _ in a.named_parameters()}
    perms, _ = weight_matching(spec, a.state_dict(), b.state_dict(), keys=keys)
    sa = {k: v.double().numpy() for k, v in a.state_dict().items()}
    sb = {k: v.double().numpy() for k, v in b.state_dict().items()}
    w1, b1, w2, b2 = ("backbone.layers.1.weight", "backbone.layers.1.bias", "head.weight", "head.bias")

    def objective(s):
        s = list(s)
        return (
            (sa[w1] * sb[w1][s]).sum()
            + (sa[b1] * sb[b1][s]).sum()
            + (sa[w2] * sb[w2][:, s]).sum()
            + (sa[b2] * sb[b2]).sum()
        )

    scores = {s: objective(s) for s in itertools.permutations(range(6))}
    best = max(scores, key=scores.get)
    assert sorted(scores.values())[-1] > sorted(scores.values())[-2]  # a unique optimum
    assert tuple(int(i) for i in next(iter(perms.values()))) == best


def _data(n_train=64, n_test=32, shape=(1, 6, 6), classes=5):
    g = torch.Generator().manual_seed(3)

    def split(n):
        return Split(
            torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8),
            torch.randint(0, classes, (n,), generator=g),
        )

    return Dataset("synthetic", split(n_train), split(n_test), [str(i) for i in range(classes)], (0.5,), (0.25,))


def test_linear_path_aligned_to_a_permuted_copy_is_flat_and_records_the_alignment():
    a = _build("mlp", (1, 6, 6), dict(widths=[12, 10]), "linear")
    spec = permutation_spec(a)
    b = copy.deepcopy(a)
    b.load_state_dict(apply_permutation(spec, random_permutations(spec, 2), a.state_dict()))
    data = _data()
    plain = linear_path(a, b, data, alphas=5, device="cpu")
    for method in ("weights", "activations"):
        ds = linear_path(a, b, data, alphas=5, device="cpu", align=method, align_options={"batch_size": 32})
        assert ds.attrs["align"] == method
        assert ds.attrs["align_changed_units"] > 0
        np.testing.assert_allclose(ds.loss.values, np.broadcast_to(ds.loss.values[0], ds.loss.shape), rtol=1e-6)
    assert plain.attrs["align"] == "none"
    assert np.abs(plain.loss.values[2] - plain.loss.values[0]).max() > 1e-3  # unaligned: the middle differs


def test_activation_matching_recovers_a_permutation():
    a = _build("convnet", (3, 8, 8), dict(width=8, depth=2, bn=True), "linear")
    spec = permutation_spec(a)
    perms = random_permutations(spec, 4)
    b = copy.deepcopy(a)
    b.load_state_dict(apply_permutation(spec, perms, a.state_dict()))
    xs = [torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    found, info = activation_matching(spec, a, b, xs)
    for p, pi in perms.items():
        np.testing.assert_array_equal(found[p], np.argsort(pi))
    assert info["mean_correlation"] == pytest.approx(1.0, abs=1e-6)


def test_repair_restores_interpolated_channel_statistics():
    a = _build("mlp", (1, 6, 6), dict(widths=[12, 10]), "linear", seed=0)
    b = _build("mlp", (1, 6, 6), dict(widths=[12, 10]), "linear", seed=1)
    xs = [torch.randn(64, 1, 6, 6, generator=torch.Generator().manual_seed(9))]
    work = copy.deepcopy(a)
    state = repair_state(work, a.state_dict(), b.state_dict(), 0.5, xs)

    def stats(model, name):  # an independent hook on the first hidden layer
        out = {}
        h = dict(model.named_modules())[name].register_forward_hook(lambda m, i, o: out.update(z=o.clone()))
        with torch.no_grad():
            model(xs[0])
        h.remove()
        z = out["z"].double()
        return z.mean(0), z.std(0, unbiased=False)

    work.load_state_dict(state)
    name = "backbone.layers.1"
    mu, sd = stats(work, name)
    mu_a, sd_a = stats(a, name)
    mu_b, sd_b = stats(b, name)
    torch.testing.assert_close(mu, (mu_a + mu_b) / 2, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(sd, (sd_a + sd_b) / 2, rtol=1e-4, atol=1e-5)


def test_unsupported_architectures_are_refused_with_the_fix():
    with seeded(0):
        m = build_model("resnet20", (3, 8, 8), head="linear", num_classes=3, shortcut="A")
    with pytest.raises(ValueError, match="shortcut='B'"):
        permutation_spec(m)
    with pytest.raises(ValueError, match="backbone"):
        permutation_spec(nn.Linear(3, 3))
    a = _build("mlp", (1, 6, 6), dict(widths=[12]), "linear")
    with pytest.raises(ValueError, match="choose one of"):
        align(a, a, "nope")
