"""Helpers shared by the analysis scripts: the distilled start store and result writing."""
from __future__ import annotations

from pathlib import Path

import xarray as xr

from distill.config import DistillConfig
from distill.store import Store


def ensure_distilled(cfg: DistillConfig, out: str | Path) -> Store:
    """The store of ``cfg`` at ``out``: distilled (or resumed to completion) when needed."""
    import distill

    out = Path(out)
    if out.exists():
        store = Store(out)
        if store.epochs and store.epochs[-1] >= cfg.epochs:
            return store
    return distill.distill(cfg, out)


def save(ds: xr.Dataset, path: str | Path) -> Path:
    """Write a result as netCDF (h5netcdf), creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.to_netcdf(path, engine="h5netcdf")
    return path
