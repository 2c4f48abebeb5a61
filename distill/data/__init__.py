"""Datasets as in-memory uint8 tensors, batched and normalised without a DataLoader.

Formats, all read offline (nothing is downloaded):

- IDX files (``*-ubyte`` or ``*-ubyte.gz``): ``mnist``, ``fashion-mnist``.
- CIFAR python batches (``cifar-10-batches-py``, ``cifar-100-python``), read with an unpickler
  that can only rebuild numpy arrays, lists, dicts, strings and numbers.
- Image trees ``<split>/<class>/*.{png,jpg}`` (split ``train`` and ``test``), as a folder or as a
  tarball (``.tar``, ``.tar.gz``, ...; a leading folder inside the tarball is fine). Label ids
  follow the sorted class-folder names, which for CIFAR-10/100 is the canonical order.
- ``gaussian`` / ``gaussian:<source>``: Gaussian-noise training images shaped like ``source``.

Decoding an image tree takes seconds, so the decoded arrays are cached as an uncompressed ``.npz``
(no pickled objects; read with ``allow_pickle=False``); see `cache_path`.
"""

from __future__ import annotations

import os

# the names below are the package's API (re-exported), whatever load_dataset uses of them
from distill.data.cache import cache_path  # noqa: F401
from distill.data.dataset import Dataset, Split, channel_stats, iterate, normalize, shuffled_order, stratified_indices  # noqa: F401
from distill.data.gaussian import _gaussian_like, clamped_normal_moments  # noqa: F401
from distill.data.readers import (  # noqa: F401
    CIFAR10_CLASSES,
    FASHION_MNIST_CLASSES,
    MNIST_CLASSES,
    _load_cifar,
    _load_idx_dataset,
    read_idx,
)
from distill.data.unpickle import unpickle_restricted  # noqa: F401
from distill.registry import BASE_DATASETS, canonical_dataset, dataset_names, suggest


def list_datasets() -> list[str]:
    """The registered dataset names (`distill.registry.dataset_names`)."""
    return dataset_names()


def load_dataset(name: str, root: str | os.PathLike | None = None, subset: int | None = None, seed: int = 0) -> Dataset:
    """Load dataset ``name`` (see `list_datasets`) into CPU memory.

    ``root``: a folder or file holding the data. None searches, in order, ``$RTT_DATA/<name>``,
    ``$RTT_DATA`` itself and, for Fashion-MNIST and MNIST, ``/usr/share/datasets/<name>`` (Debian's
    ``dataset-fashion-mnist``); the error lists the paths tried. ``subset``: keep ``n`` training
    images, stratified by class and chosen with
    ``seed``; the test split always stays whole.

    ``gaussian[:source]`` (source defaults to cifar10): training images are i.i.d. per-pixel
    Gaussian noise drawn with ``seed``, rounded and clamped to 0..255, as many as the source has
    (or ``subset``, which here may exceed the source size). The normal's parameters are chosen per
    channel so that the clamped noise has the source's mean and std (plain N(mean, std) would
    shift the mean wherever much of the mass is clamped, e.g. by +0.04 on Fashion-MNIST).
    Labels are the source's training labels (the stratified subset's labels, or the full label
    vector tiled when ``subset`` exceeds it). The test split is the REAL test split of the
    source, and mean/std are the source's, so real images are normalised exactly as in the
    source dataset.
    """
    key = canonical_dataset(name)
    if key.startswith("gaussian"):
        source = key.partition(":")[2] or "cifar10"
        if source not in BASE_DATASETS:
            raise ValueError(f"unknown source {source!r} for gaussian noise; valid: {', '.join(BASE_DATASETS)}")
        return _gaussian_like(load_dataset(source, root), subset, seed)
    if key in ("fashion-mnist", "mnist"):
        data = _load_idx_dataset(key, root)
    elif key in ("cifar10", "cifar100"):
        data = _load_cifar(key, root)
    else:
        raise ValueError(
            f"unknown dataset {name!r}{suggest(key, list_datasets())}; valid names: {', '.join(list_datasets())}"
        )
    return data if subset is None else data.subset(subset, seed)
