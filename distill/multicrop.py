"""DINO's multicrop views of a batch, drawn on the batch's device with a seeded CPU generator."""

from __future__ import annotations

import math

import torch


def multicrop(
    x: torch.Tensor, n_global: int, n_local: int, generator: torch.Generator, local_size: int | None = None
) -> list[torch.Tensor]:
    """DINO-style views of a batch (B, C, H, W): per-image random resized crops (scale 0.4-1 for
    global views at full size, 0.05-0.4 for local views at ~3/7 size) and random horizontal flips,
    done for the whole batch at once with ``torchvision.ops.roi_align``."""
    from torchvision.ops import roi_align

    b, _, h, w = x.shape
    views = []
    local_size = local_size or max(4, round(h * 3 / 7))
    for i in range(n_global + n_local):
        lo, hi, size = (0.4, 1.0, h) if i < n_global else (0.05, 0.4, local_size)
        area = (lo + (hi - lo) * torch.rand(b, generator=generator)) * h * w
        logr = math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * torch.rand(b, generator=generator)
        ratio = torch.exp(logr)
        cw = torch.sqrt(area * ratio).clamp(1, w)
        ch = torch.sqrt(area / ratio).clamp(1, h)
        x0 = torch.rand(b, generator=generator) * (w - cw)
        y0 = torch.rand(b, generator=generator) * (h - ch)
        boxes = torch.stack([torch.arange(b, dtype=torch.float32), x0, y0, x0 + cw, y0 + ch], 1).to(x)
        v = roi_align(x, boxes, output_size=size, spatial_scale=1.0, sampling_ratio=2, aligned=True)
        flip = (torch.rand(b, generator=generator) < 0.5).to(x.device)
        views.append(torch.where(flip[:, None, None, None], v.flip(-1), v))
    return views
