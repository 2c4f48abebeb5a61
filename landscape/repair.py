"""REPAIR-style renormalisation of interpolated networks (Jordan et al. 2023): the output channels
of the layers not followed by BatchNorm are rescaled so their mean and standard deviation on data
are the interpolation of the endpoints' (for layers followed by BatchNorm, the BN policy ``reset``
plays that role). Used by `landscape.paths.linear_path` with ``repair=True``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from distill.device import in_mode

_BN = nn.modules.batchnorm._BatchNorm


def _repair_layers(model: nn.Module) -> list[str]:
    """Linear / Conv2d layers whose outputs are not renormalised by a following BatchNorm, except
    the network's last layer (its outputs are the logits)."""
    leaves = [(n, m) for n, m in model.named_modules() if not list(m.children())]
    names = []
    for i, (n, m) in enumerate(leaves):
        if isinstance(m, (nn.Linear, nn.Conv2d)) and m.bias is not None:
            follow = next((x for _, x in leaves[i + 1 :] if isinstance(x, (nn.Linear, nn.Conv2d, _BN))), None)
            if follow is not None and not isinstance(follow, _BN):
                names.append(n)
    return names


@torch.no_grad()
def _channel_stats(
    model: nn.Module, names: Sequence[str], batches: Sequence[Tensor]
) -> dict[str, tuple[Tensor, Tensor]]:
    mods = dict(model.named_modules())
    sums: dict[str, list] = {n: [0, 0.0, 0.0] for n in names}
    handles = []

    def hook(name: str):
        def fn(module: nn.Module, args: tuple, out: Tensor) -> None:
            z = out.detach().double().movedim(1, -1).reshape(-1, out.shape[1])
            s = sums[name]
            s[0] += z.shape[0]
            s[1] = s[1] + z.sum(0)
            s[2] = s[2] + (z * z).sum(0)

        return fn

    try:
        for n in names:
            handles.append(mods[n].register_forward_hook(hook(n)))
        with in_mode(model):
            for x in batches:
                model(x)
    finally:
        for h in handles:
            h.remove()
    out = {}
    for n, (count, s1, s2) in sums.items():
        mean = s1 / count
        out[n] = (mean, (s2 / count - mean * mean).clamp_min(0).sqrt())
    return out


@torch.no_grad()
def endpoint_stats(
    model: nn.Module, sa: Mapping[str, Tensor], sb: Mapping[str, Tensor], batches: Sequence[Tensor]
) -> tuple[dict, dict]:
    """Per-channel (mean, std) at the REPAIR layers of the states ``sa`` and ``sb`` (``model`` is a
    working copy whose state is overwritten); pass the result to `repair_state`."""
    names = _repair_layers(model)
    model.load_state_dict(sa)
    st_a = _channel_stats(model, names, batches)
    model.load_state_dict(sb)
    return st_a, _channel_stats(model, names, batches)


@torch.no_grad()
def repair_state(
    model: nn.Module,
    sa: Mapping[str, Tensor],
    sb: Mapping[str, Tensor],
    alpha: float,
    batches: Sequence[Tensor],
    stats: tuple[dict, dict] | None = None,
) -> dict[str, Tensor]:
    """The interpolated state at ``alpha`` with REPAIR applied (``model`` is a working copy of the
    architecture; its state is overwritten).

    For every Linear / Conv2d layer with a bias that is not followed by BatchNorm (and is not the
    last layer), in forward order, the output channels of the interpolated network are rescaled so
    that their mean and standard deviation over ``batches`` (eval mode) become
    ``(1 - alpha) * stat_a + alpha * stat_b``; the affine correction is folded into the layer's
    weight and bias. BatchNorm layers are left to the BN policy. ``stats``: the endpoints'
    statistics from `endpoint_stats` (computed here when None).
    """
    from landscape.paths import interpolate_state

    names = _repair_layers(model)
    st_a, st_b = endpoint_stats(model, sa, sb, batches) if stats is None else stats
    state = interpolate_state(sa, sb, alpha)
    model.load_state_dict(state)
    mods = dict(model.named_modules())
    for n in names:
        mu, sd = _channel_stats(model, [n], batches)[n]
        mu_t = (1 - alpha) * st_a[n][0] + alpha * st_b[n][0]
        sd_t = (1 - alpha) * st_a[n][1] + alpha * st_b[n][1]
        scale = sd_t / (sd + 1e-8)
        m = mods[n]
        shape = (-1,) + (1,) * (m.weight.dim() - 1)
        m.weight.mul_(scale.view(shape).to(m.weight.dtype))
        m.bias.copy_(((m.bias.double() - mu) * scale + mu_t).to(m.bias.dtype))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
