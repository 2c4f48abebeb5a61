from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
import xarray as xr

from distill.init import fresh_like
from distill.store import Store
from landscape.locality import locality
from tests.distill.test_train import synthetic, tiny_cfg


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("loc")
    cfg = tiny_cfg(epochs=1, save_every=1, probes=["knn"])
    ds = locality(cfg, alphas=[0.0, 0.5, 1.0], seeds=[0], out_dir=out, data=synthetic(), progress=False)
    return cfg, ds


def test_schema(sweep):
    _, ds = sweep
    assert type(ds) is xr.Dataset
    assert dict(ds.accuracy.sizes) == {"alpha": 3, "seed": 1, "epoch": 2, "model": 4, "probe": 1}
    assert ds.final_kl.dims == ("alpha", "seed") and ds.distance_teacher.dims == ("alpha", "seed", "epoch")
    for v in ds.data_vars.values():
        assert v.attrs["long_name"] and v.attrs["units"]
    assert all(isinstance(v, (str, int, float)) for v in ds.attrs.values())


def test_endpoints(sweep):
    cfg, ds = sweep
    s0 = Store(str(ds.store.sel(alpha=0.0, seed=0).item()))
    teacher, student = s0.teacher().state_dict(), s0.student(0).state_dict()
    assert all(torch.equal(teacher[k], student[k]) for k in teacher)
    assert float(ds.distance_teacher_init.sel(alpha=0.0, seed=0)) == 0.0
    s1 = Store(str(ds.store.sel(alpha=1.0, seed=0).item()))
    fresh = dict(fresh_like(s1.teacher(), cfg.noise_seed).named_parameters())
    for k, p in s1.student(0).named_parameters():
        assert torch.equal(p, fresh[k]), k
    # distance from the teacher at init grows with alpha
    d = ds.distance_teacher_init.sel(seed=0).values
    assert d[0] < d[1] < d[2]


def test_executor_gives_the_same_numbers(sweep, tmp_path):
    cfg, ds = sweep
    with ThreadPoolExecutor(max_workers=2) as ex:
        par = locality(
            cfg, alphas=[0.0, 0.5, 1.0], seeds=[0], out_dir=tmp_path, executor=ex, data=synthetic(), progress=False
        )
    np.testing.assert_array_equal(par.accuracy.values, ds.accuracy.values)
    np.testing.assert_array_equal(par.final_kl.values, ds.final_kl.values)


def test_netcdf_round_trip(sweep, tmp_path):
    _, ds = sweep
    ds.to_netcdf(tmp_path / "loc.nc", engine="h5netcdf")
    with xr.open_dataset(tmp_path / "loc.nc", engine="h5netcdf") as back:
        assert back.load().identical(ds)


def test_bad_arguments():
    with pytest.raises(ValueError, match="exactly one"):
        locality(tiny_cfg(), alphas=[0.1], eps=[0.1])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        locality(tiny_cfg(), alphas=[1.5])


def test_cli_rejects_out_of_range_alpha(tmp_path, capsys):
    from landscape.cli import main as rtt

    code = rtt(["locality", "--alphas", "0,1.5", "--out", str(tmp_path / "l.nc"), "--runs", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1 and "[0, 1]" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "l.nc").exists()
