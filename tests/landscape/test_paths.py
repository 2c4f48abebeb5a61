"""Linear paths, BN policies, the two evaluators and barrier heights (tiny models, synthetic data)."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import xarray as xr
from torch import nn
from torch.optim.swa_utils import update_bn

from distill.bn import recalibrate_bn
from landscape.evaluate import stacked_state
from landscape.paths import barrier, interpolate_state, linear_path

BN_BATCHES, BN_BATCH_SIZE, BN_SEED = 3, 16, 5
EVAL_BATCH = 40
COMMON = dict(
    bn_batches=BN_BATCHES,
    bn_batch_size=BN_BATCH_SIZE,
    bn_seed=BN_SEED,
    eval_batch_size=EVAL_BATCH,
    device="cpu",
    channels_last=False,
)


@dataclass
class Split:
    images: torch.Tensor
    labels: torch.Tensor


@dataclass
class Data:
    train: Split
    test: Split
    mean: tuple
    std: tuple
    name: str = "synthetic"


def make_data(seed: int = 0) -> Data:
    g = torch.Generator().manual_seed(seed)

    def split(n: int) -> Split:
        return Split(
            torch.randint(0, 256, (n, 3, 8, 8), generator=g, dtype=torch.uint8), torch.randint(0, 4, (n,), generator=g)
        )

    return Data(split(96), split(64), (0.5, 0.45, 0.4), (0.25, 0.2, 0.3))


class SmallConvBN(nn.Module):
    def __init__(self, width: int = 8):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Linear(width, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 4))

    def forward(self, x):
        return self.head(self.features(x))


class SmallMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 16), nn.ReLU(), nn.Linear(16, 4))

    def forward(self, x):
        return self.net(x)


def make_model(kind: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = SmallConvBN() if kind == "bn" else SmallMLP()
    g = torch.Generator().manual_seed(seed + 100)
    for m in model.modules():  # non-trivial running statistics, different for a and b
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.num_batches_tracked.fill_(7 + seed)
    return model.eval()


def normalised(images: torch.Tensor, data: Data) -> torch.Tensor:
    mean = torch.tensor(data.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.std).view(1, -1, 1, 1)
    return (images.float() / 255 - mean) / std


def bn_batches(data: Data) -> list[torch.Tensor]:
    """The documented draw: randperm(N_train) seeded with bn_seed, first batches*size, consecutive."""
    idx = torch.randperm(len(data.train.labels), generator=torch.Generator().manual_seed(BN_SEED))
    idx = idx[: BN_BATCHES * BN_BATCH_SIZE]
    x = normalised(data.train.images[idx], data)
    return list(x.split(BN_BATCH_SIZE))


@torch.no_grad()
def plain_eval(model: nn.Module, split: Split, data: Data) -> tuple[float, float]:
    """Mean cross-entropy (nats) and error of ``model`` in eval mode, batch by batch."""
    model.eval()
    total, correct = 0.0, 0
    for s in range(0, len(split.labels), EVAL_BATCH):
        x = normalised(split.images[s : s + EVAL_BATCH], data)
        y = split.labels[s : s + EVAL_BATCH]
        logits = model(x)
        total += F.cross_entropy(logits.double(), y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
    n = len(split.labels)
    return total / n, 1 - correct / n


def with_state(model: nn.Module, state: dict) -> nn.Module:
    out = copy.deepcopy(model)
    out.load_state_dict(state)
    return out.eval()


@pytest.fixture(scope="module")
def data() -> Data:
    return make_data()


# ----------------------------------------------------------------------------- endpoints
@pytest.mark.parametrize("bn", ["reset", "interpolate", "keep_a"])
def test_endpoints_equal_own_evaluation_bn_net(data, bn):
    a, b = make_model("bn", 0), make_model("bn", 1)
    ds = linear_path(a, b, data, alphas=3, bn=bn, backend="loop", **COMMON)
    assert ds.attrs["bn_policy"] == bn
    if bn == "reset":
        ref_a = recalibrate_bn(copy.deepcopy(a), bn_batches(data))
        ref_b = recalibrate_bn(copy.deepcopy(b), bn_batches(data))
    elif bn == "interpolate":
        ref_a, ref_b = a, b
    else:  # keep_a: b's weights with a's running statistics
        ref_a = a
        state = b.state_dict()
        state.update({k: v for k, v in a.state_dict().items() if "running_" in k})
        ref_b = with_state(b, state)
    for split in ("train", "test"):
        for alpha, ref in ((0.0, ref_a), (1.0, ref_b)):
            loss, err = plain_eval(ref, getattr(data, split), data)
            point = ds.sel(alpha=alpha, split=split)
            assert float(point.error) == err
            assert float(point.loss) == pytest.approx(loss, rel=1e-12)


def test_endpoints_equal_own_evaluation_bn_free(data):
    a, b = make_model("mlp", 0), make_model("mlp", 1)
    for backend in ("loop", "vmap"):
        ds = linear_path(a, b, data, alphas=[0.0, 0.5, 1.0], backend=backend, **COMMON)
        assert ds.attrs["bn_policy"] == "none" and ds.attrs["bn_examples"] == 0
        for split in ("train", "test"):
            for alpha, ref in ((0.0, a), (1.0, b)):
                loss, err = plain_eval(ref, getattr(data, split), data)
                tol = 1e-12 if backend == "loop" else 1e-6
                assert float(ds.error.sel(alpha=alpha, split=split)) == err
                assert float(ds.loss.sel(alpha=alpha, split=split)) == pytest.approx(loss, rel=tol)


def test_inputs_are_not_modified(data):
    a, b = make_model("bn", 0), make_model("bn", 1)
    before = {k: v.clone() for k, v in a.state_dict().items()}
    linear_path(a, b, data, alphas=3, bn="reset", backend="vmap", **COMMON)
    linear_path(a, b, data, alphas=3, bn="reset", backend="loop", **COMMON)
    for k, v in a.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not a.training


# ----------------------------------------------------------------------------- self-path barrier
@pytest.mark.parametrize("kind,bn", [("bn", "reset"), ("bn", "keep_a"), ("mlp", "reset")])
def test_model_against_itself_has_zero_barrier(data, kind, bn):
    a = make_model(kind, 0)
    ds = linear_path(a, a, data, alphas=7, bn=bn, backend="loop", **COMMON)
    assert np.ptp(ds.error.values, axis=0).max() == 0
    h = barrier(ds)
    assert np.all(h.barrier_error.values == 0)
    assert np.all(np.abs(h.barrier_loss.values) < 1e-6)


# ----------------------------------------------------------------------------- BN reset = update_bn
def test_reset_equals_update_bn_at_interior_alpha(data):
    a, b = make_model("bn", 0), make_model("bn", 1)
    alpha = 0.3
    ref = with_state(a, interpolate_state(a.state_dict(), b.state_dict(), alpha))
    update_bn(bn_batches(data), ref)  # torch's own estimate on the same batches
    ref.eval()

    # batched estimate of the running statistics (vmap backend)
    sa, sb = a.state_dict(), b.state_dict()
    state = stacked_state(copy.deepcopy(a), sa, sb, [0.0, alpha, 1.0], "reset", bn_batches(data))
    ref_sd = ref.state_dict()
    names = [k for k in ref_sd if k.endswith(("running_mean", "running_var"))]
    assert len(names) == 6
    for k in names:
        torch.testing.assert_close(state[k][1], ref_sd[k], rtol=1e-5, atol=1e-5)
        assert not torch.allclose(state[k][1], interpolate_state(sa, sb, alpha)[k])  # reset did something

    # the path's numbers at that alpha, both backends
    for split in ("train", "test"):
        loss, err = plain_eval(ref, getattr(data, split), data)
        for backend in ("loop", "vmap"):
            ds = linear_path(a, b, data, alphas=[0.0, alpha, 1.0], bn="reset", backend=backend, **COMMON)
            assert float(ds.loss.sel(alpha=alpha, split=split)) == pytest.approx(loss, abs=1e-5)
            assert float(ds.error.sel(alpha=alpha, split=split)) == pytest.approx(err, abs=1e-5)


def test_reset_uses_the_same_batches_for_every_alpha(data):
    a, b = make_model("bn", 0), make_model("bn", 1)
    one = linear_path(a, b, data, alphas=[0.0, 0.4, 1.0], bn="reset", backend="loop", **COMMON)
    two = linear_path(a, b, data, alphas=[0.4], bn="reset", backend="loop", **COMMON)
    assert float(one.loss.sel(alpha=0.4, split="test")) == float(two.loss.sel(alpha=0.4, split="test"))
    other = linear_path(a, b, data, alphas=[0.4], bn="reset", backend="loop", **{**COMMON, "bn_seed": 6})
    assert float(other.loss.sel(alpha=0.4, split="test")) != float(two.loss.sel(alpha=0.4, split="test"))


# ----------------------------------------------------------------------------- loop vs vmap
@pytest.mark.parametrize("kind", ["bn", "mlp"])
@pytest.mark.parametrize("bn", ["reset", "interpolate", "keep_a"])
def test_vmap_agrees_with_loop(data, kind, bn):
    a, b = make_model(kind, 0), make_model(kind, 1)
    loop = linear_path(a, b, data, alphas=6, bn=bn, backend="loop", **COMMON)
    vm = linear_path(a, b, data, alphas=6, bn=bn, backend="vmap", alpha_chunk=4, **COMMON)
    assert loop.attrs["backend"] == "loop" and vm.attrs["backend"] == "vmap" and vm.attrs["alpha_chunk"] == 4
    np.testing.assert_allclose(vm.loss.values, loop.loss.values, rtol=0, atol=1e-5)
    np.testing.assert_allclose(vm.error.values, loop.error.values, rtol=0, atol=1e-5)
    assert np.ptp(loop.loss.values[:, 1]) > 1e-3  # the curve is not flat


def test_policies_differ_inside_the_path(data):
    a, b = make_model("bn", 0), make_model("bn", 1)
    curves = {
        bn: linear_path(a, b, data, alphas=3, bn=bn, backend="loop", **COMMON).loss.values[1]
        for bn in ("reset", "interpolate", "keep_a")
    }
    assert not np.allclose(curves["reset"], curves["interpolate"])
    assert not np.allclose(curves["interpolate"], curves["keep_a"])


# ----------------------------------------------------------------------------- helpers and errors
def test_interpolate_state_definition():
    a, b = make_model("bn", 0), make_model("bn", 1)
    sa, sb = a.state_dict(), b.state_dict()
    mid = interpolate_state(sa, sb, 0.25)
    for k in sa:
        if sa[k].is_floating_point():
            expected = sa[k].double() * 0.75 + sb[k].double() * 0.25
            torch.testing.assert_close(mid[k].double(), expected, rtol=1e-6, atol=1e-7)
        else:
            assert torch.equal(mid[k], sa[k]) and mid[k].dtype == sa[k].dtype
    for k in sa:
        assert torch.equal(interpolate_state(sa, sb, 0.0)[k], sa[k])
        if sa[k].is_floating_point():
            assert torch.equal(interpolate_state(sa, sb, 1.0)[k], sb[k])


def test_mismatched_architectures_name_the_first_differing_key(data):
    a, b = SmallConvBN(width=8), SmallConvBN(width=6)
    with pytest.raises(ValueError, match=r"'features\.0\.weight'.*\(8, 3, 3, 3\).*\(6, 3, 3, 3\)"):
        linear_path(a, b, data, alphas=3, **COMMON)
    with pytest.raises(ValueError, match=r"'features\.0\.weight'"):
        interpolate_state(a.state_dict(), b.state_dict(), 0.5)
    extra = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 16), nn.ReLU(), nn.Linear(16, 4), nn.Linear(4, 4))
    with pytest.raises(ValueError, match=r"'4\.weight'"):
        interpolate_state(nn.Sequential(*list(extra)[:4]).state_dict(), extra.state_dict(), 0.5)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(bn="batch"),
        dict(backend="jit"),
        dict(alphas=1),
        dict(alphas=[0.0, 0.5, 0.5]),
        dict(splits=("val",)),
        dict(bn_batches=0),
    ],
)
def test_bad_arguments_raise_value_error(data, kwargs):
    a = make_model("mlp", 0)
    with pytest.raises(ValueError):
        linear_path(a, a, data, **{**COMMON, **kwargs})


def test_output_layout_and_attrs(data):
    a, b = make_model("bn", 0), make_model("bn", 1)
    ds = linear_path(a, b, data, alphas=5, splits="test", max_examples=20, **COMMON)
    assert type(ds) is xr.Dataset and ds.loss.dims == ("alpha", "split")
    np.testing.assert_array_equal(ds.alpha.values, np.linspace(0, 1, 5))
    assert list(ds.split.values) == ["test"]
    assert ds.loss.attrs == {"long_name": "cross-entropy loss", "units": "nats"}
    assert ds.error.attrs == {"long_name": "classification error", "units": "fraction"}
    assert ds.attrs["examples_test"] == 20 and ds.attrs["bn_examples"] == BN_BATCHES * BN_BATCH_SIZE
    assert ds.attrs["a_source"] == "module" and ds.attrs["b_source"] == "module"
    assert ds.attrs["precision"] == "fp32" and ds.attrs["n_alphas"] == 5 and ds.attrs["backend"] == "loop"
    for key in ("toolkit_version", "torch_version", "device", "bn_seed", "bn_batch_size", "bn_batches"):
        assert key in ds.attrs
    assert all(type(v) in (str, int, float) for v in ds.attrs.values())  # exact types: netCDF-safe
    assert ((ds.error >= 0) & (ds.error <= 1)).all()


def test_store_references_are_resolved(data, tmp_path):
    from distill import models
    from distill.store import Store

    a = models.build_model("mlp", (3, 8, 8), num_classes=4, head="linear")
    b = models.build_model("mlp", (3, 8, 8), num_classes=4, head="linear")
    store = Store.create(tmp_path / "run.h5", {"seed": 0})
    store.save_module("left", a)
    store.save_module("right", b)
    ds = linear_path((store, "left"), (str(store.path), "right"), data, alphas=3, **COMMON)
    direct = linear_path(a, b, data, alphas=3, **COMMON)
    np.testing.assert_allclose(ds.loss.values, direct.loss.values, rtol=1e-6)
    assert ds.attrs["a_source"].endswith("#name=left") and ds.attrs["a_name"] == "left"
    assert ds.attrs["b_store"] == str(store.path)


# ----------------------------------------------------------------------------- barrier
def test_barrier_of_a_known_curve():
    alpha = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
    error = np.array(
        [  # (pair, alpha, split)
            [[0.10, 0.20], [0.30, 0.25], [0.40, 0.50], [0.20, 0.30], [0.20, 0.30]],
            [[0.05, 0.05], [0.05, 0.05], [0.05, 0.05], [0.05, 0.05], [0.05, 0.05]],
        ]
    )
    loss = np.array(
        [
            [[1.0, 2.0], [1.5, 2.0], [2.5, 2.0], [2.0, 2.0], [2.0, 2.0]],
            [[3.0, 1.0], [2.0, 0.5], [1.0, 0.25], [0.5, 0.2], [1.0, 0.0]],
        ]
    )
    ds = xr.Dataset(
        {
            "error": (("pair", "alpha", "split"), error, {"units": "fraction"}),
            "loss": (("pair", "alpha", "split"), loss, {"units": "nats"}),
        },
        coords={"alpha": alpha, "split": ["train", "test"], "pair": [0, 1]},
        attrs={"bn_policy": "reset", "a_source": "x.h5#epoch=3"},
    )
    h = barrier(ds)
    # pair 0, train: max err 0.40 - (0.10 + 0.20)/2 = 0.25; test: 0.50 - (0.20 + 0.30)/2 = 0.25
    # pair 1: flat curve -> 0
    np.testing.assert_allclose(h.barrier_error.sel(pair=0).values, [0.25, 0.25])
    np.testing.assert_allclose(h.barrier_error.sel(pair=1).values, [0.0, 0.0], atol=1e-15)
    # pair 0 train: chord 1 + alpha -> [1, 1.25, 1.5, 1.75, 2]; excess [0, .25, 1, .25, 0] -> 1.0
    # pair 0 test: flat at 2 -> 0
    # pair 1 train: chord 3 - 2 alpha -> [3, 2.5, 2, 1.5, 1]; excess [0, -.5, -1, -1, 0] -> 0
    # pair 1 test: chord 1 - alpha -> [1, .75, .5, .25, 0]; excess [0, -.25, -.25, -.05, 0] -> 0
    np.testing.assert_allclose(h.barrier_loss.sel(pair=0).values, [1.0, 0.0], atol=1e-15)
    np.testing.assert_allclose(h.barrier_loss.sel(pair=1).values, [0.0, 0.0], atol=1e-15)
    assert h.barrier_error.dims == ("pair", "split") and "alpha" not in h.coords
    assert h.barrier_error.attrs["units"] == "fraction" and h.barrier_loss.attrs["units"] == "nats"
    assert "long_name" in h.barrier_error.attrs and "long_name" in h.barrier_loss.attrs
    assert h.attrs["a_source"] == "x.h5#epoch=3" and h.attrs["bn_policy"] == "reset"
    assert "err(0) + err(1)" in h.attrs["barrier_error_definition"]
    assert "(1 - alpha) * L(0) + alpha * L(1)" in h.attrs["barrier_loss_definition"]


def test_barrier_says_which_split_each_value_is_for():
    # the splits in the path's order (test first here), each curve with a different barrier
    error = np.array([[0.1, 0.3], [0.6, 0.3], [0.1, 0.3]])  # (alpha, split): test 0.5, train 0.0
    ds = xr.Dataset(
        {"error": (("alpha", "split"), error)}, coords={"alpha": [0.0, 0.5, 1.0], "split": ["test", "train"]}
    )
    h = barrier(ds)
    assert list(h.barrier_error.split.values) == ["test", "train"]
    series = h.barrier_error.to_series()
    assert series.index.name == "split" and series.to_dict() == pytest.approx({"test": 0.5, "train": 0.0})
    assert float(h.barrier_error.sel(split="test")) == pytest.approx(0.5)


def test_barrier_needs_both_ends():
    ds = xr.Dataset({"error": (("alpha",), [0.1, 0.2])}, coords={"alpha": [0.0, 0.5]})
    with pytest.raises(ValueError, match="alpha=1"):
        barrier(ds)


# ----------------------------------------------------------------------------- netCDF
def test_netcdf_round_trip(data, tmp_path):
    a, b = make_model("bn", 0), make_model("bn", 1)
    ds = linear_path(a, b, data, alphas=4, bn="reset", backend="vmap", **COMMON)
    for name, obj in (("path.nc", ds), ("barrier.nc", barrier(ds))):
        obj.to_netcdf(tmp_path / name, engine="h5netcdf")
        back = xr.open_dataset(tmp_path / name, engine="h5netcdf").load()
        assert back.identical(obj), name


def test_default_memory_format_matches_contiguous(data):
    a, b = make_model("bn", 0), make_model("bn", 1)
    common = {k: v for k, v in COMMON.items() if k != "channels_last"}
    auto = linear_path(a, b, data, alphas=4, bn="reset", backend="loop", **common)
    plain = linear_path(a, b, data, alphas=4, bn="reset", backend="loop", channels_last=False, **common)
    assert auto.attrs["memory_format"] == "channels_last" and plain.attrs["memory_format"] == "contiguous"
    np.testing.assert_allclose(auto.loss.values, plain.loss.values, rtol=0, atol=1e-5)
    np.testing.assert_allclose(auto.error.values, plain.error.values, rtol=0, atol=1e-5)
