"""Device selection, and the train/eval switch of modules, shared by every module."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; a CUDA device without CUDA is a one-line ValueError."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available: use --device cpu or auto")
    return dev


def has_conv2d(module: torch.nn.Module) -> bool:
    """Whether ``module`` holds an ``nn.Conv2d``: its inputs then run faster in channels-last format
    (CPU and cuDNN kernels), which `distill.probe.embed` uses for inference."""
    return any(isinstance(m, torch.nn.Conv2d) for m in module.modules())


@contextlib.contextmanager
def in_mode(*models: torch.nn.Module, training: bool = False) -> Iterator[None]:
    """Within: ``models`` in eval mode (train mode with ``training=True``); on exit every submodule
    has its own earlier mode back."""
    saved = [(m, m.training) for model in models for m in model.modules()]
    for model in models:
        model.train(training)
    try:
        yield
    finally:
        for m, flag in saved:
            m.training = flag
