"""Instability: children of one start, barriers between them, resuming from a store; rtt lmc / instability / plot."""

from __future__ import annotations

import copy
import gzip
import importlib
import json
import struct

import numpy as np
import pytest
import torch
import xarray as xr

from distill.config import SupervisedConfig
from distill.data import Dataset, Split
from distill.models import build_model
from distill.store import Store
from distill.supervised import evaluate, train_supervised, with_classifier
from landscape.cli import main as rtt

inst = importlib.import_module("landscape.instability")  # the module: landscape.instability is the function

SHAPE = (1, 12, 12)
PATH = dict(bn_batches=2, bn_batch_size=32, eval_batch_size=64)


def synthetic(n_train: int = 96, n_test: int = 48, classes: int = 4, seed: int = 0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    protos = torch.randint(0, 256, (classes, *SHAPE), generator=g)

    def split(n: int) -> Split:
        y = torch.arange(n) % classes
        noise = torch.randint(-60, 61, (n, *SHAPE), generator=g)
        return Split((protos[y] + noise).clamp(0, 255).to(torch.uint8), y)

    return Dataset("synthetic", split(n_train), split(n_test), [str(i) for i in range(classes)], (0.5,), (0.3,))


def dino_start(seed: int = 0):
    torch.manual_seed(seed)
    return build_model("convnet", SHAPE, head="dino", width=8, depth=2, out_dim=16, hidden_dim=16, bottleneck_dim=8)


CFG = SupervisedConfig(epochs=1, milestones=[], lr=0.05, batch_size=32, device="cpu")


@pytest.fixture(scope="module")
def data() -> Dataset:
    return synthetic()


@pytest.fixture(scope="module")
def three(data, tmp_path_factory):
    """Three children of a DINO-headed start, written to a store (trained once for the module)."""
    start = dino_start()
    before = copy.deepcopy(start.state_dict())
    path = tmp_path_factory.mktemp("inst") / "children.h5"
    ds = inst.instability(
        start, data, children=3, cfg=CFG, store=path, alphas=5, device="cpu", head_seed=2, path_options=PATH
    )
    return start, before, path, ds


def test_layout_coords_and_attrs(three):
    start, before, path, ds = three
    assert type(ds) is xr.Dataset
    assert ds.loss.dims == ("pair", "alpha", "split") and ds.error.dims == ("pair", "alpha", "split")
    assert list(ds.pair.values) == ["0-1", "0-2", "1-2"]
    assert list(ds.child_i.values) == [0, 0, 1] and list(ds.child_j.values) == [1, 2, 2]
    assert list(ds.split.values) == ["test"] and ds.sizes["alpha"] == 5
    assert ds.barrier_error.dims == ("pair", "split") and ds.barrier_loss.dims == ("pair", "split")
    assert ds.child_test_accuracy.dims == ("child",) and list(ds.child_seed.values) == [0, 1, 2]
    for name in ("loss", "error", "barrier_error", "barrier_loss", "child_test_accuracy"):
        assert {"long_name", "units"} <= set(ds[name].attrs)
    for key in ("start_source", "config", "bn_policy", "barrier_error_definition", "barrier_loss_definition", "seeds"):
        assert key in ds.attrs
    assert all(isinstance(v, (str, int, float, np.integer, np.floating)) for v in ds.attrs.values())
    assert SupervisedConfig(**json.loads(ds.attrs["config"])) == CFG
    assert all(torch.equal(before[k], v) for k, v in start.state_dict().items())  # the start is untouched


def test_barriers_match_the_curves_and_children_come_from_the_shared_start(three, data):
    start, _, path, ds = three
    err = ds.error.values
    expected = err.max(axis=1) - (err[:, 0] + err[:, -1]) / 2
    np.testing.assert_allclose(ds.barrier_error.values, expected)
    assert (ds.barrier_error.values >= 0).all()
    store = Store(path)
    assert store.names() == ["children/0", "children/1", "children/2", "start"]
    # child 1 is exactly: the start with the shared fresh classifier, trained with seed 1
    ref = with_classifier(start, 4, seed=2)
    train_supervised(ref, data, CFG.replace(data_seed=1, aug_seed=1))
    child = store.load_module("children/1")
    assert all(torch.equal(v, child.state_dict()[k]) for k, v in ref.state_dict().items())
    assert not torch.equal(child.head.weight, store.load_module("children/0").head.weight)
    assert float(ds.child_test_accuracy.sel(child=1)) == pytest.approx(evaluate(child, data)[1])
    assert Store(path).read_result("instability").identical(ds)


def test_rerun_on_the_same_store_trains_nothing(three, data, monkeypatch):
    start, _, path, ds = three
    calls = []
    monkeypatch.setattr(inst, "train_supervised", lambda *a, **k: calls.append(1))
    again = inst.instability(
        start, data, children=3, cfg=CFG, store=path, alphas=5, device="cpu", head_seed=2, path_options=PATH
    )
    assert calls == []
    xr.testing.assert_identical(again.drop_attrs(), ds.drop_attrs())
    assert {k: v for k, v in again.attrs.items() if k != "started_at"} == {
        k: v for k, v in ds.attrs.items() if k != "started_at"
    }
    with pytest.raises(ValueError, match="another recipe"):
        inst.instability(
            start,
            data,
            children=2,
            cfg=CFG.replace(lr=0.01),
            store=path,
            alphas=5,
            device="cpu",
            head_seed=2,
            path_options=PATH,
        )
    with pytest.raises(ValueError, match="another start"):
        inst.instability(
            dino_start(5), data, children=2, cfg=CFG, store=path, alphas=5, device="cpu", head_seed=2, path_options=PATH
        )


def test_children_with_the_same_seed_have_no_barrier(data):
    torch.manual_seed(3)
    start = build_model("convnet", SHAPE, head="linear", num_classes=4, width=8, depth=2)
    ds = inst.instability(
        start, data, seeds=[7, 7], cfg=CFG, alphas=5, device="cpu", splits=("train", "test"), path_options=PATH
    )
    assert ds.attrs["head"] == "the start's own linear classifier"
    np.testing.assert_array_equal(ds.barrier_error.values, 0.0)
    np.testing.assert_allclose(ds.barrier_loss.values, 0.0, atol=1e-5)
    assert float(ds.child_test_accuracy[0]) == float(ds.child_test_accuracy[1])


def test_netcdf_round_trip(three, tmp_path):
    ds = three[3]
    ds.to_netcdf(tmp_path / "inst.nc", engine="h5netcdf")
    with xr.open_dataset(tmp_path / "inst.nc", engine="h5netcdf") as back:
        assert back.load().identical(ds)


def test_bad_arguments(data):
    with pytest.raises(ValueError, match="at least 2"):
        inst.instability(dino_start(), data, children=1, cfg=CFG)
    with pytest.raises(ValueError, match="at least 2 seeds"):
        inst.instability(dino_start(), data, seeds=[0], cfg=CFG)


# ----------------------------------------------------------------------------- CLI
def write_idx(path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def mnist_store(tmp_path_factory, data):
    """A store with two classifiers and a config naming an MNIST-format dataset on disk."""
    root = tmp_path_factory.mktemp("mnist")
    g = np.random.default_rng(0)
    for stem, n in (("train", 64), ("t10k", 40)):
        labels = np.arange(n) % 10
        images = (labels[:, None, None] * 20 + g.integers(0, 40, (n, 12, 12))).clip(0, 255)
        write_idx(root / f"{stem}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{stem}-labels-idx1-ubyte.gz", labels)
    store = Store.create(root / "run.h5", {"dataset": "mnist", "data_root": str(root)})
    for i, name in enumerate(("teacher", "student/00003")):
        torch.manual_seed(i)
        store.save_module(name, build_model("convnet", SHAPE, head="linear", num_classes=10, width=8, depth=2))
    return store


def test_rtt_lmc_writes_a_netcdf_file_and_rtt_plot_draws_it(mnist_store, tmp_path, capsys):
    out = tmp_path / "lmc.nc"
    code = rtt(
        [
            "lmc",
            f"{mnist_store.path}:teacher",
            f"{mnist_store.path}:3",
            "--alphas",
            "5",
            "--device",
            "cpu",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "barrier_error" in printed and f"wrote {out}" in printed
    with xr.open_dataset(out, engine="h5netcdf") as ds:
        assert ds.error.dims == ("alpha", "split") and "barrier_error" in ds
        assert ds.attrs["a_source"].endswith("#name=teacher") and ds.attrs["b_source"].endswith("#epoch=3")
    assert rtt(["plot", str(out), "--out", str(tmp_path / "lmc.png")]) == 0
    assert (tmp_path / "lmc.png").stat().st_size > 0


def test_rtt_instability_trains_children_from_a_store(mnist_store, tmp_path, capsys):
    out = tmp_path / "inst.nc"
    code = rtt(
        [
            "instability",
            str(mnist_store.path),
            "--module",
            "teacher",
            "--preset",
            "tiny",
            "--sup-epochs",
            "1",
            "--sup-batch-size",
            "32",
            "--children-store",
            str(tmp_path / "kids.h5"),
            "--alphas",
            "3",
            "--device",
            "cpu",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    assert "children test accuracy" in capsys.readouterr().out
    with xr.open_dataset(out, engine="h5netcdf") as ds:
        assert list(ds.pair.values) == ["0-1"]
        cfg = json.loads(ds.attrs["config"])
        assert cfg["epochs"] == 1 and cfg["batch_size"] == 32 and cfg["milestones"] == [1]  # tiny preset kept
    assert Store(tmp_path / "kids.h5").names("children/") == ["children/0", "children/1"]


def test_cli_errors_are_one_line(mnist_store, tmp_path, capsys):
    assert rtt(["lmc", str(tmp_path / "missing.h5:1"), str(tmp_path / "missing.h5:2")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("rtt lmc: error:") and "missing.h5" in err and "\n" not in err
    assert rtt(["lmc", "no-colon", "b"]) == 1
    assert "STORE:EPOCH" in capsys.readouterr().err
    assert rtt(["lmc", f"{mnist_store.path}:teacher", f"{mnist_store.path}:7", "--device", "cpu"]) == 1
    assert "epoch 7" in capsys.readouterr().err
    assert rtt(["plot", str(tmp_path / "none.nc")]) == 1
    assert "no result file" in capsys.readouterr().err
