"""``rtt align``, ``rtt surface`` and ``rtt hessian`` on a store of two tiny Fashion-MNIST classifiers."""

from __future__ import annotations

import pytest
import xarray as xr

from distill.models import build_model, seeded
from distill.store import Store
from landscape.cli import main as rtt


@pytest.fixture(scope="module")
def classifiers(tmp_path_factory, fmnist_root):
    path = tmp_path_factory.mktemp("geo") / "pair.h5"
    store = Store.create(
        path, {"dataset": "fashion-mnist", "data_root": str(fmnist_root), "subset": 200}, kind="children"
    )
    for i in range(2):
        with seeded(i):
            store.save_module(
                f"net/{i}", build_model("mlp", (1, 28, 28), head="linear", num_classes=10, widths=[16]), {"epoch": 0}
            )
    return path


def test_align_surface_hessian_commands(classifiers, tmp_path, capsys):
    a, b = f"{classifiers}:net/0", f"{classifiers}:net/1"
    common = ["--max-examples", "100", "--device", "cpu"]
    assert rtt(["align", a, b, "--alphas", "3", "--out", str(tmp_path / "al.nc"), *common]) == 0
    with xr.open_dataset(tmp_path / "al.nc", engine="h5netcdf") as ds:
        assert list(ds.alignment.values) == ["none", "weights"]
        assert ds.attrs["align"] == "weights" and ds.barrier_error.dims == ("alignment", "split")
    assert rtt(["surface", a, "--dims", "1", "--resolution", "3", "--out", str(tmp_path / "s.nc"), *common]) == 0
    with xr.open_dataset(tmp_path / "s.nc", engine="h5netcdf") as ds:
        assert ds.loss.dims == ("x",) and int(ds.done) == 1
    assert (
        rtt(
            [
                "hessian",
                a,
                "--k",
                "2",
                "--batches",
                "1",
                "--batch-size",
                "32",
                "--trace-probes",
                "6",
                "--out",
                str(tmp_path / "h.nc"),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    with xr.open_dataset(tmp_path / "h.nc", engine="h5netcdf") as ds:
        assert ds.eigenvalue.shape == (2,) and ds.attrs["batches"] == 1 and ds.attrs["examples"] == 32
    capsys.readouterr()
    assert rtt(["surface", a, "--span", "1", "--out", str(tmp_path / "bad.nc"), *common]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--span" in err[0]
