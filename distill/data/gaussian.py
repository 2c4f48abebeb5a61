"""Synthetic training images: per-pixel Gaussian noise with the moments of a real dataset."""

from __future__ import annotations

import math

import numpy as np
import torch

from distill.data.dataset import Dataset, Split, stratified_indices


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
