"""CIFAR-10/100: the python pickle batches (``cifar-10-batches-py``, ``cifar-100-python``), an
image tree, or a tarball of either; decoded trees and tarballs go through the cache."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from distill.data.cache import _beside, _read_cache, _source_stamp, _user_cache, _write_cache
from distill.data.dataset import Dataset, Split, _env_paths, _make, _tensor
from distill.data.image_tree import (
    _TAR_SUFFIXES,
    _TRAIN_DIRS,
    _decode_tree,
    _read_tarball,
    _read_tree,
    _tree_split_dir,
)
from distill.data.unpickle import unpickle_restricted

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
_PICKLE_DIRS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
_PICKLE_FILES = {
    "cifar10": ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "batches.meta"),
    "cifar100": (["train"], ["test"], "meta"),
}
_TARBALL_NAMES = {
    "cifar10": ("cifar10-jpg.tar.gz", "cifar-10-python.tar.gz"),
    "cifar100": ("cifar100-jpg.tar.gz", "cifar-100-python.tar.gz"),
}


def _load_cifar(name: str, root: str | os.PathLike | None) -> Dataset:
    if root is None:
        places = [*_env_paths(name), *_env_paths("")]
    else:
        places = [Path(root)]
    tried: list[Path] = []
    for place in places:
        found = _find_cifar(name, place, tried)
        if found is None:
            continue
        kind, path = found
        if kind == "pickles":
            wanted = [*_PICKLE_FILES[name][0], *_PICKLE_FILES[name][1], _PICKLE_FILES[name][2]]
            files = {f: (path / f).read_bytes() for f in wanted if (path / f).is_file()}
            return _cifar_from_pickles(name, files, path)
        return _cifar_cached(name, path, kind)
    if not places:
        raise FileNotFoundError(
            f"{name} not found: no data folder given and RTT_DATA is not set; pass root= (--data-root) a "
            f"{_PICKLE_DIRS[name]} folder, an image tree or a tarball (e.g. {_TARBALL_NAMES[name][0]}), "
            f"or set RTT_DATA=DIR with one of these in DIR/{name}"
        )
    tried_text = ", ".join(dict.fromkeys(map(str, tried)))
    raise FileNotFoundError(
        f"{name} not found (tried: {tried_text}): pass root= a {_PICKLE_DIRS[name]} folder, "
        f"an image tree train/<class>/*.jpg + test/<class>/*.jpg, or a tarball of either (e.g. "
        f"{_TARBALL_NAMES[name][0]}), or set RTT_DATA=DIR with one of these in DIR/{name}"
    )


def _find_cifar(name: str, place: Path, tried: list[Path]) -> tuple[str, Path] | None:
    """Classify ``place`` as ("pickles" | "tree" | "tar", path), recording each path looked at."""
    if not place.exists():
        tried.append(place)
        return None
    if place.is_file():
        if not place.name.endswith(_TAR_SUFFIXES):
            raise ValueError(f"{place}: not a tarball ({', '.join(_TAR_SUFFIXES)}); point root at a folder or tarball")
        return "tar", place
    train_files = _PICKLE_FILES[name][0]
    for folder in (place, place / _PICKLE_DIRS[name]):
        tried.append(folder / train_files[0])
        if (folder / train_files[0]).is_file():
            return "pickles", folder
    tried.append(place / "train")
    if _tree_split_dir(place, _TRAIN_DIRS) is not None:
        return "tree", place
    for tar_name in _TARBALL_NAMES[name]:
        tried.append(place / tar_name)
        if (place / tar_name).is_file():
            return "tar", place / tar_name
    return None


def _cifar_cached(name: str, source: Path, kind: str) -> Dataset:
    stamp = _source_stamp(source)
    for candidate in (_beside(source), _user_cache(source)):
        arrays = _read_cache(candidate, stamp)
        if arrays is not None:
            break
    else:
        arrays = _decode_source(name, source, kind)
        _write_cache(source, stamp, arrays)
    train = Split(_tensor(arrays["train_images"]), _tensor(arrays["train_labels"]).long())
    test = Split(_tensor(arrays["test_images"]), _tensor(arrays["test_labels"]).long())
    return _make(name, train, test, [str(c) for c in arrays["classes"]])


def _decode_source(name: str, source: Path, kind: str) -> dict[str, np.ndarray]:
    """Decode an image tree or a tarball (of an image tree or of pickle batches) to arrays."""
    if kind == "tree":
        return _decode_tree(_read_tree(source), source)
    wanted = set(sum(_PICKLE_FILES[name][:2], [])) | {_PICKLE_FILES[name][2]}
    pickles, images = _read_tarball(source, _PICKLE_DIRS[name], wanted)
    if pickles:
        return _cifar_pickle_arrays(name, pickles, source)
    if len(images) > 1:
        raise ValueError(
            f"{source}: several image trees inside ({', '.join('/'.join(p) or '.' for p in images)}); "
            "keep one train/ + test/ pair"
        )
    return _decode_tree(next(iter(images.values()), []), source)


def _cifar_from_pickles(name: str, files: dict[str, bytes], where: Path) -> Dataset:
    arrays = _cifar_pickle_arrays(name, files, where)
    train = Split(torch.from_numpy(arrays["train_images"]), torch.from_numpy(arrays["train_labels"]))
    test = Split(torch.from_numpy(arrays["test_images"]), torch.from_numpy(arrays["test_labels"]))
    return _make(name, train, test, [str(c) for c in arrays["classes"]])


def _cifar_pickle_arrays(name: str, files: dict[str, bytes], where: Path) -> dict[str, np.ndarray]:
    train_names, test_names, meta_name = _PICKLE_FILES[name]
    label_key = "labels" if name == "cifar10" else "fine_labels"
    out: dict[str, np.ndarray] = {}
    for split, names in (("train", train_names), ("test", test_names)):
        images, labels = [], []
        for fname in names:
            if fname not in files:
                raise FileNotFoundError(
                    f"{where}: batch file {fname} is missing; the {_PICKLE_DIRS[name]} folder must be complete"
                )
            batch = unpickle_restricted(files[fname], f"{where}/{fname}")
            data, lab = batch.get("data"), batch.get(label_key)
            if (
                not isinstance(data, np.ndarray)
                or data.ndim != 2
                or data.shape[1] != 3072
                or lab is None
                or len(lab) != len(data)
            ):
                raise ValueError(f"{where}/{fname}: expected 'data' (N, 3072) and '{label_key}' (N,)")
            images.append(data.astype(np.uint8, copy=False).reshape(-1, 3, 32, 32))
            labels.append(np.asarray(lab, dtype=np.int64))
        out[f"{split}_images"] = np.ascontiguousarray(np.concatenate(images))
        out[f"{split}_labels"] = np.concatenate(labels)
    num = 10 if name == "cifar10" else 100
    classes = CIFAR10_CLASSES if name == "cifar10" else [str(i) for i in range(num)]
    if meta_name in files:
        meta = unpickle_restricted(files[meta_name], f"{where}/{meta_name}")
        label_names = meta.get("label_names" if name == "cifar10" else "fine_label_names")
        if label_names is not None and len(label_names) == num:
            classes = [n.decode("latin-1") if isinstance(n, bytes) else str(n) for n in label_names]
    for split in ("train", "test"):
        lab = out[f"{split}_labels"]
        if len(lab) and (lab.min() < 0 or lab.max() >= num):
            raise ValueError(f"{where}: {split} labels outside 0..{num - 1}")
    out["classes"] = np.array(classes)
    return out
