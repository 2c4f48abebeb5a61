"""The in-memory dataset: `Split` and `Dataset` (uint8 images, int64 labels), class-balanced
subsets and exact per-channel statistics."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

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


def _env_paths(sub: str) -> list[Path]:
    """``$RTT_DATA/<sub>`` when ``RTT_DATA`` is set (the folder datasets are looked for in), else nothing."""
    env = os.environ.get("RTT_DATA")
    return [Path(env) / sub] if env else []
