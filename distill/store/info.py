"""What a store holds, read with h5py alone (no torch, no xarray): the path of ``rtt info``.

`describe` returns the provenance attrs, the object names under each root, the saved
student epochs and, for every result, its data variables and dimension sizes (read from the
netCDF layout that h5netcdf writes: dimension-scale datasets are dimensions, the other
datasets variables). `~distill.store.core.Store` shares the format check and the
folder index defined here.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from distill.store.errors import StoreError, first_line, link_error

FORMAT = "random-teachers-store"
FORMAT_VERSION = 2
ROOTS = ("modules", "masks", "state", "results")
COMMIT = re.compile(r"^[0-9]{6,}$")
OBJECT_NAME = re.compile(r"^[A-Za-z0-9_=+-][A-Za-z0-9_.=+-]*(/[A-Za-z0-9_=+-][A-Za-z0-9_.=+-]*)*$")
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
    """(epoch, folder) of every committed epoch of the folder store ``path``, ascending; a one-line
    StoreError when one of them is a symbolic link."""
    try:
        names = os.listdir(path / "commits")
    except FileNotFoundError:
        return []
    out = sorted((int(n), path / "commits" / n) for n in names if COMMIT.match(n))
    for _, d in out:
        if os.path.islink(d):
            raise link_error(d, "commit folder")
    return out


def folder_index(path: Path, root: str) -> dict[str, Path]:
    """Visible objects under ``root`` of the folder store ``path``: name -> file (the newest commit
    wins); a one-line StoreError when a file or folder on the way is a symbolic link."""
    out: dict[str, Path] = {}
    for base in [path / "objects"] + [d for _, d in commit_dirs(path)]:
        top = base / root
        for p in (base, top):
            if os.path.islink(p):
                raise link_error(p, "folder")
        for dirpath, dirs, files in os.walk(top, followlinks=False):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for d in dirs:
                if os.path.islink(os.path.join(dirpath, d)):
                    raise link_error(os.path.join(dirpath, d), "folder")
            rel = os.path.relpath(dirpath, top)
            for fn in files:
                if fn.endswith(".h5") and not fn.startswith("."):
                    if os.path.islink(os.path.join(dirpath, fn)):
                        raise link_error(os.path.join(dirpath, fn), "object file")
                    name = (fn[:-3] if rel == "." else f"{rel}/{fn[:-3]}").replace(os.sep, "/")
                    if OBJECT_NAME.match(name):  # a name the store cannot have written is no object of it
                        out[name] = Path(dirpath) / fn
    return out


def check_hdf5_links(group: h5py.Group, where: str, depth: int = 0) -> None:
    """One-line StoreError when ``group`` (a file or group, walked down to its datasets) holds an
    HDF5 soft or external link, a dataset stored in external raw files, or a virtual dataset: each
    would make a reader take data from outside the file, and the store writes none of them."""
    if depth > 32:
        raise StoreError(f"{where}: groups nest more than 32 deep (crafted file): restore the file from a copy")
    for key in list(group.keys()):
        _check_link(group, key, where)
        obj = group[key]
        if isinstance(obj, h5py.Group):
            check_hdf5_links(obj, where, depth + 1)
        elif isinstance(obj, h5py.Dataset):
            _check_storage(obj, where)


def _check_link(group: h5py.Group, key: str, where: str) -> None:
    link = group.get(key, getlink=True)
    name = f"{group.name.rstrip('/')}/{key}"
    if isinstance(link, h5py.ExternalLink):
        raise StoreError(
            f"{where}: '{name}' is an HDF5 external link to {link.filename}:{link.path}, which the store never "
            "follows (crafted file): restore the file from a copy"
        )
    if isinstance(link, h5py.SoftLink):
        raise StoreError(
            f"{where}: '{name}' is an HDF5 soft link to {link.path}, which the store never follows (crafted "
            "file): restore the file from a copy"
        )


def _check_storage(d: h5py.Dataset, where: str) -> None:
    if d.is_virtual:
        raise StoreError(
            f"{where}: dataset '{d.name}' is a virtual dataset mapping other files, which the store never reads "
            "(crafted file): restore the file from a copy"
        )
    if d.external:
        raise StoreError(
            f"{where}: dataset '{d.name}' keeps its data in the external file {d.external[0][0]!r}, which the "
            "store never reads (crafted file): restore the file from a copy"
        )


def config_of(attrs: dict[str, Any], where: Path | str) -> dict[str, Any]:
    """The run configuration recorded in a store's root ``attrs`` (JSON); a one-line StoreError when damaged."""
    try:
        cfg = json.loads(attrs.get("config", "{}") or "{}")
    except (TypeError, ValueError):
        raise StoreError(f"{where}: its config attribute is not JSON (damaged store): restore it from a copy") from None
    if not isinstance(cfg, dict):
        raise StoreError(f"{where}: its config attribute is not a JSON object (damaged store): restore it from a copy")
    return cfg


def group_names(f: h5py.File, root: str) -> list[str]:
    """Complete groups below ``root`` of an open single-file store; a group that cannot be opened is
    skipped; a one-line StoreError when a link stands in the way (see `check_hdf5_links`)."""
    out: list[str] = []

    def walk(group: h5py.Group, prefix: str) -> None:
        for key in list(group.keys()):
            if not prefix and key.startswith(PARTIAL):
                continue
            _check_link(group, key, str(f.filename))
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

    if root in f:
        _check_link(f, root, str(f.filename))
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
            if head.is_symlink():
                raise link_error(head, "head file")
            if not head.is_file():
                raise StoreError(
                    f"{p} is a folder but not a random-teachers store (no store.h5 in it): pass the path of a store"
                )
            try:
                with h5py.File(head, "r", locking=False) as f:
                    attrs = {k: attr_value(v) for k, v in f.attrs.items()}
            except OSError as e:
                raise StoreError(f"{p}: store.h5 is unreadable ({first_line(e)}): damaged store") from None
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
        raise StoreError(f"{p} is not readable as a store ({what}: {first_line(e)})") from None
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
    (root -> sorted object names), ``epochs`` (saved student epochs, ascending), ``results``
    (name -> (data variables, {dimension: size})) and ``plugins`` (plugin module -> names of the
    saved modules that need it)."""
    p = Path(path)
    attrs, single = read_attrs(p)
    results: dict[str, tuple[list[str], dict[str, int]]] = {}
    if single:
        with h5py.File(p, "r", locking=False) as f:
            names = {root: group_names(f, root) for root in ROOTS}
            for r in names["results"]:
                where = f"{p}:results/{r}"
                results[r] = _summary_or_error(lambda r=r, w=where: _checked_summary(f[f"results/{r}"], w), where)
    else:
        index = {root: folder_index(p, root) for root in ROOTS}
        names = {root: sorted(ix) for root, ix in index.items()}
        for r, file in sorted(index["results"].items()):
            where = f"{p}:results/{r}"
            results[r] = _summary_or_error(lambda file=file, w=where: _summary_of_file(file, w), where)
    epochs = sorted(int(n[8:]) for n in names["modules"] if n.startswith("student/") and _ascii_digits(n[8:]))
    plugins = _plugins(p, single, names["modules"])
    return {"path": p, "attrs": attrs, "names": names, "epochs": epochs, "results": results, "plugins": plugins}


def _plugins(p: Path, single: bool, modules: list[str]) -> dict[str, list[str]]:
    """Plugin module -> names of the saved modules whose architecture it registered (the ``plugin``
    attr `Store.save_module` writes); unreadable objects are skipped (``rtt verify`` reports them)."""
    out: dict[str, list[str]] = {}

    def note(name: str, value: Any) -> None:
        if value is not None:
            out.setdefault(str(attr_value(value)), []).append(name)

    if single:
        with h5py.File(p, "r", locking=False) as f:
            for name in modules:
                try:
                    note(name, f[f"modules/{name}"].attrs.get("plugin"))
                except (KeyError, OSError, RuntimeError):
                    continue
        return out
    for name, file in sorted(folder_index(p, "modules").items()):
        try:
            with h5py.File(file, "r", locking=False) as f:
                note(name, f.attrs.get("plugin"))
        except (OSError, RuntimeError):
            continue
    return out


def _ascii_digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _checked_summary(group: h5py.Group, where: str) -> tuple[list[str], dict[str, int]]:
    check_hdf5_links(group, where)
    return result_summary(group)


def _summary_of_file(file: Path, where: str) -> tuple[list[str], dict[str, int]]:
    if os.path.islink(file):
        raise link_error(file, "result file")
    with h5py.File(file, "r", locking=False) as f:
        return _checked_summary(f, where)


def _summary_or_error(read: Any, where: str) -> tuple[list[str], dict[str, int]]:
    try:
        out: tuple[list[str], dict[str, int]] = read()
        return out
    except (OSError, KeyError, RuntimeError, ValueError) as e:
        raise StoreError(f"{where}: unreadable result ({first_line(e)}): damaged; run 'rtt verify'") from None
