"""The in-memory dataset: `Split` and `Dataset` (uint8 images, int64 labels), class-balanced
subsets, exact per-channel statistics, and batching with normalisation (uint8 pixels in,
normalised float32 batches out)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

from distill.device import resolve_device


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
        return replace(self, train=Split(self.train.images[idx], self.train.labels[idx]), classes=list(self.classes))

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, train={len(self.train)}, test={len(self.test)}, "
            f"in_shape={self.in_shape}, classes={self.num_classes}, "
            f"device={self.train.images.device})"
        )


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


def _make(name: str, train: Split, test: Split, classes: list[str]) -> Dataset:
    mean, std = channel_stats(train.images)
    return Dataset(name, train, test, list(classes), mean, std)


def _tensor(array: np.ndarray) -> Tensor:
    return torch.from_numpy(array if array.flags.writeable else array.copy())


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
