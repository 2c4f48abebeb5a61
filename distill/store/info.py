"""What a store holds, read with h5py alone (no torch, no xarray): the path of ``rtt info``.

:func:`describe` returns the provenance attrs, the object names under each root, the saved
student epochs and, for every result, its data variables and dimension sizes (read from the
netCDF layout that h5netcdf writes: dimension-scale datasets are dimensions, the other
datasets variables). :class:`~distill.store.core.Store` shares the format check and the
folder index defined here.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from distill.store.errors import StoreError

FORMAT = "random-teachers-store"
FORMAT_VERSION = 2
ROOTS = ("modules", "masks", "state", "results")
COMMIT = re.compile(r"^\d{6,}$")
PARTIAL = "_partial"  # prefix of the groups a single-file writer has not finished
_NON_COORD = "_nc4_non_coord_"  # h5netcdf's prefix for a variable named like a dimension it lacks


def attr_value(v: Any) -> Any:
    """An HDF5 attribute as a plain Python value (bytes decoded, numpy scalars unwrapped)."""
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.generic):
        return v.item()
    return v


def check_format(attrs: dict[str, Any], where: Path | str) -> None:
    """One-line StoreError unless ``attrs`` mark a store of a format this toolkit reads."""
    if attrs.get("format", "") != FORMAT:
        raise StoreError(f"{where} is an HDF5 file but not a random-teachers store (no '{FORMAT}' format mark)")
    try:
        version = int(attrs.get("format_version", 0))
    except (TypeError, ValueError):
        raise StoreError(f"{where} has an unreadable format_version: damaged store") from None
    if version > FORMAT_VERSION:
        raise StoreError(
            f"{where} has store format {version}, newer than this toolkit reads "
            f"({FORMAT_VERSION}): upgrade random-teachers"
        )


def commit_dirs(path: Path) -> list[tuple[int, Path]]:
    """(epoch, folder) of every committed epoch of the folder store ``path``, ascending."""
    try:
        names = os.listdir(path / "commits")
    except FileNotFoundError:
        return []
    return sorted((int(n), path / "commits" / n) for n in names if COMMIT.match(n))


def folder_index(path: Path, root: str) -> dict[str, Path]:
    """Visible objects under ``root`` of the folder store ``path``: name -> file (the newest commit wins)."""
    out: dict[str, Path] = {}
    for base in [path / "objects"] + [d for _, d in commit_dirs(path)]:
        top = base / root
        for dirpath, dirs, files in os.walk(top):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            rel = os.path.relpath(dirpath, top)
            for fn in files:
                if fn.endswith(".h5") and not fn.startswith("."):
                    name = fn[:-3] if rel == "." else f"{rel}/{fn[:-3]}"
                    out[name.replace(os.sep, "/")] = Path(dirpath) / fn
    return out


def group_names(f: h5py.File, root: str) -> list[str]:
    """Complete groups below ``root`` of an open single-file store; a group that cannot be opened is skipped."""
    out: list[str] = []

    def walk(group: h5py.Group, prefix: str) -> None:
        for key in list(group.keys()):
            if not prefix and key.startswith(PARTIAL):
                continue
            try:
                obj = group[key]
                if not isinstance(obj, h5py.Group):
                    continue
                if obj.attrs.get("complete", 0):
                    out.append(prefix + key)
                elif root != "results":
                    walk(obj, f"{prefix}{key}/")
            except (KeyError, OSError, RuntimeError):
                continue

    if root in f and isinstance(f[root], h5py.Group):
        walk(f[root], "")
    return sorted(out)


def read_attrs(path: Path) -> tuple[dict[str, Any], bool]:
    """(root attrs, whether ``path`` is a single-file store); one-line StoreError when it is no store."""
    p = Path(path)
    try:
        if not p.exists():
            parent = next((q for q in p.parents if q.exists()), None)
            if parent is not None and not parent.is_dir():
                raise StoreError(f"no store at {p}: {parent} is a file, not a folder")
            raise StoreError(f"no store at {p}: check the path, or create one (rtt distill ... --out {p})")
        if p.is_dir():
            head = p / "store.h5"
            if not head.is_file():
                raise StoreError(
                    f"{p} is a folder but not a random-teachers store (no store.h5 in it): pass the path of a store"
                )
            try:
                with h5py.File(head, "r", locking=False) as f:
                    attrs = {k: attr_value(v) for k, v in f.attrs.items()}
            except OSError as e:
                raise StoreError(f"{p}: store.h5 is unreadable ({_first_line(e)}): damaged store") from None
            check_format(attrs, p)
            return attrs, False
        with h5py.File(p, "r", locking=False) as f:
            attrs = {k: attr_value(v) for k, v in f.attrs.items()}
    except PermissionError:
        raise StoreError(f"{p}: cannot read the store (permission denied): fix the permissions") from None
    except IsADirectoryError:
        raise StoreError(f"{p} is a folder but not a random-teachers store") from None
    except OSError as e:
        what = "not an HDF5 file" if not h5py.is_hdf5(p) else "truncated or corrupt HDF5"
        raise StoreError(f"{p} is not readable as a store ({what}: {_first_line(e)})") from None
    check_format(attrs, p)
    return attrs, True


def result_summary(group: h5py.Group) -> tuple[list[str], dict[str, int]]:
    """(data variable names, {dimension: size}) of a netCDF file or group written by h5netcdf, in
    the order xarray reports them (variables in file order; dimensions as the variables use them)."""
    dims: dict[str, int] = {}
    pure: dict[str, int] = {}  # dimensions without a coordinate variable
    coords = set(str(attr_value(group.attrs.get("coordinates", ""))).split())
    variables: list[str] = []
    for key, obj in group.items():
        if not isinstance(obj, h5py.Dataset):
            continue
        name = key.removeprefix(_NON_COORD)
        if obj.attrs.get("CLASS", b"") == b"DIMENSION_SCALE":
            if str(attr_value(obj.attrs.get("NAME", ""))).startswith("This is a netCDF dimension"):
                pure[name] = int(obj.shape[0])
                continue
            coords.add(name)
            dims.setdefault(name, int(obj.shape[0]))
        else:
            for i, n in enumerate(obj.shape):
                scales = obj.dims[i].values()
                if scales:
                    dims.setdefault(scales[0].name.rsplit("/", 1)[-1].removeprefix(_NON_COORD), int(n))
            coords.update(str(attr_value(obj.attrs.get("coordinates", ""))).split())
        variables.append(name)
    return [v for v in variables if v not in coords], {**dims, **{d: n for d, n in pure.items() if d not in dims}}


def describe(path: str | Path) -> dict[str, Any]:
    """What the store at ``path`` holds: ``attrs`` (provenance, JSON strings as stored), ``names``
    (root -> sorted object names), ``epochs`` (saved student epochs, ascending) and ``results``
    (name -> (data variables, {dimension: size}))."""
    p = Path(path)
    attrs, single = read_attrs(p)
    results: dict[str, tuple[list[str], dict[str, int]]] = {}
    if single:
        with h5py.File(p, "r", locking=False) as f:
            names = {root: group_names(f, root) for root in ROOTS}
            for r in names["results"]:
                results[r] = _summary_or_error(lambda r=r: result_summary(f[f"results/{r}"]), f"{p}:results/{r}")
    else:
        index = {root: folder_index(p, root) for root in ROOTS}
        names = {root: sorted(ix) for root, ix in index.items()}
        for r, file in sorted(index["results"].items()):
            results[r] = _summary_or_error(lambda file=file: _summary_of_file(file), f"{p}:results/{r}")
    epochs = sorted(int(n.split("/")[1]) for n in names["modules"] if n.startswith("student/") and n[8:].isdigit())
    return {"path": p, "attrs": attrs, "names": names, "epochs": epochs, "results": results}


def _summary_of_file(file: Path) -> tuple[list[str], dict[str, int]]:
    with h5py.File(file, "r", locking=False) as f:
        return result_summary(f)


def _summary_or_error(read: Any, where: str) -> tuple[list[str], dict[str, int]]:
    try:
        out: tuple[list[str], dict[str, int]] = read()
        return out
    except (OSError, KeyError, RuntimeError, ValueError) as e:
        raise StoreError(f"{where}: unreadable result ({_first_line(e)}): damaged; run 'rtt verify'") from None


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__
