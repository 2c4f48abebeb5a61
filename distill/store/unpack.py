"""Convert a single-file store (format_version 1, or a file written by ``rtt pack``) into a
writable folder store::

    python -m distill.store.unpack OLD.h5 NEW.rts

Every module, mask, training state and result is copied (modules keep the dtype they were
stored in); the provenance attrs are kept, with ``converted_from`` and ``converted_at`` added.
The new store is built under a hidden name beside ``NEW.rts`` and renamed into place when
complete, so a failed conversion leaves nothing behind; the old file is only read.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path

from distill.store import fsio, objects
from distill.store.core import Store
from distill.store.errors import StoreError

# root attrs that Store.create writes itself (the run's created_at is carried over)
_OWN = ("format", "format_version", "layout", "toolkit_version", "torch_version", "kind", "config")


def unpack(src: str | Path, out: str | Path) -> Path:
    """Write the folder store ``out`` holding everything the single-file store ``src`` holds."""
    old = Store(src)
    out = Path(out)
    if old._single is None:
        raise StoreError(f"{old.path} is already a folder store (writable): nothing to convert")
    if out.exists() or out.is_symlink():
        raise StoreError(f"{out} already exists: choose another output path or remove it")
    fsio.check_parents(out, "create the store")
    attrs = old.attrs
    try:
        seeds = json.loads(attrs.get("seeds", "{}") or "{}")
    except ValueError:
        raise StoreError(f"{old.path}: unreadable seeds attribute (damaged store)") from None
    provenance = {k: v for k, v in attrs.items() if k not in (*_OWN, "seeds", "packed_at", "packed_from")}
    provenance |= {"converted_from": str(old.path), "converted_at": objects.now()}
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:12]}.tmp")
    with fsio.removed_on_failure(tmp, out, "write the converted store"):
        new = Store.create(tmp, old.config, kind=str(attrs.get("kind", "distill")), seeds=seeds, provenance=provenance)
        for root in ("modules", "masks", "state"):
            for name in old.names(root=root):
                tensors, obj_attrs = old._read_object(root, name)
                cast = None
                if root == "modules" and obj_attrs.get("store_dtype", "fp32") != "fp32":
                    cast = objects.STORE_DTYPES.get(obj_attrs["store_dtype"])
                new._put(root, name, tensors, obj_attrs, cast=cast)
        for name in old.results():
            new.write_result(name, old.read_result(name))
        new.close()
        fsio.op("rename unpacked store", os.rename, tmp, out)
        fsio.fsync_dir(out.parent)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m distill.store.unpack", description=__doc__.splitlines()[0])
    ap.add_argument("src", help="single-file store to read (format 1, or rtt pack output)")
    ap.add_argument("out", help="path of the new folder store (must not exist)")
    a = ap.parse_args(argv)
    try:
        path = unpack(a.src, a.out)
    except StoreError as e:
        print(f"{ap.prog}: error: {e}", file=sys.stderr)
        return 1
    print(
        f"wrote {path}: {', '.join(f'{len(Store(path).names(root=r))} {r}' for r in ('modules', 'state', 'results'))}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
