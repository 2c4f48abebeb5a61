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

import gzip
import hashlib
import io
import math
import os
import pickle
import struct
import tarfile
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from distill.device import resolve_device
from distill.registry import canonical_dataset, suggest

FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
MNIST_CLASSES = [str(i) for i in range(10)]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

_BASE_NAMES = ("cifar10", "cifar100", "fashion-mnist", "mnist")
_IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp"}
_TRAIN_DIRS = ("train", "training")
_TEST_DIRS = ("test", "testing", "val", "valid", "validation")
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
_CACHE_VERSION = "rtt-cache-v1"


# ----------------------------------------------------------------------------- containers


@dataclass
class Split:
    """One split: ``images`` uint8 (N, C, H, W) in pixel units 0..255, ``labels`` int64 (N,)."""

    images: Tensor
    labels: Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(
                f"Split.images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.shape != (len(self.images),):
            raise ValueError(
                f"Split.labels must be int64 of shape ({len(self.images)},), got "
                f"{self.labels.dtype} {tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: str | torch.device) -> Split:
        """A copy with images and labels on ``device`` ("auto" picks CUDA when present)."""
        device = resolve_device(device)
        return Split(self.images.to(device), self.labels.to(device))


@dataclass
class Dataset:
    """A dataset held in memory.

    ``mean``/``std`` are per channel, in [0, 1] pixel units, computed over every pixel of the
    full training split (before any subsetting), so a subset is normalised like the whole.
    """

    name: str
    train: Split
    test: Split
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def in_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.train.images.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        """Number of classes (the length of ``classes``)."""
        return len(self.classes)

    def to(self, device: str | torch.device) -> Dataset:
        """A copy with both splits on ``device`` ("auto" picks CUDA when present)."""
        return Dataset(self.name, self.train.to(device), self.test.to(device), list(self.classes), self.mean, self.std)

    def subset(self, n: int, seed: int = 0) -> Dataset:
        """Stratified subset of ``n`` training images (see `stratified_indices`); the test
        split, classes and mean/std are unchanged."""
        idx = stratified_indices(self.train.labels, n, self.num_classes, seed)
        idx = idx.to(self.train.labels.device)
        return Dataset(
            self.name,
            Split(self.train.images[idx], self.train.labels[idx]),
            self.test,
            list(self.classes),
            self.mean,
            self.std,
        )

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, train={len(self.train)}, test={len(self.test)}, "
            f"in_shape={self.in_shape}, classes={self.num_classes}, "
            f"device={self.train.images.device})"
        )


# ----------------------------------------------------------------------------- public API


def list_datasets() -> list[str]:
    """Names accepted by `load_dataset`."""
    return [*_BASE_NAMES, "gaussian", *(f"gaussian:{n}" for n in _BASE_NAMES)]


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
    key = _canonical(name)
    if key.startswith("gaussian"):
        source = key.partition(":")[2] or "cifar10"
        if source not in _BASE_NAMES:
            raise ValueError(f"unknown source {source!r} for gaussian noise; valid: {', '.join(_BASE_NAMES)}")
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


def normalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """``(images / 255 - mean) / std`` per channel, as float32 on the images' device.

    Args:
        images: uint8 (..., C, H, W); mean, std: C values in [0, 1] pixel units.
    """
    m, s = _stats_tensors(mean, std, images.shape[-3], images.device)
    return _normalize_with(images, m, s)


def shuffled_order(n: int, seed: int | None, device: str | torch.device = "cpu") -> Tensor:
    """The permutation of ``range(n)`` that `iterate` visits with ``shuffle=True`` and ``seed``
    (int64 (n,), drawn with a CPU ``torch.Generator`` so it does not depend on the device)."""
    gen = torch.Generator()
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    return torch.randperm(n, generator=gen).to(device)


def iterate(
    split: Split,
    batch_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    shuffle: bool = False,
    seed: int | None = None,
    drop_last: bool = False,
    device: str | torch.device = "cpu",
    with_index: bool = False,
    channels_last: bool = False,
) -> Iterator[tuple[Tensor, ...]]:
    """Yield (normalised float32 images (B, C, H, W), int64 labels (B,)) batches on ``device``.

    Slices the in-memory split; each uint8 batch is moved to ``device`` (nothing moves when the split
    already lives there, e.g. after ``Dataset.to("cuda")``) and normalised there, so only uint8 bytes
    ever cross the bus and no step waits on the host. ``shuffle`` permutes with
    `shuffled_order` (``seed`` None: a fresh random seed), so one pass visits every example
    exactly once. ``with_index``: also yield the batch's int64 row indices into ``split`` (B,), on
    the split's device. ``channels_last``: images in channels-last memory format (same values).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = resolve_device(device)
    n = len(split)
    m, s = _stats_tensors(mean, std, split.images.shape[1], device)
    order = shuffled_order(n, seed, split.images.device) if shuffle else None
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        if order is None:
            x, y = split.images[start : start + batch_size], split.labels[start : start + batch_size]
            idx = torch.arange(start, min(start + batch_size, stop), device=split.images.device) if with_index else None
        else:
            idx = order[start : start + batch_size]
            x, y = split.images[idx], split.labels[idx]
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        x = _normalize_with(x, m, s)
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        yield (x, y, idx) if with_index and idx is not None else (x, y)


def stratified_indices(labels: Tensor, n: int, num_classes: int, seed: int = 0) -> Tensor:
    """Sorted indices of ``n`` examples with class counts as equal as possible, chosen with ``seed``.

    Each class gets ``n // num_classes``; the ``n % num_classes`` leftover examples go one each to
    classes drawn at random with ``seed``. A class with too few examples gives all it has and the
    shortfall is spread over the others the same way.
    """
    labels = labels.cpu()
    if not 1 <= n <= len(labels):
        raise ValueError(f"subset size must be between 1 and {len(labels)} (the training split), got {n}")
    gen = torch.Generator().manual_seed(seed)
    members = [torch.nonzero(labels == c).flatten() for c in range(num_classes)]
    counts = torch.tensor([len(m) for m in members])
    quota = torch.zeros(num_classes, dtype=torch.long)
    left = n
    while left > 0:
        open_ = torch.nonzero(quota < counts).flatten()
        if len(open_) == 0:
            raise ValueError(f"labels outside 0..{num_classes - 1}: cannot draw {n} examples of {num_classes} classes")
        per = left // len(open_)
        if per == 0:
            pick = open_[torch.randperm(len(open_), generator=gen)[:left]]
            quota[pick] += 1
            break
        add = torch.minimum(counts[open_] - quota[open_], torch.tensor(per))
        quota[open_] += add
        left -= int(add.sum())
    chosen = [m[torch.randperm(len(m), generator=gen)[:q]] for m, q in zip(members, quota.tolist())]
    return torch.sort(torch.cat(chosen)).values


def channel_stats(images: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and (population) std of uint8 images (N, C, H, W), in [0, 1] units."""
    values = torch.arange(256, dtype=torch.float64) / 255
    means, stds = [], []
    for c in range(images.shape[1]):
        hist = torch.bincount(images[:, c].reshape(-1).cpu(), minlength=256).double()
        mean = float((hist * values).sum() / hist.sum())
        var = float((hist * (values - mean) ** 2).sum() / hist.sum())
        means.append(mean)
        stds.append(math.sqrt(var))
    return tuple(means), tuple(stds)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file of unsigned bytes (optionally gzipped) into a uint8 array of its shape."""
    path = Path(path)
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
            raw = f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise ValueError(f"{path}: corrupt or truncated gzip data ({err}); replace the file") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(
            f"{path}: not an IDX file (magic number {raw[:4].hex() or 'missing'}); expected an MNIST-style *-ubyte file"
        )
    if raw[2] != 0x08:
        raise ValueError(f"{path}: IDX element type 0x{raw[2]:02x} is not supported (only unsigned bytes, 0x08)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes); replace the file")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = math.prod(shape)
    if len(raw) - header != expected:
        raise ValueError(
            f"{path}: truncated or corrupt IDX file: shape {shape} needs {expected} data bytes, "
            f"found {len(raw) - header}; replace the file"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()


def cache_path(source: str | os.PathLike) -> Path:
    """Where the decoded copy of an image-tree folder or tarball ``source`` is written.

    ``$RTT_CACHE/<name>-<hash of the path>.npz`` when ``RTT_CACHE`` is set; otherwise beside the
    source as ``<source>.rtt-cache.npz`` when its folder is writable (a folder without any write
    permission bit counts as read-only, even for root), else
    ``${XDG_CACHE_HOME:-~/.cache}/random-teachers/<name>-<hash of the path>.npz``. The file holds
    the decoded uint8 arrays uncompressed (CIFAR-10: about 185 MB) and the source's path, size and
    mtime; a changed source makes it stale and it is rebuilt.
    """
    source = Path(source).resolve()
    if os.environ.get("RTT_CACHE"):
        return _user_cache(source)
    return _beside(source) if _writable(source.parent) else _user_cache(source)


# ----------------------------------------------------------------------------- IDX datasets

_IDX_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _load_idx_dataset(name: str, root: str | os.PathLike | None) -> Dataset:
    raw_dir = {"fashion-mnist": "FashionMNIST", "mnist": "MNIST"}[name]
    if root is None:
        folders = _env_paths(name) + [Path("/usr/share/datasets") / name]
    else:
        root = Path(root)
        folders = [root, root / name, root / raw_dir / "raw"]
    for folder in folders:
        if _idx_file(folder, _IDX_STEMS["train"][0]) is not None:
            break
    else:
        how = "run 'apt-get install dataset-fashion-mnist', or " if name == "fashion-mnist" else ""
        raise FileNotFoundError(
            f"{name} not found (tried: {', '.join(map(str, folders))}): {how}put its four IDX "
            f"files (train-images-idx3-ubyte.gz, ...) in DIR/{name} and set RTT_DATA=DIR, "
            "or pass root=DIR"
        )
    splits = {}
    for split, (img_stem, lab_stem) in _IDX_STEMS.items():
        files = [_idx_file(folder, stem) for stem in (img_stem, lab_stem)]
        missing = [stem for stem, f in zip((img_stem, lab_stem), files) if f is None]
        img_file, lab_file = files
        if img_file is None or lab_file is None:
            raise FileNotFoundError(
                f"{folder} lacks {' and '.join(missing)}[.gz]: it needs all four IDX files of {name}"
            )
        images, labels = read_idx(img_file), read_idx(lab_file)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(
                f"{files[0]} / {files[1]}: expected images (N, H, W) and labels (N,), got "
                f"{images.shape} and {labels.shape}"
            )
        splits[split] = Split(torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels).long())
    classes = FASHION_MNIST_CLASSES if name == "fashion-mnist" else MNIST_CLASSES
    return _make(name, splits["train"], splits["test"], classes)


def _idx_file(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


# ----------------------------------------------------------------------------- CIFAR

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


def _member_bytes(tf: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    """The contents of a regular file of an open tarball."""
    f = tf.extractfile(member)
    if f is None:  # not a regular file: the callers only pass those
        raise ValueError(f"{member.name} in the tarball is not a regular file")
    return f.read()


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
        items = []
        for split_names in (_TRAIN_DIRS, _TEST_DIRS):
            split_dir = _tree_split_dir(source, split_names)
            for cls_dir in sorted(p for p in (split_dir.iterdir() if split_dir else []) if p.is_dir()):
                for f in sorted(cls_dir.iterdir()):
                    if f.suffix.lower() in _IMAGE_EXTS and not f.name.startswith("."):
                        items.append((split_names[0], cls_dir.name, f.name, f.read_bytes()))
        return _decode_tree(items, source)
    pickle_dir = _PICKLE_DIRS[name]
    wanted = set(sum(_PICKLE_FILES[name][:2], [])) | {_PICKLE_FILES[name][2]}
    pickles: dict[str, bytes] = {}
    images: dict[tuple[str, ...], list] = {}
    try:
        with tarfile.open(source, "r|*") as tf:
            for member in tqdm(tf, desc=f"reading {source.name}", unit=" files", disable=None):
                if not member.isfile():
                    continue
                parts = PurePosixPath(member.name).parts
                if len(parts) >= 2 and parts[-2] == pickle_dir and parts[-1] in wanted:
                    pickles[parts[-1]] = _member_bytes(tf, member)
                elif (
                    len(parts) >= 3
                    and parts[-3].lower() in _TRAIN_DIRS + _TEST_DIRS
                    and PurePosixPath(parts[-1]).suffix.lower() in _IMAGE_EXTS
                    and not any(p.startswith(".") or p == "__MACOSX" for p in parts)
                ):
                    split = "train" if parts[-3].lower() in _TRAIN_DIRS else "test"
                    images.setdefault(parts[:-3], []).append((split, parts[-2], parts[-1], _member_bytes(tf, member)))
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        raise ValueError(f"{source}: unreadable tarball ({err}); replace the file") from None
    if pickles:
        return _cifar_pickle_arrays(name, pickles, source)
    if len(images) > 1:
        raise ValueError(
            f"{source}: several image trees inside ({', '.join('/'.join(p) or '.' for p in images)}); "
            "keep one train/ + test/ pair"
        )
    return _decode_tree(next(iter(images.values()), []), source)


def _decode_tree(items: list[tuple[str, str, str, bytes]], where: Path) -> dict[str, np.ndarray]:
    from PIL import Image

    items.sort(key=lambda it: it[:3])
    classes = sorted({cls for split, cls, _, _ in items if split == "train"})
    for split in ("train", "test"):
        if not any(it[0] == split for it in items):
            raise ValueError(f"{where}: no images under {split}/<class>/ (expected {split}/<class>/*.png|jpg)")
    extra = sorted({cls for split, cls, _, _ in items if split == "test"} - set(classes))
    if extra:
        raise ValueError(f"{where}: test classes {extra} have no train/ folder")
    first = Image.open(io.BytesIO(items[0][3]))
    mode = "L" if first.mode in ("1", "L", "I", "I;16", "F") else "RGB"
    size = first.size
    pixels = []
    for split, cls, fname, blob in tqdm(items, desc=f"decoding {where.name}", unit=" img", disable=None):
        try:
            with Image.open(io.BytesIO(blob)) as img:
                if img.size != size:
                    raise ValueError(
                        f"{where}: {split}/{cls}/{fname} is {img.size}, others are {size}; "
                        "all images must have one size"
                    )
                pixels.append(np.asarray(img.convert(mode) if img.mode != mode else img))
        except (OSError, SyntaxError) as err:  # Pillow's errors for unreadable images
            raise ValueError(f"{where}: cannot decode {split}/{cls}/{fname} ({err}); replace the file") from None
    stacked = np.stack(pixels)
    stacked = stacked[:, None] if stacked.ndim == 3 else stacked.transpose(0, 3, 1, 2)
    is_train = np.array([it[0] == "train" for it in items])
    class_id = {cls: i for i, cls in enumerate(classes)}
    labels = np.array([class_id[it[1]] for it in items], dtype=np.int64)
    return {
        "train_images": np.ascontiguousarray(stacked[is_train]),
        "train_labels": labels[is_train],
        "test_images": np.ascontiguousarray(stacked[~is_train]),
        "test_labels": labels[~is_train],
        "classes": np.array(classes),
    }


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


def _latin1_encode(text: object, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    # Protocol-2 pickles written by Python 3 store bytes as _codecs.encode(str, "latin1").
    if not isinstance(text, str) or encoding.lower().replace("_", "-") not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is only allowed for latin-1 text")
    return text.encode("latin-1")


_ARRAY_KINDS = "biufSU"  # numbers, booleans, byte and text strings: nothing that holds objects


class _NdarrayToken:
    """Stands for ``numpy.ndarray`` inside a pickle: it may be rebuilt through ``_reconstruct``
    (how numpy pickles arrays) but not called to allocate an array of any shape."""

    def __new__(cls, *args: object, **kw: object) -> _NdarrayToken:
        raise pickle.UnpicklingError("numpy.ndarray may only be rebuilt from its bytes, not called")


def _bounded_array(shape: object, dtype: np.dtype, limit: int) -> tuple[int, ...]:
    """``shape`` as a tuple, if an array of that shape and ``dtype`` fits in ``limit`` bytes."""
    if isinstance(shape, int):
        shape = (shape,)
    if not isinstance(shape, tuple) or len(shape) > 32 or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise pickle.UnpicklingError(f"array shape {shape!r} is not a tuple of sizes")
    nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if nbytes > limit:
        raise pickle.UnpicklingError(
            f"array of shape {shape} ({nbytes} bytes) is larger than the {limit} bytes of the file"
        )
    return shape


def _plain_dtype(*args: object, **kw: object) -> np.dtype:
    d = np.dtype(*args, **kw)  # type: ignore[call-overload]
    if d.kind not in _ARRAY_KINDS or d.fields is not None or d.subdtype is not None:
        raise pickle.UnpicklingError(f"array dtype {d} is not a plain numeric or string dtype")
    return d


def _numpy_constructors() -> tuple[object, object, object]:
    probe = np.zeros(1, dtype=np.uint8)
    return probe.__reduce__()[0], probe.__reduce_ex__(5)[0], np.uint8(0).__reduce__()[0]


_RECONSTRUCT, _FROMBUFFER, _SCALAR = _numpy_constructors()


def _allowed_globals(limit: int) -> dict[tuple[str, str], object]:
    """The globals a CIFAR pickle of ``limit`` bytes may name; array constructors are wrapped so that
    no array larger than the bytes present, and none of an object-holding dtype, can be made."""

    def reconstruct(subtype: object, shape: object, dtype: object) -> np.ndarray:
        if subtype is not _NdarrayToken:
            raise pickle.UnpicklingError("_reconstruct may only rebuild numpy.ndarray")
        d = _plain_dtype(dtype)
        return _RECONSTRUCT(np.ndarray, _bounded_array(shape, d, limit), d)  # type: ignore[operator]

    def frombuffer(buf: object, dtype: object, shape: object, order: str) -> np.ndarray:
        d = _plain_dtype(dtype)
        shape = _bounded_array(shape, d, min(limit, memoryview(buf).nbytes))  # type: ignore[arg-type]
        return _FROMBUFFER(buf, d, shape, order)  # type: ignore[operator]

    def scalar(dtype: object, *args: object) -> object:
        return _SCALAR(_plain_dtype(dtype), *args)  # type: ignore[operator]

    allowed: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): _NdarrayToken,
        ("numpy", "dtype"): _plain_dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    for mod in ("numpy.core", "numpy._core"):
        allowed[(f"{mod}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{mod}.multiarray", "scalar")] = scalar
        allowed[(f"{mod}.numeric", "_frombuffer")] = frombuffer
    return allowed


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Builds only builtin containers, strings, numbers and numpy arrays of plain dtypes no larger
    than the file: every other global (functions, classes) is refused before it is imported or called."""

    def __init__(self, blob: bytes):
        super().__init__(io.BytesIO(blob), encoding="latin1")
        self._allowed = _allowed_globals(len(blob))

    def find_class(self, module: str, name: str) -> object:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing global {module}.{name}") from None


def _check_arrays(obj: object, limit: int, depth: int = 0) -> None:
    """After loading: every array holds a plain dtype and no more bytes than the file."""
    if depth > 20:
        raise pickle.UnpicklingError("containers nest too deeply")
    if isinstance(obj, np.ndarray):
        _plain_dtype(obj.dtype)
        _bounded_array(tuple(obj.shape), obj.dtype, limit)
    elif isinstance(obj, dict):
        for v in obj.values():
            _check_arrays(v, limit, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _check_arrays(v, limit, depth + 1)


def unpickle_restricted(blob: bytes, where: str = "<bytes>") -> dict:
    """Unpickle a CIFAR batch (a dict of numpy arrays, lists, bytes) without running foreign code.

    Accepts Python 2 (latin-1) and Python 3 pickles of any protocol; keys come back as str.
    """
    try:
        obj = _ArrayOnlyUnpickler(blob).load()
        _check_arrays(obj, len(blob))
    except Exception as err:  # noqa: BLE001 - any failure means the file is not a CIFAR batch
        raise ValueError(
            f"{where}: not a CIFAR batch pickle ({type(err).__name__}: {err}); only numpy arrays, "
            "lists, dicts, bytes and numbers may appear in it"
        ) from None
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a dict in the CIFAR batch pickle, found {type(obj).__name__}")
    return {k.decode("latin-1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


# ----------------------------------------------------------------------------- gaussian noise


def _gaussian_like(source: Dataset, n: int | None, seed: int) -> Dataset:
    total = len(source.train)
    if n is None:
        labels = source.train.labels.clone()
    elif n <= total:
        labels = source.train.labels[stratified_indices(source.train.labels, n, source.num_classes, seed)]
    else:
        labels = source.train.labels.repeat(math.ceil(n / total))[:n]
    c = source.in_shape[0]
    params = [_clamped_normal_params(m * 255, s * 255, 0.0, 255.0) for m, s in zip(source.mean, source.std)]
    mean = torch.tensor([p[0] for p in params], dtype=torch.float32).view(1, c, 1, 1)
    std = torch.tensor([p[1] for p in params], dtype=torch.float32).view(1, c, 1, 1)
    gen = torch.Generator().manual_seed(seed)
    images = torch.empty((len(labels), *source.in_shape), dtype=torch.uint8)
    chunk = 4096  # fixed so that a seed always gives the same images
    for start in range(0, len(labels), chunk):
        block = images[start : start + chunk]
        noise = torch.randn(block.shape, generator=gen) * std + mean
        block.copy_(noise.round_().clamp_(0, 255).to(torch.uint8))
    return Dataset(
        f"gaussian:{source.name}", Split(images, labels), source.test, list(source.classes), source.mean, source.std
    )


def clamped_normal_moments(mu: float, sigma: float, lo: float, hi: float) -> tuple[float, float]:
    """Mean and std of clamp(X, lo, hi) for X ~ N(mu, sigma^2) (closed form)."""
    if sigma <= 0:
        y = min(max(mu, lo), hi)
        return y, 0.0
    a, b = (lo - mu) / sigma, (hi - mu) / sigma
    inside = _cdf(b) - _cdf(a)
    first = lo * _cdf(a) + hi * (1 - _cdf(b)) + mu * inside + sigma * (_pdf(a) - _pdf(b))
    second = (
        lo**2 * _cdf(a)
        + hi**2 * (1 - _cdf(b))
        + mu**2 * inside
        + 2 * mu * sigma * (_pdf(a) - _pdf(b))
        + sigma**2 * (inside + a * _pdf(a) - b * _pdf(b))
    )
    return first, math.sqrt(max(second - first**2, 0.0))


def _cdf(z: float) -> float:
    return 0.5 * math.erfc(-z / math.sqrt(2))


def _pdf(z: float) -> float:
    return math.exp(-z * z / 2) / math.sqrt(2 * math.pi)


def _clamped_normal_params(mean: float, std: float, lo: float, hi: float) -> tuple[float, float]:
    """(mu, sigma) whose normal, clamped to [lo, hi], has the given mean and std (fallback: as given)."""
    if std <= 0 or not lo < mean < hi:
        return mean, std
    from scipy.optimize import root

    def gap(p: np.ndarray) -> list[float]:
        m, s = clamped_normal_moments(float(p[0]), math.exp(p[1]), lo, hi)
        return [(m - mean) / std, math.log(max(s, 1e-12) / std)]

    sol = root(gap, [mean, math.log(std)], method="hybr")
    if not sol.success or max(abs(v) for v in gap(sol.x)) > 1e-6:
        return mean, std  # unreachable target (std too large for the range): plain N(mean, std)
    return float(sol.x[0]), math.exp(sol.x[1])


# ----------------------------------------------------------------------------- cache


def _source_stamp(source: Path) -> str:
    """Identity of a source: resolved path, total size and latest mtime (over all files of a folder)."""
    source = source.resolve()
    if source.is_dir():
        size = mtime = count = 0
        for dirpath, _, files in os.walk(source):
            for f in files:
                st = os.stat(os.path.join(dirpath, f))
                size, mtime, count = size + st.st_size, max(mtime, st.st_mtime_ns), count + 1
        return f"{_CACHE_VERSION}|{source}|{size}|{mtime}|{count}"
    st = source.stat()
    return f"{_CACHE_VERSION}|{source}|{st.st_size}|{st.st_mtime_ns}"


def _writable(folder: Path) -> bool:
    try:
        return os.access(folder, os.W_OK) and bool(folder.stat().st_mode & 0o222)
    except OSError:
        return False


def _beside(source: Path) -> Path:
    source = source.resolve()
    return source.with_name(source.name + ".rtt-cache.npz")


def _user_cache(source: Path) -> Path:
    source = source.resolve()
    env = os.environ.get("RTT_CACHE")
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "random-teachers"
    digest = hashlib.sha1(str(source).encode()).hexdigest()[:12]
    return base / f"{source.name}-{digest}.npz"


def _read_cache(path: Path, stamp: str) -> dict[str, np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["stamp"]) != stamp:
                return None
            return {k: z[k] for k in z.files if k != "stamp"}
    except Exception:  # noqa: BLE001 - a damaged cache is simply rebuilt
        return None


def _write_cache(source: Path, stamp: str, arrays: dict[str, np.ndarray]) -> Path | None:
    targets = [cache_path(source)]
    if targets[0] != _user_cache(source):
        targets.append(_user_cache(source))
    for target in targets:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        except OSError:
            continue
        try:
            with os.fdopen(fd, "wb") as f:
                # numpy's stub reads a str-keyed ** mapping as possibly its allow_pickle flag
                np.savez(f, stamp=np.array(stamp), **arrays)  # type: ignore[arg-type]
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
            return target
        except BaseException as err:
            Path(tmp).unlink(missing_ok=True)
            if not isinstance(err, OSError):
                raise
    return None  # no writable place: the data is still returned, just decoded again next time


# ----------------------------------------------------------------------------- helpers


def _make(name: str, train: Split, test: Split, classes: list[str]) -> Dataset:
    mean, std = channel_stats(train.images)
    return Dataset(name, train, test, list(classes), mean, std)


def _tensor(array: np.ndarray) -> Tensor:
    return torch.from_numpy(array if array.flags.writeable else array.copy())


def _canonical(name: str) -> str:
    return canonical_dataset(name)


def _env_paths(sub: str) -> list[Path]:
    env = os.environ.get("RTT_DATA")
    return [Path(env) / sub] if env else []


def _tree_split_dir(root: Path, names: tuple[str, ...]) -> Path | None:
    if not root.is_dir():
        return None
    for child in root.iterdir():
        if child.is_dir() and child.name.lower() in names and any(p.is_dir() for p in child.iterdir()):
            return child
    return None


def _stats_tensors(
    mean: Sequence[float], std: Sequence[float], channels: int, device: torch.device
) -> tuple[Tensor, Tensor]:
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"mean/std need {channels} values (one per channel), got {len(mean)} and {len(std)}")
    m = torch.tensor(list(mean), dtype=torch.float32, device=device).view(channels, 1, 1)
    s = torch.tensor(list(std), dtype=torch.float32, device=device).view(channels, 1, 1)
    return m, s


def _normalize_with(images: Tensor, m: Tensor, s: Tensor) -> Tensor:
    if images.dtype != torch.uint8:
        raise ValueError(f"normalize expects uint8 images in 0..255, got {images.dtype}")
    return images.to(torch.float32).div_(255).sub_(m).div_(s)
