"""Batching and normalisation of a `Split`: uint8 pixels in, normalised float32 batches out."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from distill.data.dataset import Split
from distill.device import resolve_device


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
