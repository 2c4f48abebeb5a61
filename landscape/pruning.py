"""Pruning masks as parametrizations, and exact global pruning.

A mask is a 0/1 tensor per prunable tensor, keyed by the tensor's name in the *unpruned*
model's ``state_dict`` (e.g. ``"backbone.features.0.0.weight"``). `apply_masks` registers a
`Mask` parametrization on each such tensor: the forward pass sees ``original * mask``, so
masked weights are exactly zero and the gradient reaching ``original`` is zero there; the
masked entries of ``original`` are zeroed as well, so SGD momentum, weight decay or Adam moments
(all zero at those entries) keep them at zero. `remove_masks` bakes the masks in and
restores the plain architecture (same ``state_dict`` keys as an unpruned model).

Example:

```python
masks = full_masks(model)                               # nothing pruned yet
masks = global_magnitude_prune(model, masks, 0.2)       # prune 20 % of what remains
apply_masks(model, masks); train(model); remove_masks(model)
```
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import cast

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

__all__ = [
    "Mask",
    "apply_masks",
    "remove_masks",
    "current_masks",
    "prunable_names",
    "full_masks",
    "global_magnitude_prune",
    "random_prune",
    "prune_count",
    "count_remaining",
    "unmasked_copy",
    "masked_state_dict",
    "PRUNABLE_SETS",
]

PRUNABLE_SETS = ("weights", "all")
Masks = Mapping[str, Tensor]


class Mask(nn.Module):
    """Parametrization ``w -> w * mask``; ``mask`` is a 0/1 buffer of the weight's shape and dtype."""

    mask: Tensor

    def __init__(self, mask: Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, weight: Tensor) -> Tensor:
        return weight * self.mask


# ----------------------------------------------------------------------------- names
def _split(key: str) -> tuple[str, str]:
    """``"a.b.weight"`` -> (``"a.b"``, ``"weight"``)."""
    module, _, name = key.rpartition(".")
    return module, name


def _owner(model: nn.Module, key: str) -> tuple[nn.Module, str]:
    module_name, name = _split(key)
    try:
        module = model.get_submodule(module_name) if module_name else model
    except AttributeError:
        raise ValueError(
            f"the model has no tensor {key!r}: masks must be keyed by the model's state_dict names (see prunable_names)"
        ) from None
    return module, name


def _tensor(model_or_state: nn.Module | Mapping[str, Tensor], key: str) -> Tensor:
    """The (masked, if parametrized) value of tensor ``key``."""
    if isinstance(model_or_state, nn.Module):
        module, name = _owner(model_or_state, key)
        t = getattr(module, name, None)
        if not isinstance(t, Tensor):
            raise ValueError(
                f"the model has no tensor {key!r}: masks must be keyed by the model's "
                f"state_dict names (see prunable_names)"
            )
        return t.detach()
    if key not in model_or_state:
        raise ValueError(f"the state dict has no key {key!r}: masks must be keyed by its state_dict names")
    return model_or_state[key].detach()


def _plist(module: nn.Module, name: str) -> parametrize.ParametrizationList:
    """The parametrizations of ``module.<name>`` (``module.parametrizations`` is untyped)."""
    return cast(parametrize.ParametrizationList, cast(nn.ModuleDict, module.parametrizations)[name])


def _mask_of(module: nn.Module, name: str) -> Tensor:
    return cast(Mask, _plist(module, name)[0]).mask


def _is_mask(module: nn.Module, name: str) -> bool:
    return (
        parametrize.is_parametrized(module, name)
        and len(_plist(module, name)) == 1
        and isinstance(_plist(module, name)[0], Mask)
    )


def _own_class(module: nn.Module) -> None:
    """Give a parametrized module a class of its own before its properties change.

    ``torch.nn.utils.parametrize`` keeps each parametrization's property on a class made for the
    module, and ``copy.deepcopy`` shares that class between original and copy; adding or removing
    a parametrization on one would otherwise break the other.
    """
    cls = module.__class__
    body = {k: v for k, v in cls.__dict__.items() if k not in ("__dict__", "__weakref__")}
    module.__class__ = type(cls.__name__, cls.__bases__, body)


def _clean_name(param_name: str) -> str:
    """``"a.parametrizations.weight.original"`` -> ``"a.weight"``; other names unchanged."""
    head, sep, tail = param_name.partition("parametrizations.")
    if not sep or not (head == "" or head.endswith(".")):
        return param_name
    tensor = tail.split(".")[0]
    return head + tensor


def prunable_names(model: nn.Module, prunable: str | Sequence[str] = "weights") -> list[str]:
    """Names (``state_dict`` keys of the unpruned model) of the tensors that pruning may zero.

    ``"weights"`` (default, Frankle et al.): the ``.weight`` of every Conv (1/2/3-d, transposed
    too) and Linear layer, the final classifier included (pass an explicit list to leave it out).
    ``"all"``: every floating-point parameter, biases and BatchNorm/LayerNorm affine parameters
    included (what the paper's code prunes). A sequence of names is checked and returned as given.
    Order: the model's module / parameter order.
    """
    if isinstance(prunable, str):
        if prunable == "weights":
            names = [
                f"{m_name}.weight" if m_name else "weight"
                for m_name, m in model.named_modules()
                if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))
                and isinstance(getattr(m, "weight", None), Tensor)
            ]
        elif prunable == "all":
            names = [_clean_name(n) for n, p in model.named_parameters() if p.is_floating_point()]
        else:
            raise ValueError(
                f"prunable={prunable!r} is not valid: choose 'weights', 'all' or a list of state_dict names"
            )
    else:
        names = list(prunable)
        for key in names:
            t = _tensor(model, key)
            if not t.is_floating_point():
                raise ValueError(f"tensor {key!r} is not floating point and cannot be pruned; drop it from prunable")
        if len(set(names)) != len(names):
            raise ValueError("prunable lists a tensor twice: pass each name once")
    if not names:
        raise ValueError(f"prunable={prunable!r} selects no tensor of this model: use 'all' or name tensors")
    return names


# ----------------------------------------------------------------------------- masks on a model
def full_masks(model: nn.Module, prunable: str | Sequence[str] = "weights") -> dict[str, Tensor]:
    """All-ones bool masks for `prunable_names` (nothing pruned), on the model's device."""
    return {k: torch.ones_like(_tensor(model, k), dtype=torch.bool) for k in prunable_names(model, prunable)}


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Masks) -> nn.Module:
    """Mask ``model`` in place: register (or update) a `Mask` on every tensor in ``masks``.

    ``masks``: name -> 0/1 tensor (bool, uint8 or float) of the tensor's shape. The masked entries
    of the underlying parameter are set to zero. Returns ``model``.
    """
    for key, m in masks.items():
        module, name = _owner(model, key)
        current = getattr(module, name, None)
        if not isinstance(current, Tensor):
            raise ValueError(f"the model has no tensor {key!r}: masks must be keyed by state_dict names")
        if tuple(m.shape) != tuple(current.shape):
            raise ValueError(f"mask for {key!r} has shape {tuple(m.shape)}, the tensor {tuple(current.shape)}")
        if parametrize.is_parametrized(module, name) and not _is_mask(module, name):
            raise ValueError(f"{key!r} already carries another parametrization; remove it before masking")
        dense = m.detach().to(current.device) != 0
        if _is_mask(module, name):
            _mask_of(module, name).copy_(dense)
        else:
            if parametrize.is_parametrized(module):
                _own_class(module)
            parametrize.register_parametrization(module, name, Mask(dense.to(current.dtype)))
        _plist(module, name).original.mul_(_mask_of(module, name))
    return model


def current_masks(model: nn.Module) -> dict[str, Tensor]:
    """The masks in place on ``model`` (name -> bool tensor), in module order; {} when unmasked."""
    out = {}
    for m_name, module in model.named_modules():
        for name in getattr(module, "parametrizations", {}):
            if _is_mask(module, name):
                out[f"{m_name}.{name}" if m_name else name] = module.parametrizations[name][0].mask != 0
    return out


def remove_masks(model: nn.Module) -> nn.Module:
    """Remove every `Mask` in place, keeping the masked values (``leave_parametrized``).

    The ``state_dict`` then has the keys of an unpruned model with exact zeros at masked entries.

    Returns:
        ``model``.
    """
    for _, module in list(model.named_modules()):
        names = [n for n in getattr(module, "parametrizations", {}) if _is_mask(module, n)]
        if names:
            _own_class(module)
        for name in names:
            parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    return model


def unmasked_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with the masks baked in and removed (``model`` is left as is).

    Parameter order may differ from a freshly built model (an unmasked tensor is re-registered
    last in its module); the ``state_dict`` keys are the same. See also `masked_state_dict`.
    """
    return remove_masks(copy.deepcopy(model))


def masked_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """``model.state_dict()`` with masks baked in and the keys of the unpruned model (detached,
    not copied for unmasked tensors). Mask buffers are left out."""
    out = {}
    for key, t in model.state_dict(keep_vars=False).items():
        head, sep, tail = key.partition("parametrizations.")
        if sep and (head == "" or head.endswith(".")):
            tensor, _, rest = tail.partition(".")
            module = model.get_submodule(head[:-1]) if head else model
            if rest == "original" and _is_mask(module, tensor):
                out[head + tensor] = t * _mask_of(module, tensor)
                continue
            if rest == "0.mask" and _is_mask(module, tensor):
                continue
        out[key] = t
    return out


# ----------------------------------------------------------------------------- pruning
def count_remaining(masks: Masks) -> int:
    """Number of unmasked (nonzero) entries over all masks."""
    return int(sum(int(m.count_nonzero()) for m in masks.values()))


def prune_count(remaining: int, fraction: float) -> int:
    """How many of ``remaining`` weights one pruning step removes: ``round(fraction * remaining)``
    (Python's round, i.e. halves to even)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"prune fraction {fraction!r} must lie in [0, 1]")
    return int(round(fraction * remaining))


def _flat_scores(
    scores: Mapping[str, Tensor],
    masks: Masks,
    keys: list[str],
    dtype: torch.dtype,
    device: torch.device,
    absolute: bool,
) -> tuple[Tensor, list[Tensor], int]:
    """(scores (their magnitudes if ``absolute``) of all tensors concatenated in one buffer, +inf
    at masked entries; bool masks; unmasked count)."""
    sizes = [masks[k].numel() for k in keys]
    flat = torch.empty(sum(sizes), dtype=dtype, device=device)
    inf = torch.tensor(float("inf"), dtype=dtype, device=device)
    alive = []
    for k, part in zip(keys, flat.split(sizes)):  # views: each where() writes into flat
        m = masks[k].to(device)
        m = m if m.dtype == torch.bool else m != 0
        torch.where(m.reshape(-1), scores[k].reshape(-1).to(dtype), inf, out=part)
        alive.append(m)
    if absolute:
        flat.abs_()
    remaining = int(sum(int(m.count_nonzero()) for m in alive))
    return flat, alive, remaining


def _smallest(flat: Tensor, k: int) -> Tensor:
    """Bool mask of the ``k`` smallest entries of ``flat`` (1-d); ties go to the lower index.

    ``torch.kthvalue`` gives the threshold on the tensor's device; entries equal to it are taken
    in index order (a cumsum, only when not all of them fit), so exactly ``k`` are chosen.
    """
    threshold = torch.kthvalue(flat, k).values
    if not bool(torch.isfinite(threshold)):
        raise ValueError("some unpruned weights are NaN or infinite: cannot rank them by magnitude")
    chosen = flat < threshold
    tied = flat == threshold
    room = k - chosen.count_nonzero()  # bool .sum() is ~10x slower on the CPU
    if bool(tied.count_nonzero() > room):
        tied &= tied.cumsum(0) <= room
    return chosen.logical_or_(tied)


def _prune(
    scores: Mapping[str, Tensor],
    masks: Masks,
    fraction: float,
    dtype: torch.dtype,
    device: torch.device,
    absolute: bool,
) -> dict[str, Tensor]:
    keys = list(masks)
    flat, alive, remaining = _flat_scores(scores, masks, keys, dtype, device, absolute)
    k = prune_count(remaining, fraction)
    if k == 0:
        return {key: m.clone() for key, m in zip(keys, alive)}
    if bool(torch.isnan(flat).any()):
        raise ValueError("some unpruned weights are NaN: cannot rank them by magnitude")
    parts = _smallest(flat, k).split([m.numel() for m in alive])
    return {key: m > part.view(m.shape) for key, m, part in zip(keys, alive, parts)}  # m and not pruned, in one pass


@torch.no_grad()
def global_magnitude_prune(
    model_or_state: nn.Module | Mapping[str, Tensor], masks: Masks, fraction: float
) -> dict[str, Tensor]:
    """New masks with exactly ``round(fraction * remaining)`` more weights pruned.

    The pruned weights are the unmasked entries with the smallest ``|w|`` over all tensors in
    ``masks`` together (global, not per layer). Ties are broken by position in the concatenation
    of the tensors, flattened, in the order of ``masks``' keys (lower positions pruned first), so
    the count is exact whatever the values. The threshold is found with ``torch.kthvalue`` on the
    weights' device (no sort, nothing copied to the host); magnitudes are compared in float32
    (float64 if any weight is float64). ``model_or_state``: a (possibly masked) module or a
    state dict with the masks' keys. Returns name -> bool tensors on the weights' device.
    """
    if not masks:
        raise ValueError("masks is empty: start from full_masks(model, prunable)")
    weights = {k: _tensor(model_or_state, k) for k in masks}
    for k, w in weights.items():
        if tuple(w.shape) != tuple(masks[k].shape):
            raise ValueError(f"mask for {k!r} has shape {tuple(masks[k].shape)}, the weight {tuple(w.shape)}")
    dtype = torch.float64 if any(w.dtype == torch.float64 for w in weights.values()) else torch.float32
    device = next(iter(weights.values())).device
    return _prune(weights, masks, fraction, dtype, device, absolute=True)


@torch.no_grad()
def random_prune(masks: Masks, fraction: float, seed: int = 0) -> dict[str, Tensor]:
    """New masks with exactly ``round(fraction * remaining)`` unmasked entries pruned uniformly at
    random over all tensors together (the count of `global_magnitude_prune`).

    The draw uses a CPU ``torch.Generator`` seeded with ``seed``, so it is the same on any device.

    Returns:
        Name -> bool tensors on the masks' device.
    """
    if not masks:
        raise ValueError("masks is empty: start from full_masks(model, prunable)")
    gen = torch.Generator().manual_seed(int(seed))
    device = next(iter(masks.values())).device
    scores = {k: torch.rand(m.shape, generator=gen, dtype=torch.float64) for k, m in masks.items()}
    return _prune(scores, masks, fraction, torch.float64, device, absolute=False)
