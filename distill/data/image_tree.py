"""Image trees ``<split>/<class>/*.{png,jpg}``, as a folder or inside a tarball, decoded to uint8 arrays.

Label ids follow the sorted class-folder names (for CIFAR-10/100 the canonical order).
"""

from __future__ import annotations

import io
import tarfile
import zlib
from pathlib import Path, PurePosixPath

import numpy as np
from tqdm import tqdm

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
