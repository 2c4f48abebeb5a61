"""Features for probing: embeddings of uint8 images by a frozen module, their checks and standardisation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from distill.device import has_conv2d

# Number of images above which embed() shows a progress bar.
_BAR_MIN_ITEMS = 8192
# Features whose train std is below this are left unscaled by standardisation
# (std replaced by 1), as scikit-learn's StandardScaler does for constant features.
_STD_FLOOR = 1e-6


def _module_device(module: nn.Module) -> torch.device | None:
    for t in module.parameters():
        return t.device
    for b in module.buffers():
        return b.device
    return None


def _channel_stats(values: Sequence[float] | Tensor | float, channels: int, name: str, device: torch.device) -> Tensor:
    t = torch.as_tensor(values, dtype=torch.float32, device=device).flatten()
    if t.numel() == 1:
        t = t.expand(channels)
    if t.numel() != channels:
        raise ValueError(
            f"{name} has {t.numel()} entries but the images have {channels} channels; pass one value per channel"
        )
    return t.view(1, channels, 1, 1)


@torch.no_grad()
def embed(
    backbone: nn.Module,
    images: Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 1024,
    device: str | torch.device | None = "cpu",
    out_device: str | torch.device | None = "cpu",
    channels_last: bool | None = None,
) -> Tensor:
    """Embed uint8 images (N, C, H, W) with ``backbone``; returns float32 (N, D) on ``out_device``
    (the CPU by default; None: where the forward passes ran, so probes can stay on the device).

    Pixels are normalised as ``(x / 255 - mean) / std`` per channel (mean/std in units of
    [0, 1] intensity). The module runs in whatever train/eval mode it is in: the caller
    decides (a teacher's BN may deliberately be in eval mode, a student's in train mode).
    Nothing is switched, so the mode is the same afterwards; note that BN layers in train
    mode still update their running statistics, as they would in any forward pass.
    Outputs with more than two dimensions are flattened to (N, D).

    ``device`` is where the forward passes run; the backbone must already live there
    (it is not moved). ``device=None`` uses the backbone's own device.

    ``channels_last``: feed each batch in channels-last memory format (same values; the module's
    weights are not touched). None: when the backbone has a 2-d convolution, whose CPU and cuDNN
    kernels run faster on it (``bench_probe`` measures the ratio); outputs agree with the default
    format to float32 rounding.
    """
    if images.dim() != 4:
        raise ValueError(
            f"images must have shape (N, C, H, W), got {tuple(images.shape)}; "
            f"add a channel dimension with images.unsqueeze(1)"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    own = _module_device(backbone)
    dev = torch.device(device) if device is not None else (own or torch.device("cpu"))
    if own is not None and own != dev and not (own.type == dev.type and dev.index is None):
        raise ValueError(
            f"backbone is on {own} but device={str(dev)!r}; "
            f"move it with backbone.to({str(dev)!r}) or pass device={str(own)!r}"
        )
    n, c = images.shape[0], images.shape[1]
    m = _channel_stats(mean, c, "mean", dev)
    s = _channel_stats(std, c, "std", dev)
    target = dev if out_device is None else torch.device(out_device)
    if channels_last is None:
        channels_last = has_conv2d(backbone)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    was_training = [(mod, mod.training) for mod in backbone.modules()]
    out: list[Tensor] = []
    starts = range(0, n, batch_size)
    for i in tqdm(starts, desc="embed", leave=False, disable=True if n < _BAR_MIN_ITEMS else None):
        x = images[i : i + batch_size].to(dev, non_blocking=True).float().div_(255).sub_(m).div_(s)
        x = x.contiguous(memory_format=fmt)
        out.append(backbone(x).flatten(1).float().to(target))
    # Defensive: a module whose forward flips modes must not leak that to the caller.
    for mod, flag in was_training:
        mod.training = flag
    if not out:
        return torch.zeros(0, 0)
    return torch.cat(out)


def _check_xy(x: Tensor, y: Tensor, name: str) -> None:
    if x.dim() != 2:
        raise ValueError(f"{name}_x must have shape (N, D), got {tuple(x.shape)}; flatten it with x.flatten(1)")
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"{name}_y must have shape ({x.shape[0]},) to match {name}_x, got {tuple(y.shape)}")


def _check_finite(x: Tensor, name: str) -> None:
    # A sum containing a NaN or an infinity is never finite, so a finite sum clears the whole
    # tensor in one read pass; isfinite() builds four temporaries of x's size (one a float
    # copy), which took longer than an epoch of the linear probe at 50,000 x 512. Only a sum
    # that overflowed (or a genuinely bad tensor) gets the element-wise check.
    if x.is_floating_point() and bool(torch.isfinite(x.sum())):
        return
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or infinite values; probe a model whose embeddings are finite")


def standardize_features(train_x: Tensor, *others: Tensor) -> tuple[Tensor, ...]:
    """Standardise features with the per-feature mean and std (unbiased) of ``train_x`` (N, D).

    The same transform is applied to every tensor in ``others``. Features whose train
    std is below 1e-6 are only centred (std treated as 1). Returns float32 tensors.
    """
    t64 = train_x.double()
    mean = t64.mean(dim=0)
    std = t64.std(dim=0, correction=1) if t64.shape[0] > 1 else torch.ones_like(mean)
    std = torch.where(std < _STD_FLOOR, torch.ones_like(std), std)
    return tuple(((x.double() - mean) / std).float() for x in (train_x, *others))


def _train_indices(n: int, train_subset: int | None, seed: int) -> Tensor | None:
    if train_subset is None or train_subset >= n:
        return None
    if train_subset < 1:
        raise ValueError(f"train_subset must be >= 1, got {train_subset}")
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=gen)[:train_subset].sort().values


def _split_arrays(data: Any, train_subset: int | None, seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    for attr in ("train", "test", "mean", "std"):
        if not hasattr(data, attr):
            raise ValueError(f"data has no .{attr}; pass a distill.data.Dataset (see load_dataset)")
    tr_img, tr_lab = data.train.images, data.train.labels
    idx = _train_indices(tr_img.shape[0], train_subset, seed)
    if idx is not None:
        tr_img, tr_lab = tr_img[idx.to(tr_img.device)], tr_lab[idx.to(tr_lab.device)]
    return tr_img, tr_lab.cpu(), data.test.images, data.test.labels.cpu()


def embed_splits(
    backbone: nn.Module,
    data: Any,
    train_subset: int | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    batch_size: int = 1024,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(train features (N, D), train labels (N,), test features (M, D), test labels (M,)) of ``data``
    embedded by ``backbone`` (its ``.backbone`` when it has one), features where the forward passes
    ran, labels on the CPU; ``train_subset`` and ``seed`` as in `probe_model`."""
    inner = getattr(backbone, "backbone", None)
    if isinstance(inner, nn.Module):
        backbone = inner
    tr_img, tr_lab, te_img, te_lab = _split_arrays(data, train_subset, seed)
    tr = embed(backbone, tr_img, data.mean, data.std, batch_size=batch_size, device=device, out_device=None)
    te = embed(backbone, te_img, data.mean, data.std, batch_size=batch_size, device=device, out_device=None)
    return tr, tr_lab, te, te_lab
