"""IDX files (``*-ubyte``, optionally gzipped): MNIST and Fashion-MNIST."""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from distill.data.dataset import Dataset, Split, _env_paths, _make

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
