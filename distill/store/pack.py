"""``rtt pack`` (one self-contained HDF5 file of a store) and ``rtt verify`` (read every object)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py

from distill.store import fsio, objects
from distill.store.checks import build_checked, check_train_meta, load_into
from distill.store.core import Store
from distill.store.errors import StoreError, link_error
from distill.store.info import FORMAT_VERSION, OBJECT_NAME, ROOTS


def pack(store: Store | str | Path, out: str | Path) -> Path:
    """Write every visible module, mask, state and result of ``store`` into the single HDF5 file
    ``out`` (format_version 2, layout "packed"), which `Store` opens read-only.
    Written to a temporary name and renamed, so ``out`` is complete or absent."""
    store = store if isinstance(store, Store) else Store(store)
    out = Path(out)
    if out.exists():
        raise StoreError(f"{out} already exists: choose another output path or remove it")
    if out.resolve() == store.path.resolve():
        raise StoreError(f"{out} is the store itself: choose another output path")

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w", locking=False) as f:
            f.attrs.update({k: objects.plain(v) for k, v in store.attrs.items()})
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["layout"] = "packed"
            f.attrs["packed_at"] = objects.now()
            f.attrs["packed_from"] = str(store.path)
            for root in ("modules", "masks", "state"):
                f.create_group(root)
                for name in store.names(root=root):
                    tensors, attrs = store._read_object(root, name)
                    g = f.create_group(f"{root}/{name}")
                    cast = None
                    if root == "modules" and attrs.get("store_dtype", "fp32") != "fp32":
                        cast = objects.STORE_DTYPES[attrs["store_dtype"]]
                    manifest = {}
                    for key, t in tensors.items():
                        arr, dtype, stored = objects.to_numpy(t, cast)
                        g.create_dataset(key.replace("/", "|"), data=arr)
                        manifest[key.replace("/", "|")] = {
                            "dtype": dtype,
                            "stored": stored or "",
                            "sum64": objects.checksum(arr),
                        }
                    for k, v in attrs.items():
                        g.attrs[k] = objects.plain(v)
                    g.attrs["tensors"] = json.dumps(manifest, separators=(",", ":"))
                    g.attrs["complete"] = 1
            f.create_group("results")
        for name in store.results():
            ds = store.read_result(name)
            ds.to_netcdf(tmp, mode="a", group=f"results/{name}", engine="h5netcdf", invalid_netcdf=False)
            with h5py.File(tmp, "a", locking=False) as f:
                f[f"results/{name}"].attrs["complete"] = 1

    try:
        fsio.write_atomic(out, write, replace=False)
    except FileExistsError:
        raise StoreError(f"{out} already exists: choose another output path or remove it") from None
    except OSError as e:
        raise fsio.io_error(e, out, "write the packed store") from None
    return out


def verify(path: str | Path) -> tuple[int, list[str]]:
    """Read every object of the store at ``path`` strictly (checksums, dtypes, architecture, links,
    training-state metadata) and look for what does not belong (symbolic links, temporaries of
    killed writers, stray files); returns (objects read, one line per problem found)."""
    store = Store(path)
    problems: list[str] = []
    count = 0
    if store._single is None:
        problems += [str(link_error(p)) for p in fsio.find_links(store.path)]
    try:
        store.config  # noqa: B018 - decoding it is the check
    except StoreError as e:
        problems.append(str(e))
    for root in ROOTS:
        try:
            names = store.names(root=root)
        except StoreError as e:
            if str(e) not in problems:
                problems.append(str(e))
            continue
        for name in names:
            count += 1
            try:
                if root == "results":
                    store.read_result(name)
                    continue
                tensors, attrs = store._read_object(root, name)
                if root == "modules":
                    where = f"{store.path}:{name}"
                    model = build_checked(attrs.get("spec"), tensors, where, plugin=attrs.get("plugin"))
                    load_into(model, tensors, where=where)
                elif root == "state" and name == "train":
                    _check_meta(attrs, f"{store.path}:state/{name}")
            except StoreError as e:
                if str(e) not in problems:
                    problems.append(str(e))
    if store._single is None:
        problems += _stray_files(store)
    return count, problems


def _valid_object_path(rel: str) -> bool:
    parts = rel.split(os.sep)
    if parts[0] == "objects" and len(parts) > 2:
        name = "/".join(parts[2:])
    elif parts[0] == "commits" and len(parts) > 3:
        name = "/".join(parts[3:])
    else:
        return False
    return bool(OBJECT_NAME.match(name[:-3]))


def _check_meta(attrs: dict, where: str) -> None:
    try:
        meta = json.loads(attrs.get("meta", "{}"))
    except ValueError:
        raise StoreError(f"{where}: unreadable training-state metadata (damaged file)") from None
    check_train_meta(meta, where)


def _stray_files(store: Store) -> list[str]:
    """Files in a store folder that no reader uses: temporaries that killed writers left (the next
    writer removes them) and files that are not part of a store."""
    out = []
    for dirpath, _, files in os.walk(store.path, followlinks=False):
        for fn in files:
            full = os.path.join(dirpath, fn)
            rel = os.path.relpath(full, store.path)
            if os.path.islink(full):
                continue  # reported as a link
            if fn.startswith(".") and fn.endswith(".tmp") and fsio.is_orphan_tmp(full):
                out.append(
                    f"{store.path}: leftover temporary file {rel} of a killed writer "
                    "(the next writer of this store removes it; or delete it)"
                )
                continue
            if rel in ("store.h5", "lock") or fn.startswith(".") or ".pending-" in rel or ".trash-" in rel:
                continue
            if not fn.endswith(".h5"):
                out.append(f"{store.path}: unexpected file {rel} (not part of a store)")
            elif rel != "store.h5" and not _valid_object_path(rel):
                out.append(
                    f"{store.path}: unexpected file {rel} (not an object name the store writes: letters, digits, "
                    "_ - + = .): rename or remove it"
                )
    return out
