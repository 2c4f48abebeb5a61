"""What the distillation and the supervised training loops share: per-epoch seeds, the device set-up
(bf16 autocast, channels-last, cuDNN autotuning), the epoch bar and the error a non-finite loss raises."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from distill.config import RunError
from distill.device import has_conv2d
from distill.meter import NonFinite

SEED_STRIDE = 1_000_003  # per-epoch seeds: seed * stride + epoch


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch`` (data order, augmentation draws) in a run seeded with ``seed``."""
    return int(seed) * SEED_STRIDE + int(epoch)


def autocast(precision: str, device: torch.device) -> Any:
    """bf16 autocast for ``precision="bf16"`` on CUDA; elsewhere a context that changes nothing."""
    if precision == "bf16" and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def use_channels_last(device: torch.device, model: nn.Module) -> bool:
    """Channels-last memory format for training: on CUDA, for networks with 2-d convolutions."""
    return device.type == "cuda" and has_conv2d(model)


def prepare_kernels(device: torch.device, *models: nn.Module) -> bool:
    """Put ``models`` in channels-last format when `use_channels_last` says so for the first one, and
    let cuDNN pick its fastest kernels on CUDA unless deterministic algorithms are asked for.
    Returns whether the models are channels-last (their inputs should then be too)."""
    channels_last = use_channels_last(device, models[0])
    if channels_last:
        for model in models:
            model.to(memory_format=torch.channels_last)
    if device.type == "cuda" and not torch.are_deterministic_algorithms_enabled():
        torch.backends.cudnn.benchmark = True
    return channels_last


def epoch_bar(epochs: range, desc: str, progress: bool | None, start: int = 0, total: int | None = None) -> Any:
    """A tqdm bar over ``epochs`` (``progress`` None: on a terminal only; False: hidden)."""
    disable = None if progress is None else not progress
    return tqdm(epochs, desc=desc, unit="epoch", disable=disable, initial=start, total=total)


@contextlib.contextmanager
def nonfinite_as_run_error(message: Callable[[NonFinite], str]) -> Iterator[None]:
    """Within: a `NonFinite` loss becomes a RunError saying ``message(error)``."""
    try:
        yield
    except NonFinite as bad:
        raise RunError(message(bad)) from None
