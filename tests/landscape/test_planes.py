"""Planes through three checkpoints: basis, coordinates, agreement with linear paths and a plain evaluation."""

from __future__ import annotations

import copy
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import xarray as xr

from distill.data import Dataset, Split, normalize
from distill.models import build_model
from distill.store import Store
from landscape.cli import main as rtt
from landscape.paths import linear_path
from landscape.planes import plane, plane_basis

SHAPE = (1, 10, 10)
EVAL = dict(bn_batches=2, bn_batch_size=24, eval_batch_size=50, device="cpu", channels_last=False)


def synthetic(seed: int = 0) -> Dataset:
    g = torch.Generator().manual_seed(seed)

    def split(n: int) -> Split:
        return Split(torch.randint(0, 256, (n, *SHAPE), generator=g, dtype=torch.uint8), torch.arange(n) % 4)

    return Dataset("synthetic", split(72), split(60), list("abcd"), (0.5,), (0.3,))


def model(seed: int, bn: bool = True):
    torch.manual_seed(seed)
    m = build_model("convnet", SHAPE, head="linear", num_classes=4, width=6, depth=2, bn=bn)
    g = torch.Generator().manual_seed(seed + 50)
    for mod in m.modules():  # non-trivial BN statistics and scales, different for each model
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.copy_(torch.randn(mod.num_features, generator=g) * 0.2)
            mod.running_var.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
            mod.weight.data.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
    return m


def flat(m) -> torch.Tensor:
    return torch.cat([p.detach().double().flatten() for p in m.parameters()])


@pytest.fixture(scope="module")
def data() -> Dataset:
    return synthetic()


@pytest.fixture(scope="module")
def abc():
    return model(0), model(1), model(2)


def test_basis_is_orthogonal_and_reconstructs_c(abc):
    a, b, c = abc
    sa, sb, sc = (m.state_dict() for m in abc)
    basis = plane_basis(sa, sb, sc, {k for k, _ in a.named_parameters()})
    keys = [k for k, _ in a.named_parameters()]
    u = torch.cat([basis["u"][k].flatten() for k in keys])
    v = torch.cat([basis["v"][k].flatten() for k in keys])
    assert abs(float(u @ v)) <= 1e-10 * float(u.norm() * v.norm())
    fa, fb, fc = flat(a), flat(b), flat(c)
    torch.testing.assert_close(fa + basis["projection"] * u + v, fc, rtol=0, atol=1e-12)
    assert basis["norm_u"] == pytest.approx(float((fb - fa).norm()), rel=1e-12)


def test_coordinates_of_the_three_points(abc, data):
    a, b, c = abc
    ds = plane(a, b, c, data, resolution=3, bn="keep_a", **EVAL)
    fa, fb, fc = flat(a).numpy(), flat(b).numpy(), flat(c).numpy()
    u, w = fb - fa, fc - fa
    proj = w @ u / (u @ u)  # independent Gram-Schmidt on the flattened parameters
    v = w - proj * u
    assert ds.attrs["norm_u"] == pytest.approx(np.linalg.norm(u), rel=1e-10)
    assert ds.attrs["norm_v"] == pytest.approx(np.linalg.norm(v), rel=1e-10)
    assert list(ds.point.values) == ["a", "b", "c"]
    np.testing.assert_allclose(ds.point_x.values, [0.0, 1.0, proj], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ds.point_y.values, [0.0, 0.0, np.linalg.norm(v) / np.linalg.norm(u)], rtol=1e-10)
    # default span: the three points plus a margin of 0.5 on every side
    assert float(ds.x[0]) == pytest.approx(min(0, proj) - 0.5) and float(ds.x[-1]) == pytest.approx(max(1, proj) + 0.5)
    assert float(ds.y[0]) == pytest.approx(-0.5) and float(ds.y[-1]) == pytest.approx(ds.point_y.values[2] + 0.5)


@pytest.mark.parametrize("bn", ["reset", "interpolate"])
def test_grid_points_on_the_a_b_line_equal_the_linear_path(abc, data, bn):
    a, b, c = abc
    before = [copy.deepcopy(m.state_dict()) for m in abc]
    ds = plane(a, b, c, data, resolution=5, span=(-0.5, 1.5), bn=bn, split="test", **EVAL)
    assert ds.loss.dims == ("x", "y") and ds.sizes == {"x": 5, "y": 5, "point": 3}
    np.testing.assert_array_equal(ds.x.values, [-0.5, 0.0, 0.5, 1.0, 1.5])
    path = linear_path(a, b, data, alphas=[0.0, 0.5, 1.0], bn=bn, splits=("test",), **EVAL)
    on_line = ds.sel(x=[0.0, 0.5, 1.0], y=0.0)
    np.testing.assert_allclose(on_line.loss.values, path.loss.sel(split="test").values, rtol=1e-6)
    np.testing.assert_allclose(on_line.error.values, path.error.sel(split="test").values, atol=1e-12)
    assert ds.attrs["bn_policy"] == bn
    for m, sd in zip(abc, before):  # inputs untouched
        assert all(torch.equal(sd[k], v) for k, v in m.state_dict().items())


@pytest.mark.parametrize("bn", ["reset", "keep_a"])
def test_vmap_backend_agrees_with_the_loop(abc, data, bn):
    kw = dict(resolution=3, span=(-0.5, 1.5), bn=bn, **EVAL)
    loop = plane(*abc, data, backend="loop", **kw)
    vmapped = plane(*abc, data, backend="vmap", **kw)
    assert vmapped.attrs["backend"] == "vmap"
    np.testing.assert_allclose(vmapped.loss.values, loop.loss.values, rtol=1e-5)
    np.testing.assert_allclose(vmapped.error.values, loop.error.values, atol=1.5 / 60)  # one example at most


def test_off_axis_point_equals_a_plain_evaluation(data):
    a, b, c = model(3, bn=False), model(4, bn=False), model(5, bn=False)
    ds = plane(a, b, c, data, resolution=3, span=((0.0, 2.0), (0.0, 1.0)), bn="reset", **EVAL)
    assert ds.attrs["bn_policy"] == "none"
    fa = flat(a)
    u, w = flat(b) - fa, flat(c) - fa
    v = w - (w @ u) / (u @ u) * u
    point = fa + 2.0 * u + 1.0 * (u.norm() / v.norm()) * v  # (x, y) = (2, 1) in units of |u|
    probe = copy.deepcopy(a)
    torch.nn.utils.vector_to_parameters(point.float(), probe.parameters())
    probe.eval()
    with torch.no_grad():
        logits = probe(normalize(data.test.images, data.mean, data.std))
    loss = F.cross_entropy(logits.double(), data.test.labels).item()
    err = 1 - (logits.argmax(1) == data.test.labels).double().mean().item()
    assert float(ds.loss.sel(x=2.0, y=1.0)) == pytest.approx(loss, rel=1e-5)
    assert float(ds.error.sel(x=2.0, y=1.0)) == pytest.approx(err, abs=1e-12)


def test_degenerate_planes_are_refused(abc, data):
    a, b, _ = abc
    with pytest.raises(ValueError, match="identical parameters"):
        plane(a, a, b, data, resolution=2, **EVAL)
    mid = copy.deepcopy(a)
    torch.nn.utils.vector_to_parameters(((flat(a) + flat(b)) / 2).float(), mid.parameters())
    with pytest.raises(ValueError, match="on the line"):
        plane(a, b, mid, data, resolution=2, **EVAL)
    with pytest.raises(ValueError, match="resolution"):
        plane(*abc, data, resolution=1, **EVAL)
    with pytest.raises(ValueError, match="span"):
        plane(*abc, data, resolution=2, span=(1.0, 1.0), **EVAL)


def test_netcdf_round_trip(abc, data, tmp_path):
    ds = plane(*abc, data, resolution=2, max_examples=20, **EVAL)
    assert ds.attrs["examples"] == 20
    assert all(isinstance(v, (str, int, float, np.integer, np.floating)) for v in ds.attrs.values())
    ds.to_netcdf(tmp_path / "plane.nc", engine="h5netcdf")
    with xr.open_dataset(tmp_path / "plane.nc", engine="h5netcdf") as back:
        assert back.load().identical(ds)


def write_idx(path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())  # uncompressed this time


def test_rtt_plane_and_plot(tmp_path, capsys):
    g = np.random.default_rng(1)
    for stem, n in (("train", 40), ("t10k", 30)):
        write_idx(tmp_path / f"{stem}-images-idx3-ubyte", g.integers(0, 256, (n, 10, 10)))
        write_idx(tmp_path / f"{stem}-labels-idx1-ubyte", np.arange(n) % 10)
    store = Store.create(tmp_path / "run.h5", {"dataset": "mnist", "data_root": str(tmp_path)})
    for i in range(3):
        torch.manual_seed(i)
        store.save_module(f"m{i}", build_model("convnet", SHAPE, head="linear", num_classes=10, width=4, depth=1))
    out = tmp_path / "plane.nc"
    refs = [f"{store.path}:m{i}" for i in range(3)]
    assert rtt(["plane", *refs, "--resolution", "3", "--device", "cpu", "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    with xr.open_dataset(out, engine="h5netcdf") as ds:
        assert ds.error.dims == ("x", "y") and ds.attrs["c_name"] == "m2"
        seq = ds.load()
    # the rows on two threads (each on its own copy of the model): the same grid
    threaded = tmp_path / "threads.nc"
    args = ["plane", *refs, "--resolution", "3", "--device", "cpu", "--out", str(threaded)]
    assert rtt([*args, "--executor", "thread:2"]) == 0
    with xr.open_dataset(threaded, engine="h5netcdf") as ds:
        np.testing.assert_allclose(ds.loss.values, seq.loss.values, rtol=1e-6)
        np.testing.assert_array_equal(ds.error.values, seq.error.values)
    assert rtt([*args, "--executor", "mpi:2"]) == 1
    err = capsys.readouterr().err
    assert "unknown kind 'mpi'" in err and len(err.strip().splitlines()) == 1
    assert rtt(["plot", str(out), "--var", "loss"]) == 0
    assert out.with_suffix(".png").stat().st_size > 0
    assert rtt(["plot", str(out), "--var", "nope"]) == 1
    assert "no variable 'nope'" in capsys.readouterr().err
