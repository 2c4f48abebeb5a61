"""Read-only access to single-file stores: format_version 1 files, and the packed files that
``rtt pack`` writes (format_version 2, ``layout="packed"``).

Layout (both)::

    /                      attrs: format, format_version, config (JSON), seeds (JSON), ...
    /modules/<name>/<key>  one dataset per state_dict entry; group attrs: spec (JSON), complete=1
    /masks/<name>/<key>    uint8 pruning masks
    /state/<name>/...      training state (JSON in attrs ``meta``)
    /results/<name>        xarray Datasets as netCDF groups (h5netcdf)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import torch

from distill.store.errors import StoreError
from distill.store.info import check_hdf5_links, group_names
from distill.store.objects import read_tensors

if TYPE_CHECKING:
    import xarray


class SingleFile:
    """One HDF5 file holding a whole store; opened per access, never locked, never written."""

    def __init__(self, path: Path, attrs: dict[str, Any]):
        """``attrs``: the file's root attributes, already read and checked by
        `distill.store.info.read_attrs` (which names every way a path is not a store)."""
        self.path = path
        self.attrs = attrs

    def _file(self) -> h5py.File:
        try:
            return h5py.File(self.path, "r", locking=False)
        except OSError as e:
            raise StoreError(f"{self.path} is not readable (corrupt HDF5: {str(e).splitlines()[0]})") from None

    def names(self, root: str) -> list[str]:
        """Complete groups below ``root``; a group that cannot be opened is skipped."""
        with self._file() as f:
            return group_names(f, root)

    def read_group(self, root: str, name: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        where = f"{self.path}:{root}/{name}"
        with self._file() as f:
            try:
                g = f.get(f"{root}/{name}")
            except (KeyError, OSError, RuntimeError) as e:
                raise StoreError(f"{where}: damaged group ({str(e).splitlines()[0]})") from None
            if not isinstance(g, h5py.Group) or not g.attrs.get("complete", 0):
                have = ", ".join(self.names(root)) or "nothing"
                raise StoreError(f"{self.path} has no complete '{root}/{name}' (it holds: {have})")
            try:
                return read_tensors(g, where)
            except StoreError:
                raise
            except (OSError, RuntimeError, KeyError, ValueError, TypeError) as e:
                raise StoreError(f"{where}: unreadable ({str(e).splitlines()[0]}): damaged file") from None

    def read_result(self, name: str) -> xarray.Dataset:
        import xarray as xr

        have = self.names("results")
        if name not in have:
            raise StoreError(f"{self.path} has no result '{name}' (it holds: {', '.join(have) or 'none'})")
        with self._file() as f:
            check_hdf5_links(f[f"results/{name}"], f"{self.path}:results/{name}")
        try:
            with xr.open_dataset(self.path, group=f"results/{name}", engine="h5netcdf") as ds:
                out = ds.load()
        except Exception as e:  # noqa: BLE001
            raise StoreError(f"{self.path}:results/{name}: unreadable result ({str(e).splitlines()[0]})") from None
        out.attrs.pop("complete", None)
        return out
