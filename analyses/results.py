"""Result files: their names per preset, the refusal to replace a committed one, writing and reading
them, and the reductions of probe curves over epochs and seeds that the results hold."""

from __future__ import annotations

import subprocess
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

COMMITTED_PRESETS = ("cpu", "cpu-long")  # whose results the checkout commits under results/


def result_stem(name: str, preset: str, presets: Collection[str] = ()) -> str:
    """The file name (no suffix) of a script's result under ``--results``: ``<name>`` for its main
    committed preset (cpu; cpu-long in a script without cpu, as table1), ``<name>_<preset>`` for every
    other one (``_smoke``, ``_full``, ``_cpu_long``, ``_gpu``, ``_gpu_quick``), so no preset writes over
    another's file. ``presets``: the script's preset names."""
    main = preset == "cpu" or (preset == "cpu-long" and "cpu" not in presets)
    return name if main else f"{name}_{preset.replace('-', '_')}"


def committed(path: str | Path) -> bool:
    """Whether ``path`` is a file git tracks in this checkout (a committed result)."""
    path = Path(path).resolve()
    if not path.is_relative_to(REPO):
        return False
    try:
        r = subprocess.run(
            ["git", "ls-files", "--error-unmatch", str(path)], cwd=REPO, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return r.returncode == 0


REPO = Path(__file__).resolve().parents[1]


# How a probe curve over epochs becomes one number: the paper's is the best over the probed epochs after
# epoch 0 (the authors' results notebook drops the first row); ``best`` keeps epoch 0 (a student that never
# improves then reports its starting value), ``last`` is the last probed epoch.
STATISTICS = ("best_after_epoch0", "best", "last")
STATISTIC_HELP = {
    "best_after_epoch0": "best over the probed epochs after epoch 0 (the paper's statistic)",
    "best": "best over the probed epochs, epoch 0 included",
    "last": "the last probed epoch",
}


def best_over_epochs(metrics: xr.Dataset, statistic: str = "best_after_epoch0") -> xr.DataArray:
    """A run's probe accuracy reduced over its probed epochs by ``statistic`` (:data:`STATISTICS`), dims
    (model, probe); the choice is in the result's ``statistic`` attr. NaN where nothing was probed after 0."""
    if statistic not in STATISTICS:
        raise ValueError(f"statistic={statistic!r}: choose one of {', '.join(STATISTICS)}")
    probed = metrics.accuracy.dropna("epoch", how="all")
    if statistic == "last":
        out = probed.isel(epoch=-1, drop=True)
    else:
        if statistic == "best_after_epoch0":
            probed = probed.sel(epoch=probed.epoch > 0)
        out = (
            probed.max("epoch")
            if probed.sizes["epoch"]
            else xr.full_like(metrics.accuracy.isel(epoch=0, drop=True), np.nan)
        )
    return out.assign_attrs(statistic=statistic, statistic_meaning=STATISTIC_HELP[statistic])


def pm(values: Any, width: int = 6, ddof: int = 0) -> str:
    """The finite ``values`` (fractions) as ``mean +- std`` in percent, e.g. ``' 51.98 +- 0.42'`` (``width``:
    of the mean; ``ddof``: of the std, 0 for fewer values); ``-`` when none is finite."""
    v = 100 * np.asarray(values, dtype=float).ravel()
    v = v[np.isfinite(v)]
    if not v.size:
        return f"{'-':>{width + 8}}"
    return f"{v.mean():{width}.2f} +- {v.std(ddof=ddof if v.size > ddof else 0):4.2f}"


def percents(values: Mapping[str, Any] | xr.DataArray, fmt: str = ".2f") -> str:
    """Fractions by name in percent, ``knn 44.92, linear 36.55``; a 1-D DataArray is named by its coordinate."""
    if isinstance(values, xr.DataArray):
        dim = values.dims[0]
        values = {str(k): values.sel({dim: k}) for k in values[dim].values}
    return ", ".join(f"{k} {100 * float(v):{fmt}}" for k, v in values.items())


def along(dim: str, values: Sequence[Any], items: Sequence[Any], **kw: Any) -> Any:
    """``items`` (Datasets or DataArrays) concatenated along a new dimension ``dim`` whose coordinate is
    ``values``; ``kw``: :func:`xarray.concat`'s options."""
    return xr.concat(list(items), dim=xr.DataArray(list(values), dims=dim, name=dim), **kw)


def stack_seeds(rows: list[xr.Dataset | xr.DataArray], seeds: Sequence[int]) -> Any:
    """Concatenate per-seed results along a new ``seed`` dimension."""
    return along("seed", seeds, rows, combine_attrs="drop_conflicts")


def save(ds: xr.Dataset, path: str | Path) -> Path:
    """Write a result as netCDF (h5netcdf), creating the folder: under a temporary name of its own,
    fsynced and renamed into place, as the store writes (two workers finishing the same unit each
    write a whole file; the reader sees one of them, never a mix, and a kill leaves no partial file)."""
    from distill.store import fsio

    path = Path(path)
    fsio.write_atomic(path, lambda tmp: ds.to_netcdf(tmp, engine="h5netcdf"))
    return path


def open_result(path: str | Path) -> xr.Dataset:
    """Read a result file fully into memory (the file is closed afterwards)."""
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        return ds.load()
