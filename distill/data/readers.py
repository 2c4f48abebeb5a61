"""The file readers: IDX files (``*-ubyte``, optionally gzipped: MNIST, Fashion-MNIST), CIFAR
python batches, and image trees ``<split>/<class>/*.{png,jpg}`` as a folder or in a tarball (label
ids follow the sorted class-folder names, for CIFAR-10/100 the canonical order). Decoded trees and
tarballs go through the cache."""

from __future__ import annotations

import gzip
import io
import math
import os
import struct
import tarfile
import zlib
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from tqdm import tqdm

from distill.data.cache import _beside, _read_cache, _source_stamp, _user_cache, _write_cache
from distill.data.dataset import Dataset, Split, _make, _tensor
from distill.data.unpickle import unpickle_restricted


def _env_paths(sub: str) -> list[Path]:
    """``$RTT_DATA/<sub>`` when ``RTT_DATA`` is set (the folder datasets are looked for in), else nothing."""
    env = os.environ.get("RTT_DATA")
    return [Path(env) / sub] if env else []


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


_IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp"}
_TRAIN_DIRS = ("train", "training")
_TEST_DIRS = ("test", "testing", "val", "valid", "validation")
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")

# one image of a tree: (split "train" | "test", class folder, file name, encoded bytes)
TreeItem = tuple[str, str, str, bytes]


def _tree_split_dir(root: Path, names: tuple[str, ...]) -> Path | None:
    if not root.is_dir():
        return None
    for child in root.iterdir():
        if child.is_dir() and child.name.lower() in names and any(p.is_dir() for p in child.iterdir()):
            return child
    return None


def _read_tree(source: Path) -> list[TreeItem]:
    """The images of the tree in folder ``source``, hidden files left out."""
    items = []
    for split_names in (_TRAIN_DIRS, _TEST_DIRS):
        split_dir = _tree_split_dir(source, split_names)
        for cls_dir in sorted(p for p in (split_dir.iterdir() if split_dir else []) if p.is_dir()):
            for f in sorted(cls_dir.iterdir()):
                if f.suffix.lower() in _IMAGE_EXTS and not f.name.startswith("."):
                    items.append((split_names[0], cls_dir.name, f.name, f.read_bytes()))
    return items


def _member_bytes(tf: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    """The contents of a regular file of an open tarball."""
    f = tf.extractfile(member)
    if f is None:  # not a regular file: the callers only pass those
        raise ValueError(f"{member.name} in the tarball is not a regular file")
    return f.read()


def _read_tarball(
    source: Path, pickle_dir: str, wanted: set[str]
) -> tuple[dict[str, bytes], dict[tuple[str, ...], list[TreeItem]]]:
    """One streaming pass over a tarball: the files ``wanted`` inside a ``pickle_dir`` folder
    (by name), and the images of every tree inside (by the folder above the tree's split folders)."""
    pickles: dict[str, bytes] = {}
    images: dict[tuple[str, ...], list[TreeItem]] = {}
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
    return pickles, images


def _decode_tree(items: list[TreeItem], where: Path) -> dict[str, np.ndarray]:
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
            arrays = _cifar_pickle_arrays(name, files, path)
        else:
            arrays = _cached_arrays(name, path, kind)
        train = Split(_tensor(arrays["train_images"]), _tensor(arrays["train_labels"]).long())
        test = Split(_tensor(arrays["test_images"]), _tensor(arrays["test_labels"]).long())
        return _make(name, train, test, [str(c) for c in arrays["classes"]])
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


def _cached_arrays(name: str, source: Path, kind: str) -> dict[str, np.ndarray]:
    """The decoded arrays of an image tree or tarball, from the cache when it is fresh."""
    stamp = _source_stamp(source)
    for candidate in (_beside(source), _user_cache(source)):
        arrays = _read_cache(candidate, stamp)
        if arrays is not None:
            break
    else:
        arrays = _decode_source(name, source, kind)
        _write_cache(source, stamp, arrays)
    return arrays


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
