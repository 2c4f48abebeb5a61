"""Store names: the ``.rts`` suffix the toolkit gives the store folders it names, and old ``.h5`` names.

A store is a folder of HDF5 files, so its conventional suffix, ``.rts`` ("random-teachers store"),
does not promise one HDF5 file; any folder path is a store path (``runs/x.h5`` folders written
before this convention stay stores). A single self-contained file written by ``rtt pack`` keeps
``.h5``. Where the toolkit derives a store name itself, `store_name` resumes the old ``.h5``
folder of that name when it is there and the ``.rts`` one is not.
"""

from __future__ import annotations

from pathlib import Path

SUFFIX = ".rts"  # the conventional suffix of a store folder
LEGACY_SUFFIX = ".h5"  # the suffix of the store folders named before ``.rts``


def store_name(path: str | Path) -> Path:
    """``path`` (a derived store name, ``.rts``), or its old ``.h5`` name when only that folder exists.

    A path that does not end in ``.rts`` comes back unchanged.
    """
    path = Path(path)
    if path.suffix != SUFFIX or path.exists():
        return path
    legacy = path.with_suffix(LEGACY_SUFFIX)
    return legacy if legacy.is_dir() else path
