"""The checkpoint store: checkpoints, training state and results of a run, nothing pickled.

A store is a folder (``runs/x.rts``) of immutable HDF5 files, each readable with h5py alone::

    store.h5                         provenance attrs: format, format_version (2), config (JSON), seeds, ...
    lock                             the writer lock (flock); its text names the holder
    objects/<root>/<name>.h5         objects written on their own (teacher, children, lottery levels)
    commits/<epoch:06d>/<root>/<name>.h5
                                     one epoch of a distillation: student, training state, metrics

``root`` is ``modules``, ``masks``, ``state`` or ``results`` (netCDF files); ``name`` may hold ``/``
(``student/00010`` is ``modules/student/00010.h5``). Promises, each proven by a test: a completed
write is never damaged by a later kill (temporary name, fsync, atomic rename, folder fsync; nothing
is rewritten in place); an epoch's files become visible together (one directory rename); one writer
at a time (a second is refused with `~distill.store.errors.StoreBusy`, naming the holder); readers
take no lock; loading is strict (dtypes, shapes, finiteness, bounded specs, checksums).
Modules: :mod:`~distill.store.core` (Store), :mod:`~distill.store.checks` (what loading accepts),
:mod:`~distill.store.commits` (commit folders), :mod:`~distill.store.fsio` (atomic writes, lock),
:mod:`~distill.store.objects` (one object per file), :mod:`~distill.store.single` (format-1 and
packed single files), :mod:`~distill.store.pack` (``rtt pack``, ``rtt verify``),
:mod:`~distill.store.info` (what a store holds, read without torch: ``rtt info``),
:mod:`~distill.store.unpack` (a single-file store into a writable folder store),
:mod:`~distill.store.names` (the ``.rts`` suffix of store folders; old ``.h5`` folders stay stores).

The names below are imported on first use, so that ``distill.store.info`` stays torch-free.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from distill._lazy import lazy_exports
from distill.store.errors import StoreBusy, StoreError
from distill.store.info import FORMAT, FORMAT_VERSION
from distill.store.names import SUFFIX, store_name

if TYPE_CHECKING:
    from distill.store.checks import build_checked, load_into
    from distill.store.core import Store, as_module, student_name

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "SUFFIX",
    "Store",
    "StoreBusy",
    "StoreError",
    "as_module",
    "build_checked",
    "load_into",
    "store_name",
    "student_name",
]
_LAZY = {"Store": "core", "as_module": "core", "student_name": "core", "build_checked": "checks", "load_into": "checks"}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
