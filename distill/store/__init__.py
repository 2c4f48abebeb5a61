"""The HDF5 checkpoint store: checkpoints, training state and results of a run, nothing pickled.

A store is a folder of immutable HDF5 files (see :mod:`distill.store.core` for the layout),
written crash-safely (:mod:`distill.store.fsio`), one file per object (:mod:`distill.store.objects`);
single-file stores (format 1 and ``rtt pack`` output) are read by :mod:`distill.store.single`;
:mod:`distill.store.pack` packs and verifies.
"""
from __future__ import annotations

from distill.store.core import (FORMAT, FORMAT_VERSION, Store, as_module, build_checked, load_into,
                                student_name)
from distill.store.errors import StoreError

__all__ = ["FORMAT", "FORMAT_VERSION", "Store", "StoreError", "as_module", "build_checked", "load_into",
           "student_name"]
