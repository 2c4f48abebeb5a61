"""Filter-normalised surfaces: the normalisation per filter, the line through two checkpoints, resuming."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from distill.data import Dataset, Split
from distill.models import build_model, seeded
from landscape.paths import linear_path
from landscape.surface import bn_parameter_keys, filter_normalize, random_direction, surface

surface_mod = importlib.import_module("landscape.surface")  # the module (landscape.surface is the function)


def _net(seed, bn=True):
    with seeded(seed):
        return build_model("convnet", (3, 8, 8), head="linear", num_classes=4, width=4, depth=2, bn=bn).eval()


def _data():
    g = torch.Generator().manual_seed(1)

    def split(n):
        return Split(
            torch.randint(0, 256, (n, 3, 8, 8), generator=g, dtype=torch.uint8), torch.randint(0, 4, (n,), generator=g)
        )

    return Dataset("synthetic", split(48), split(40), ["0", "1", "2", "3"], (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))


COMMON = dict(bn_batches=2, bn_batch_size=16, eval_batch_size=16, device="cpu")


def test_filter_normalisation_per_filter_against_numpy():
    model = _net(0)
    ref = {k: p.detach() for k, p in model.named_parameters()}
    g = torch.Generator().manual_seed(3)
    raw = {k: torch.randn(p.shape, generator=g, dtype=torch.float64) for k, p in ref.items()}
    bn_keys = bn_parameter_keys(model)
    assert bn_keys == {f"backbone.features.{i}.1.{leaf}" for i in range(2) for leaf in ("weight", "bias")}
    out = filter_normalize(raw, ref, bn_keys, bias="normalize", bn_params="ignore")
    for k, d in raw.items():
        d, r, got = d.numpy(), ref[k].double().numpy(), out[k].numpy()
        if d.ndim >= 2:
            for i in range(d.shape[0]):  # filter i: the raw direction scaled to the weight filter's norm
                expect = d[i] * np.sqrt((r[i] ** 2).sum()) / np.sqrt((d[i] ** 2).sum())
                np.testing.assert_allclose(got[i], expect, rtol=1e-12)
        elif k in bn_keys:
            np.testing.assert_array_equal(got, 0.0)
        else:
            np.testing.assert_allclose(got, d * np.linalg.norm(r) / np.linalg.norm(d), rtol=1e-12)
    d1 = random_direction(model, seed=5)
    d2 = random_direction(model, seed=5)
    w = "backbone.features.0.0.weight"
    assert torch.equal(d1[w], d2[w])
    np.testing.assert_allclose(
        d1[w].flatten(1).norm(dim=1).numpy(), ref[w].double().flatten(1).norm(dim=1).numpy(), rtol=1e-12
    )
    with pytest.raises(ValueError, match="bias"):
        filter_normalize(raw, ref, bias="zero")


def test_surface_through_checkpoints_reproduces_linear_path_exactly():
    a, b, c = _net(0), _net(1), _net(2)
    data = _data()
    path = linear_path(a, b, data, alphas=5, splits=("test",), **COMMON)
    line = surface(a, data, directions=[b], dims=1, resolution=5, span=(0.0, 1.0), **COMMON)
    np.testing.assert_array_equal(line.loss.values, path.loss.sel(split="test").values)
    np.testing.assert_array_equal(line.error.values, path.error.sel(split="test").values)
    plane = surface(a, data, directions=[b, c], dims=2, resolution=(5, 3), span=(0.0, 1.0), yspan=(-0.5, 0.5), **COMMON)
    np.testing.assert_array_equal(plane.loss.sel(y=0.0).values, path.loss.sel(split="test").values)
    assert not np.allclose(plane.loss.sel(y=0.5).values, plane.loss.sel(y=0.0).values)


def test_random_surface_is_seeded_and_resumes_from_its_file(tmp_path, monkeypatch):
    a, data = _net(0, bn=False), _data()
    out = tmp_path / "s.nc"
    first = surface(a, data, dims=2, resolution=3, seed=4, out=out, **COMMON)
    again = surface(a, data, dims=2, resolution=3, seed=4, **COMMON)
    np.testing.assert_array_equal(first.loss.values, again.loss.values)
    assert first.loss.sel(x=0.0, y=0.0) == pytest.approx(float(again.loss.sel(x=0.0, y=0.0)))
    assert first.attrs["d1_norm"] > 0 and int(first.done.sum()) == 3

    def boom(*args, **kwargs):
        raise AssertionError("a finished row was evaluated again")

    monkeypatch.setattr(surface_mod, "run_segment", boom)
    resumed = surface(a, data, dims=2, resolution=3, seed=4, out=out, **COMMON)
    np.testing.assert_array_equal(resumed.loss.values, first.loss.values)
    with pytest.raises(ValueError, match="other settings"):
        surface(a, data, dims=2, resolution=3, seed=5, out=out, **COMMON)


NORMS = """
import torch
from landscape.planes import plane_basis
from landscape.surface import _norm
from distill.models import build_model, seeded

nets = []
for s in range(3):
    with seeded(s):
        nets.append(build_model("mlp", (1, 4, 4), head="linear", num_classes=3, widths=[7] * 9).state_dict())
d = {k: nets[1][k].double() - nets[0][k].double() for k in nets[0]}
b = plane_basis(*nets, set(nets[0]))
print(repr(_norm(d, set(d))), repr(b["norm_u"]), repr(b["norm_v"]), repr(b["projection"]))
"""


def test_norms_over_parameter_names_do_not_depend_on_the_process_string_hash():
    """A set of names iterates in an order drawn per process (PYTHONHASHSEED); the sums over it must not
    follow that order, or the same surface differs in its last bit between a worker and this process."""
    import os
    import subprocess
    import sys

    def norms(hash_seed: str) -> list[float]:
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        r = subprocess.run([sys.executable, "-c", NORMS], capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 0, r.stderr
        return [float(x) for x in r.stdout.split()]

    runs = [norms(str(s)) for s in (1, 2, 3)]
    assert runs[0] == runs[1] == runs[2]
    # and the first is the plain sum in sorted name order, computed here
    nets = []
    for s in range(3):
        with seeded(s):
            nets.append(build_model("mlp", (1, 4, 4), head="linear", num_classes=3, widths=[7] * 9).state_dict())
    total = 0.0
    for k in sorted(nets[0]):
        total += float(((nets[1][k].double() - nets[0][k].double()) ** 2).sum())
    assert runs[0][0] == total**0.5 == runs[0][1]
