"""The linear probe: one ``nn.Linear`` trained with AdamW on frozen features, and its test accuracy."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from distill.features import _check_finite, _check_xy, standardize_features
from distill.optim import AdamW

# Rows per batch when evaluating a linear layer on a whole feature set.
_EVAL_BATCH = 8192


def _init_linear(layer: nn.Linear, gen: torch.Generator) -> None:
    # Same distribution as nn.Linear's default init, drawn from a private generator.
    bound = 1.0 / math.sqrt(layer.in_features) if layer.in_features > 0 else 0.0
    with torch.no_grad():
        layer.weight.uniform_(-bound, bound, generator=gen)
        layer.bias.uniform_(-bound, bound, generator=gen)


@torch.no_grad()
def _full_loss(layer: nn.Linear, x: Tensor, y: Tensor) -> float:
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for i in range(0, x.shape[0], _EVAL_BATCH):
        total += F.cross_entropy(layer(x[i : i + _EVAL_BATCH]), y[i : i + _EVAL_BATCH], reduction="sum").double()
    return float(total) / x.shape[0]


@torch.no_grad()
def _accuracy(layer: nn.Linear, x: Tensor, y: Tensor) -> float:
    correct = torch.zeros((), dtype=torch.long, device=x.device)
    for i in range(0, x.shape[0], _EVAL_BATCH):
        correct += (layer(x[i : i + _EVAL_BATCH]).argmax(dim=1) == y[i : i + _EVAL_BATCH]).sum()
    return int(correct) / x.shape[0]


def fit_linear(
    train_x: Tensor,
    train_y: Tensor,
    *,
    epochs: int = 10,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    batch_size: int = 256,
    seed: int = 0,
    until_convergence: bool = False,
    max_epochs: int = 200,
    tol: float = 1e-4,
    num_classes: int | None = None,
    device: str | torch.device = "cpu",
    reshuffle: bool = True,
) -> tuple[nn.Linear, list[float]]:
    """Train one ``nn.Linear`` on features ``train_x`` (N, D) and labels ``train_y`` (N,).

    AdamW (``lr``, ``weight_decay``) on the mean cross-entropy over shuffled mini-batches of
    ``batch_size`` (the last one may be smaller). Initialisation (nn.Linear's default
    uniform(+-1/sqrt(D))) and shuffling use a ``torch.Generator`` seeded with ``seed``; the
    global RNG is untouched, so results are deterministic for a seed on a given device.
    ``reshuffle=False``: one order is drawn before the first epoch and its batches are replayed in
    every epoch (the authors' probe, which trains on a list of batches embedded once).

    ``until_convergence=False`` trains exactly ``epochs`` epochs. ``until_convergence=True``
    ignores ``epochs``: the mean cross-entropy on the full training set is evaluated before
    training and after every epoch, and training stops after the first epoch whose loss L
    satisfies |L_prev - L| <= tol * L_prev, or after ``max_epochs`` epochs.

    Returns:
        The layer (on ``device``, eval mode) and the full-train losses [L_0, L_1, ...]
        (L_0 before training; one per epoch run), which are recorded only when
        ``until_convergence=True`` (empty list otherwise).
    """
    _check_xy(train_x, train_y, "train")
    if train_x.shape[0] == 0:
        raise ValueError("train_x is empty; pass at least one training point")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n_epochs = max_epochs if until_convergence else epochs
    if n_epochs < 0:
        raise ValueError(f"{'max_epochs' if until_convergence else 'epochs'} must be >= 0, got {n_epochs}")
    _check_finite(train_x, "train_x")
    dev = torch.device(device)
    x, y = train_x.to(dev).float(), train_y.to(dev).long()
    c = int(y.max()) + 1 if num_classes is None else int(num_classes)
    if int(y.min()) < 0 or int(y.max()) >= c:
        raise ValueError(f"train_y must hold labels in 0..{c - 1}; pass a larger num_classes")

    gen = torch.Generator(device="cpu").manual_seed(seed)
    layer = torch.nn.utils.skip_init(nn.Linear, x.shape[1], c)  # keeps the global RNG untouched
    _init_linear(layer, gen)
    layer.to(dev)
    opt = AdamW(layer.parameters(), lr=lr, weight_decay=weight_decay)  # torch's update, no torch._dynamo import
    n = x.shape[0]
    losses = [_full_loss(layer, x, y)] if until_convergence else []
    order: Tensor | None = None
    for _ in tqdm(range(n_epochs), desc="linear probe", leave=False, disable=True if n * n_epochs < 10**7 else None):
        if reshuffle or order is None:
            order = torch.randperm(n, generator=gen).to(dev)
        for i in range(0, n, batch_size):
            # a gather per batch: a whole-epoch gather of (N, D) costs a fresh N x D buffer every epoch
            j = order[i : i + batch_size]
            loss = F.cross_entropy(layer(x[j]), y[j])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if until_convergence:
            losses.append(_full_loss(layer, x, y))
            if abs(losses[-2] - losses[-1]) <= tol * abs(losses[-2]):
                break
    return layer.eval(), losses


def linear_probe(
    train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, *, standardize: bool = False, **options: Any
) -> float:
    """Test accuracy of a linear classifier trained on frozen features (see `fit_linear`).

    ``standardize=True`` first applies `standardize_features` (per-feature mean and
    std of the TRAIN features) to both splits. ``num_classes`` defaults to one more than
    the largest label in either split. ``options``: the keywords of `fit_linear` (``epochs``,
    ``lr``, ``weight_decay``, ``batch_size``, ``seed``, ``until_convergence``, ``max_epochs``,
    ``tol``, ``num_classes``, ``device``, ``reshuffle``), with its defaults.
    """
    _check_xy(train_x, train_y, "train")
    _check_xy(test_x, test_y, "test")
    if test_x.shape[1] != train_x.shape[1]:
        raise ValueError(
            f"test_x has {test_x.shape[1]} features but train_x has {train_x.shape[1]}; embed both with the same model"
        )
    if test_x.shape[0] == 0:
        raise ValueError("test_x is empty; pass at least one test point")
    _check_finite(test_x, "test_x")
    if standardize:
        train_x, test_x = standardize_features(train_x, test_x)
    if options.get("num_classes") is None and train_y.numel():
        options["num_classes"] = int(max(int(train_y.max()), int(test_y.max()))) + 1
    layer, _ = fit_linear(train_x, train_y, **options)
    dev = torch.device(options.get("device", "cpu"))
    return _accuracy(layer, test_x.to(dev).float(), test_y.to(dev).long())
