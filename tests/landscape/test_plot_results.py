"""``rtt plot`` draws every result file of the checkout (results/*.nc), and lays each variable out
with every dimension in one role: no dimension is cut to its first value."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import pytest
import xarray as xr

from landscape.cli import main as rtt
from landscape.plotting import axis_label, describe, layout

RESULTS = sorted((Path(__file__).resolve().parents[2] / "results").glob("*.nc"))


def _open(path: Path) -> xr.Dataset:
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        return ds.load()


def test_the_checkout_has_result_files():
    assert len(RESULTS) >= 10


@pytest.mark.parametrize("path", RESULTS, ids=[p.stem for p in RESULTS])
def test_rtt_plot_draws_every_result_file(path, tmp_path, capsys):
    out = tmp_path / f"{path.stem}.png"
    assert rtt(["plot", str(path), "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    image = matplotlib.image.imread(out)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 300


@pytest.mark.parametrize("path", RESULTS, ids=[p.stem for p in RESULTS])
def test_every_variable_has_a_layout_and_a_label(path):
    ds = _open(path)
    for name, da in ds.data_vars.items():
        if da.dtype.kind not in "fiu":
            continue
        plan = layout(da)
        roles = [plan.x, plan.y, plan.hue, *plan.facets, *plan.averaged]
        roles = [r for r in roles if r is not None]
        assert sorted(roles) == sorted(map(str, da.dims)), f"{path.stem}:{name} {plan}"
        if plan.kind == "lines":  # lines join numeric values only; categories are bars
            assert plan.x not in da.coords or da[plan.x].dtype.kind in "fiu", f"{path.stem}:{name} {plan}"
        long_name, units = describe(da)
        assert long_name and long_name != name and long_name != name.replace("_", " "), f"{path.stem}:{name}"
        assert "[1]" not in axis_label(da)


def test_the_layouts_of_the_misleading_cases():
    loc = layout(_open(RESULTS[0].parent / "locality.nc").accuracy)
    assert (loc.kind, loc.x, loc.hue, sorted(loc.facets), loc.averaged) == (
        "lines",
        "alpha",
        "model",
        ["net", "probe"],
        ["seed"],
    )
    dd = layout(_open(RESULTS[0].parent / "data_dependence.nc").accuracy)
    assert dd.hue == "model" and "model" not in dd.facets and dd.averaged == ["seed"]
    transfer = layout(_open(RESULTS[0].parent / "transfer.nc").accuracy)
    assert transfer.kind == "bars" and "pair" not in transfer.averaged and transfer.averaged == ["seed"]
    tables = layout(_open(RESULTS[0].parent / "tables_full.nc").teacher)
    assert (tables.kind, tables.x) == ("bars", "arch")
    inst = layout(_open(RESULTS[0].parent / "instability.nc").error)
    assert inst.x == "alpha" and inst.averaged == ["pair"] and inst.hue == "start"
    hess = _open(RESULTS[0].parent / "hessian.nc")
    assert axis_label(hess.path_eigenvalue) == "Hessian eigenvalue along the path (Lanczos, largest first) [nats]"
    assert axis_label(hess.remaining) == "fraction of prunable weights kept [%]"
