"""One stored object (a module's tensors, masks or a training state) as one small HDF5 file.

Layout of an object file (h5py alone reads it)::

    /            attrs: object (e.g. "modules/student/00010"), written_at, caller attrs (spec JSON,
                 epoch...), tensors: JSON {key: {"dtype": torch dtype, "stored": dtype on disk when
                 cast (e.g. "float16") or "", "sum64": checksum of the bytes on disk}}
    /<key>       one dataset per tensor ("/" in state_dict keys written as "|")

(Format-1 files and packed groups may carry ``dtype``/``stored`` as attrs of each dataset instead.)

Reading is strict: only numeric datasets of known dtypes, their stored bytes consistent with their
shape, checksums matching; anything else is a one-line StoreError naming the file and key.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from distill.provenance import now
from distill.store import fsio
from distill.store.errors import StoreError
from distill.store.info import attr_value, check_hdf5_links

# torch dtype name -> numpy dtype on disk (bfloat16 travels as its int16 bit pattern)
DTYPES = {
    "float32": "float32",
    "float64": "float64",
    "float16": "float16",
    "bfloat16": "int16",
    "int64": "int64",
    "int32": "int32",
    "int16": "int16",
    "int8": "int8",
    "uint8": "uint8",
    "bool": "bool",
}
STORE_DTYPES = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
MAX_GZIP_RATIO = 1100  # deflate cannot expand data by more than ~1032x


def plain(v: Any) -> Any:
    """Attr values HDF5/netCDF accept: str, int, float; everything else as JSON."""
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, (str, int, float, np.integer, np.floating)):
        return v
    return json.dumps(v, default=str)


def to_numpy(t: torch.Tensor, cast: torch.dtype | None = None) -> tuple[np.ndarray, str, str | None]:
    """(array on disk, logical torch dtype name, stored dtype name when cast)."""
    t = t.detach().cpu()
    dtype = str(t.dtype).removeprefix("torch.")
    stored = None
    if cast is not None and t.is_floating_point() and t.dtype != cast:
        t, stored = t.to(cast), str(cast).removeprefix("torch.")
    if t.dtype == torch.bfloat16:
        return t.contiguous().view(torch.int16).numpy(), dtype, stored
    return t.contiguous().numpy(), dtype, stored


def write_object(
    path: Path | str,
    obj: str,
    tensors: Mapping[str, torch.Tensor],
    attrs: Mapping[str, Any],
    *,
    cast: torch.dtype | None = None,
    compression: str | None = None,
) -> None:
    """Write the HDF5 object file ``path`` holding ``tensors`` (cast to ``cast`` if floating) and ``attrs``.

    Uncompressed, h5py lays out the file (metadata, and one contiguous dataset per tensor, its
    storage allocated at once and never filled; datasets from 256 KiB on start at a multiple
    of 4 KiB); then `fsio.fill` copies each tensor's bytes into its place (large ones
    straight to the disk) while a second thread sums them, and the attrs with the checksum
    manifest are added last. The dataset bytes are those h5py writes; the caller's fsync
    makes the file durable."""
    arrays = {key.replace("/", "|"): to_numpy(t, cast) for key, t in tensors.items()}
    if compression:
        with h5py.File(path, "w", locking=False) as f:
            for name, (arr, _, _) in arrays.items():
                kw: dict[str, Any] = {}
                if arr.size > 1:
                    kw = {"compression": compression, "shuffle": True, "chunks": True}
                f.create_dataset(name, data=arr, **kw)
            _write_attrs(f, obj, attrs, {n: checksum(a) for n, (a, _, _) in arrays.items()}, arrays)
        return
    places: list[tuple[int, memoryview]] = []
    with h5py.File(path, "w", locking=False, alignment_threshold=fsio.DIRECT_MIN, alignment_interval=fsio.BLOCK) as f:
        for name, (arr, _, _) in arrays.items():
            offset = _allocate(f, name, arr)
            if arr.nbytes:
                places.append((offset, arr.reshape(-1).view(np.uint8).data))
    with ThreadPoolExecutor(1) as pool:  # the sums run while fill waits for the disk (neither holds the GIL)
        sums = pool.submit(lambda: {n: checksum(a) for n, (a, _, _) in arrays.items()})
        fsio.fill(path, places)
        with h5py.File(path, "r+", locking=False) as f:
            _write_attrs(f, obj, attrs, sums.result(), arrays)


def _allocate(f: h5py.File, name: str, arr: np.ndarray) -> int:
    """Create the contiguous dataset ``name`` shaped and typed as ``arr``, its storage allocated
    now and never filled; the byte offset of that storage in the file."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    space = h5py.h5s.create_simple(arr.shape) if arr.ndim else h5py.h5s.create(h5py.h5s.SCALAR)
    tid = h5py.h5t.py_create(arr.dtype, logical=True)
    dsid = h5py.h5d.create(f.id, name.encode(), tid, space, dcpl=dcpl)
    offset = dsid.get_offset()
    if arr.nbytes and offset is None:
        raise OSError(f"HDF5 allocated no storage for dataset {name!r}")
    return offset or 0


def _write_attrs(
    f: h5py.File,
    obj: str,
    attrs: Mapping[str, Any],
    sums: Mapping[str, int],
    arrays: Mapping[str, tuple[np.ndarray, str, str | None]],
) -> None:
    for k, v in attrs.items():
        f.attrs[k] = plain(v)
    manifest = {
        n: {"dtype": dtype, "stored": stored or "", "sum64": sums[n]} for n, (_, dtype, stored) in arrays.items()
    }
    f.attrs["tensors"] = json.dumps(manifest, separators=(",", ":"))
    f.attrs["object"] = obj
    f.attrs["written_at"] = now()


def checksum(arr: np.ndarray) -> int:
    """Sum modulo 2**64 of an array's bytes read as little-endian 64-bit words (the tail zero-padded),
    plus the byte count: one fast pass (several GB/s) that catches flipped, zeroed and truncated data."""
    raw = np.ascontiguousarray(arr).reshape(-1).view(np.uint8)
    n = raw.size - raw.size % 8
    total = int(raw[:n].view("<u8").sum(dtype=np.uint64)) if n else 0
    if raw.size > n:
        total += int.from_bytes(raw[n:].tobytes().ljust(8, b"\0"), "little")
    return (total + raw.size) % (1 << 64)


def _check_dataset(d: Any, where: str, key: str, info: Mapping[str, Any] | None) -> tuple[str, str | None]:
    if not isinstance(d, h5py.Dataset):
        raise StoreError(f"{where}: '{key}' is a {type(d).__name__}, not a tensor dataset (damaged or foreign store)")
    if d.dtype.kind not in "biuf" or d.dtype.byteorder == ">" or d.shape is None:
        raise StoreError(f"{where}: dataset '{key}' has non-numeric type {d.dtype} (damaged or foreign store)")
    src = info if info is not None else d.attrs
    dtype = attr_value(src.get("dtype", ""))
    stored = attr_value(src.get("stored", "")) or None
    disk = stored or dtype
    if dtype not in DTYPES or (stored is not None and stored not in DTYPES) or np.dtype(DTYPES[disk]) != d.dtype:
        raise StoreError(
            f"{where}: dataset '{key}' records dtype {dtype!r} (stored {stored or dtype!r}) but holds "
            f"{d.dtype}: damaged or foreign store"
        )
    nbytes = int(np.prod(d.shape, dtype=np.int64)) * d.dtype.itemsize
    have = d.id.get_storage_size()
    bound = have * (MAX_GZIP_RATIO if d.compression else 1)
    if nbytes > bound and nbytes > 0:
        raise StoreError(
            f"{where}: dataset '{key}' claims shape {d.shape} ({nbytes} bytes) but only {have} bytes "
            "are stored: truncated or crafted file"
        )
    return dtype, stored


def read_tensors(g: h5py.Group, where: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Strictly read the datasets of ``g`` (an object file's root or a packed group) as CPU tensors
    (refusing links and external storage, which would read data from outside the file)."""
    check_hdf5_links(g, where)
    attrs = {k: attr_value(v) for k, v in g.attrs.items()}
    manifest = None
    if "tensors" in attrs:
        try:
            manifest = json.loads(attrs.pop("tensors"))
            assert isinstance(manifest, dict)
        except (ValueError, AssertionError):
            raise StoreError(f"{where}: unreadable tensor manifest (damaged file)") from None
        missing = sorted(set(manifest) - set(g.keys()))
        if missing:
            raise StoreError(f"{where}: dataset '{missing[0]}' is listed but absent (damaged file)")
    tensors: dict[str, torch.Tensor] = {}
    for key in g.keys():
        if manifest is not None and key not in manifest:
            raise StoreError(f"{where}: dataset '{key}' is not in the file's tensor manifest (damaged or crafted file)")
        info = manifest[key] if manifest is not None else None
        d = g[key]
        dtype, stored = _check_dataset(d, where, key, info)
        arr = np.asarray(d[()], order="C")
        want = info.get("sum64") if info is not None else None
        if want is not None and checksum(arr) != int(want):
            raise StoreError(f"{where}: dataset '{key}' fails its checksum (damaged file): restore it from a copy")
        t = torch.from_numpy(arr)
        disk = stored or dtype
        if disk == "bfloat16":
            t = t.view(torch.bfloat16)
        if stored:
            t = t.to(getattr(torch, dtype))
        tensors[key.replace("|", "/")] = t
    return tensors, attrs


def decode(path: Path, where: str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and attrs of the object file at ``path``."""
    where = where or str(path)
    try:
        with h5py.File(path, "r", locking=False) as f:
            return read_tensors(f, where)
    except (FileNotFoundError, StoreError):
        raise
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as e:
        raise StoreError(
            f"{where}: unreadable object file ({str(e).splitlines()[0] if str(e) else type(e).__name__}):"
            " damaged; run 'rtt verify' on the store"
        ) from None
