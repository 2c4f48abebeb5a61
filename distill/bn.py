"""BatchNorm running-statistics re-estimation (the BN "reset" used by probes and landscape paths)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from distill.device import in_mode

_BN = nn.modules.batchnorm._BatchNorm


def has_batchnorm(model: nn.Module) -> bool:
    """True when ``model`` holds at least one BatchNorm layer."""
    return any(isinstance(m, _BN) for m in model.modules())


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[torch.Tensor | tuple]) -> nn.Module:
    """Re-estimate every BatchNorm layer's running mean and variance on ``batches``.

    Same estimate as ``torch.optim.swa_utils.update_bn``: statistics are reset and then
    averaged cumulatively (equal weight per batch) over the batches. ``batches`` yields
    normalised float images (B, C, H, W) or tuples whose first item is such a tensor.
    The model's train/eval flags are restored afterwards; weights are untouched.

    Returns:
        ``model`` (modified in place). Networks without BN are returned unchanged.
    """
    layers = [m for m in model.modules() if isinstance(m, _BN)]
    if not layers:
        return model
    momenta = {m: m.momentum for m in layers}
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    seen = False
    with in_mode(model, training=True):
        for batch in batches:
            model(batch[0] if isinstance(batch, (tuple, list)) else batch)
            seen = True
    for m, mom in momenta.items():
        m.momentum = mom
    if not seen:
        raise ValueError("recalibrate_bn got no batches: pass at least one batch of training images")
    return model
