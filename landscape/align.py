"""Permutation alignment of two networks of one architecture (Git Re-Basin, Ainsworth et al. 2023),
and REPAIR-style renormalisation of interpolated networks (Jordan et al. 2023).

Hidden units of a network can be permuted without changing its function: permuting the output
units of a layer and, in the same way, the matching input axis of the next layer (and the
BatchNorm parameters and statistics in between). `permutation_spec` lists, for a model of
the registry's ``mlp``, ``convnet``, ``vgg*`` and ``resnet*`` families (with any head), which
state_dict axes each permutation acts on; residual networks get one permutation per residual
stream (shared by every block of a stage, its projection shortcut and the stem), so the
permuted network computes exactly the same function.

- `weight_matching`: permutations of ``b`` that maximise ``sum_l <theta_a^l, P(theta_b^l)>``
  over the parameters, by coordinate ascent: one ``scipy.optimize.linear_sum_assignment`` per
  permutation, in a seeded random order, until no permutation changes.
- `activation_matching`: per permutation, the assignment maximising the summed Pearson
  correlation of the two networks' unit activations on data.
- `apply_permutation`: the state of ``b`` with the permutations applied.
- `align`: ``b`` permuted onto ``a`` by either method, with a record for provenance.
- `repair_state` (`landscape.repair`, importable from here too): REPAIR of an interpolated network.

Convention: ``perm[p][i] = j`` means unit ``i`` of ``a`` is matched with unit ``j`` of ``b``;
the permuted ``b`` has ``b'[i] = b[perm[p][i]]`` along every axis that ``p`` acts on.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from distill.device import in_mode
from distill.options import with_config
from landscape.configs import AlignConfig
from landscape.repair import repair_state  # noqa: F401 - REPAIR, also importable from here

METHODS = ("weights", "activations")
_BN = nn.modules.batchnorm._BatchNorm


@dataclass
class PermutationSpec:
    """Which state_dict axes each permutation acts on.

    ``sizes``: permutation name -> number of units; ``axes``: state_dict key -> one entry per
    tensor axis, the permutation acting on it or None; ``activations``: permutation name ->
    qualified names of modules whose output carries that permutation on axis 1 (for
    activation matching and REPAIR).
    """

    sizes: dict[str, int] = field(default_factory=dict)
    axes: dict[str, tuple[str | None, ...]] = field(default_factory=dict)
    activations: dict[str, list[str]] = field(default_factory=dict)

    def new(self, name: str, size: int) -> str:
        """Declare the permutation ``name`` of ``size`` units; returns ``name``."""
        self.sizes[name] = int(size)
        self.activations.setdefault(name, [])
        return name

    def members(self, perm: str) -> list[tuple[str, int]]:
        """(key, axis) pairs that ``perm`` acts on."""
        return [(k, i) for k, ax in self.axes.items() for i, p in enumerate(ax) if p == perm]


# ----------------------------------------------------------------------------- specs
def _layer(spec: PermutationSpec, name: str, module: nn.Module, out: str | None, inp: str | None) -> None:
    """Axes of one Linear / Conv2d layer: weight (out, in, ...), bias (out,)."""
    extra = (None,) * (cast(Tensor, module.weight).dim() - 2)
    pre = f"{name}." if name else ""
    plist = getattr(getattr(module, "parametrizations", None), "weight", None)
    if plist is not None:  # weight norm: original0 = g (out, 1), original1 = v (out, in)
        spec.axes[f"{pre}parametrizations.weight.original0"] = (out,) + (None,) * (plist.original0.dim() - 1)
        spec.axes[f"{pre}parametrizations.weight.original1"] = (out, inp) + extra
    else:
        spec.axes[f"{pre}weight"] = (out, inp) + extra
    if module.bias is not None:
        spec.axes[f"{pre}bias"] = (out,)


def _norm(spec: PermutationSpec, name: str, module: nn.Module, perm: str) -> None:
    for leaf in ("weight", "bias", "running_mean", "running_var"):
        if getattr(module, leaf, None) is not None:
            spec.axes[f"{name}.{leaf}"] = (perm,)


def _chain(
    spec: PermutationSpec, prefix: str, container: nn.Module, perm: str | None, last_fixed: bool = False
) -> str | None:
    """A feed-forward stack (Linear / Conv2d, BatchNorm, elementwise activations, pools): every
    layer's outputs get a new permutation named after it; returns the permutation of the output.
    ``last_fixed``: the last layer's outputs are not permuted (e.g. logits)."""
    leaves = [(n, m) for n, m in container.named_modules() if not list(m.children())]
    layers = [n for n, m in leaves if isinstance(m, (nn.Linear, nn.Conv2d))]
    for n, m in leaves:
        full = f"{prefix}.{n}" if n else prefix
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            out = (
                None
                if (last_fixed and n == layers[-1])
                else spec.new(full, m.out_channels if isinstance(m, nn.Conv2d) else m.out_features)
            )
            _layer(spec, full, m, out, perm)
            perm = out
            if perm is not None:
                spec.activations[perm] = [full]
        elif isinstance(m, _BN):
            if perm is None:
                raise ValueError(f"{full}: BatchNorm on unpermuted units is not supported by the alignment")
            _norm(spec, full, m, perm)
            spec.activations[perm] = [full]
        elif isinstance(m, (nn.ReLU, nn.GELU, nn.Identity, nn.MaxPool2d, nn.AvgPool2d, nn.Flatten, nn.Dropout)):
            continue
        else:
            raise ValueError(
                f"{full}: {type(m).__name__} layers are not supported by the alignment "
                "(supported families: mlp, convnet, vgg*, resnet*)"
            )
    return perm


def _resnet(spec: PermutationSpec, prefix: str, net: nn.Module) -> str:
    from distill.models import ZeroPadShortcut

    conv1, bn1 = cast(nn.Conv2d, net.conv1), cast(nn.Module, net.bn1)
    res = spec.new(f"{prefix}.residual0", conv1.out_channels)
    _layer(spec, f"{prefix}.conv1", conv1, res, None)
    _norm(spec, f"{prefix}.bn1", bn1, res)
    spec.activations[res] = [f"{prefix}.bn1"]
    for i in range(cast(int, net.num_stages)):
        stage = getattr(net, f"layer{i + 1}")
        for j, block in enumerate(stage):
            name = f"{prefix}.layer{i + 1}.{j}"
            if isinstance(block.downsample, ZeroPadShortcut):
                raise ValueError(
                    f"{name}: zero-padding shortcuts (shortcut='A') are not supported by the "
                    "alignment; use shortcut='B' (the default)"
                )
            out = res
            if block.downsample is not None:
                out = spec.new(f"{prefix}.residual{i + 1}", block.conv2.out_channels)
                _layer(spec, f"{name}.downsample.0", block.downsample[0], out, res)
                _norm(spec, f"{name}.downsample.1", block.downsample[1], out)
                spec.activations[out] = [f"{name}.downsample.1"]
            inner = spec.new(f"{name}.conv1", block.conv1.out_channels)
            _layer(spec, f"{name}.conv1", block.conv1, inner, res)
            _norm(spec, f"{name}.bn1", block.bn1, inner)
            spec.activations[inner] = [f"{name}.bn1"]
            _layer(spec, f"{name}.conv2", block.conv2, out, inner)
            _norm(spec, f"{name}.bn2", block.bn2, out)
            spec.activations[out].append(name)
            res = out
    return res


def permutation_spec(model: nn.Module) -> PermutationSpec:
    """The permutation symmetries of a ``distill.build_model`` network (mlp, convnet, vgg*, resnet*;
    DINO, linear or no head). Raises ValueError for other architectures."""
    from distill.heads import DINOHead
    from distill.models import MLP, VGG, ConvNet, ResNet

    backbone, head = getattr(model, "backbone", None), getattr(model, "head", None)
    if backbone is None:
        raise ValueError("permutation_spec needs a model built with distill.build_model (backbone + head)")
    spec = PermutationSpec()
    if isinstance(backbone, MLP):
        emb = _chain(spec, "backbone.layers", backbone.layers, None)
    elif isinstance(backbone, (ConvNet, VGG)):
        emb = _chain(spec, "backbone.features", backbone.features, None)
    elif isinstance(backbone, ResNet):
        emb = _resnet(spec, "backbone", backbone)
    else:
        raise ValueError(
            f"alignment supports the mlp, convnet, vgg* and resnet* families, not {type(backbone).__name__}"
        )
    if isinstance(head, DINOHead):
        perm = _chain(spec, "head.mlp", head.mlp, emb)  # the bottleneck's L2 normalisation commutes
        _layer(spec, "head.last_layer", head.last_layer, None, perm)
    elif isinstance(head, nn.Linear):
        _layer(spec, "head", head, None, emb)
    elif not isinstance(head, nn.Identity):
        raise ValueError(f"alignment does not know the head {type(head).__name__}")
    return spec


# ----------------------------------------------------------------------------- applying
def _permute(t: Tensor, axes: Sequence[str | None], perms: Mapping[str, Any], skip: int | None = None) -> Tensor:
    for axis, p in enumerate(axes):
        if p is None or axis == skip:
            continue
        t = t.index_select(axis, torch.as_tensor(np.asarray(perms[p]), dtype=torch.long, device=t.device))
    return t


def apply_permutation(
    spec: PermutationSpec, perms: Mapping[str, Any], state: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """``state`` with every permutation applied along its axes (``b'[i] = b[perm[i]]``); keys not in
    the spec (e.g. ``num_batches_tracked``) are copied."""
    out = {}
    for k, t in state.items():
        out[k] = _permute(t.detach(), spec.axes[k], perms) if k in spec.axes else t.detach().clone()
    return out


def random_permutations(spec: PermutationSpec, seed: int = 0) -> dict[str, np.ndarray]:
    """One uniformly random permutation per group, drawn with ``seed`` (numpy)."""
    rng = np.random.default_rng(seed)
    return {p: rng.permutation(n) for p, n in spec.sizes.items()}


# ----------------------------------------------------------------------------- weight matching
def _param_keys(model: nn.Module, spec: PermutationSpec) -> set[str]:
    return {k for k, _ in model.named_parameters() if k in spec.axes}


def weight_matching(
    spec: PermutationSpec,
    sa: Mapping[str, Tensor],
    sb: Mapping[str, Tensor],
    keys: Iterable[str] | None = None,
    max_iter: int = 100,
    seed: int = 0,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Permutations of ``sb`` maximising ``sum_k <sa[k], P(sb)[k]>`` over ``keys`` (default: every
    floating-point key in the spec; pass the parameter names to leave buffers out).

    Coordinate ascent (Ainsworth et al. 2023, Algorithm 1): each sweep visits the permutations in
    an order drawn with ``seed`` and solves one linear assignment per permutation (float64 cost)
    with the others fixed; stops after a sweep that changed nothing, or after ``max_iter`` sweeps.

    Returns:
        (perms, info) with info = {"sweeps", "objective", "objective_identity"}.
    """
    keys = set(spec.axes) if keys is None else set(keys) & set(spec.axes)
    keys = {k for k in keys if sa[k].is_floating_point()}
    a64 = {k: sa[k].detach().double().cpu() for k in keys}
    b64 = {k: sb[k].detach().double().cpu() for k in keys}
    perms = {p: np.arange(n) for p, n in spec.sizes.items()}
    members = {p: [(k, ax) for k, ax in spec.members(p) if k in keys] for p in spec.sizes}
    rng = np.random.default_rng(seed)
    names = list(spec.sizes)

    flat_a = {(k, ax): a64[k].movedim(ax, 0).reshape(spec.sizes[p], -1) for p in spec.sizes for k, ax in members[p]}

    def objective() -> float:
        return float(sum((a64[k] * _permute(b64[k], spec.axes[k], perms)).sum() for k in sorted(keys)))

    start = objective()
    sweeps = 0
    for sweeps in range(1, max_iter + 1):  # noqa: B007 (the count is returned)
        changed = False
        for idx in rng.permutation(len(names)):
            p = names[idx]
            n = spec.sizes[p]
            cost = torch.zeros(n, n, dtype=torch.float64)
            for k, axis in members[p]:
                wa = flat_a[(k, axis)]
                wb = _permute(b64[k], spec.axes[k], perms, skip=axis).movedim(axis, 0).reshape(n, -1)
                cost += wa @ wb.T
            c = cost.numpy()
            _, cols = linear_sum_assignment(c, maximize=True)
            old = c[np.arange(n), perms[p]].sum()
            new = c[np.arange(n), cols].sum()
            if new > old + 1e-12 * max(1.0, abs(old)) and not np.array_equal(cols, perms[p]):
                perms[p] = cols
                changed = True
        if not changed:
            break
    return perms, {"sweeps": sweeps, "objective": objective(), "objective_identity": start}


# ----------------------------------------------------------------------------- activation matching
class _Correlation:
    """Running sums for the Pearson correlation between units of two activations (N, C, ...)."""

    def __init__(self) -> None:
        self.n = 0
        self.sums: tuple[Tensor, ...] | None = None  # sum a, sum b, sum a^2, sum b^2, sum a^T b

    def add(self, za: Tensor, zb: Tensor) -> None:
        c = za.shape[1]
        za = za.detach().double().movedim(1, -1).reshape(-1, c)
        zb = zb.detach().double().movedim(1, -1).reshape(-1, c)
        parts = (za.sum(0), zb.sum(0), (za * za).sum(0), (zb * zb).sum(0), za.T @ zb)
        self.sums = parts if self.sums is None else tuple(x + y for x, y in zip(self.sums, parts))
        self.n += za.shape[0]

    def matrix(self) -> Tensor:
        if self.sums is None:
            raise ValueError("no activations were recorded for the correlation")
        sa, sb, saa, sbb, sab = self.sums
        ma, mb = sa / self.n, sb / self.n
        cov = sab / self.n - ma[:, None] * mb[None, :]
        sda = (saa / self.n - ma * ma).clamp_min(0).sqrt()
        sdb = (sbb / self.n - mb * mb).clamp_min(0).sqrt()
        return cov / (sda[:, None] * sdb[None, :] + 1e-12)


@torch.no_grad()
def activation_matching(
    spec: PermutationSpec, model_a: nn.Module, model_b: nn.Module, batches: Iterable[Tensor]
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Per permutation, the assignment maximising the summed Pearson correlation (over examples
    and spatial positions) between the units of ``model_a`` and ``model_b`` at the modules listed
    in ``spec.activations``; both models run in eval mode on the same normalised ``batches``.

    Returns:
        (perms, info) with info = {"examples", "mean_correlation"} (after matching)."""
    mods_a, mods_b = dict(model_a.named_modules()), dict(model_b.named_modules())
    stats = {(p, m): _Correlation() for p, names in spec.activations.items() for m in names}
    seen: dict[str, Tensor] = {}
    handles = []

    def hook(tag: str, name: str):
        def fn(module: nn.Module, args: tuple, out: Tensor) -> None:
            if tag == "a":
                seen[name] = out.detach().clone()
            else:
                for (_p, m), st in stats.items():
                    if m == name:
                        st.add(seen[name], out)

        return fn

    names = sorted({m for _, m in stats})
    try:
        for m in names:
            handles.append(mods_a[m].register_forward_hook(hook("a", m)))
            handles.append(mods_b[m].register_forward_hook(hook("b", m)))
        examples = 0
        with in_mode(model_a, model_b):
            for x in batches:
                model_a(x)
                model_b(x)
                seen.clear()
                examples += len(x)
    finally:
        for h in handles:
            h.remove()
    if examples == 0:
        raise ValueError("activation matching got no batches: pass data with training images")
    perms, corr = {}, []
    for p, n in spec.sizes.items():
        c = cast(Tensor, sum(stats[(p, m)].matrix() for m in spec.activations[p])).numpy()
        _, cols = linear_sum_assignment(c, maximize=True)
        perms[p] = cols
        corr.append(c[np.arange(n), cols].mean() / max(1, len(spec.activations[p])))
    return perms, {"examples": examples, "mean_correlation": float(np.mean(corr))}


# ----------------------------------------------------------------------------- front door
def training_batches(
    data: Any, batches: int = 8, batch_size: int = 256, seed: int = 0, device: str | torch.device = "cpu"
) -> list[Tensor]:
    """``batches`` normalised training batches (B, C, H, W) drawn once with ``seed``."""
    from landscape.points import EvalSettings

    inputs = EvalSettings(batches, batch_size, seed, 1, None, 0).inputs(data, (), torch.device(device), True, False, "")
    return inputs.bn


@with_config(AlignConfig)
def align(
    a: nn.Module, b: nn.Module, method: str = "weights", data: Any = None, *, config: AlignConfig
) -> tuple[nn.Module, dict[str, Any]]:
    """``b`` permuted to match ``a`` (a new module; neither input is modified).

    Args:
        method: ``weights`` (`weight_matching` over the parameters) or ``activations``
            (`activation_matching` on training images of ``data``).

    Returns:
        (aligned b, record) where the record holds strings and numbers for attrs: the method,
        its settings and outcome, and ``permutations`` (JSON of every permutation).
    """
    import copy

    if method not in METHODS:
        raise ValueError(f"align={method!r}: choose one of {', '.join(METHODS)} (or None for no alignment)")
    spec = permutation_spec(a)
    spec_b = permutation_spec(b)
    if spec_b.sizes != spec.sizes:
        raise ValueError("a and b have different layer widths: align two networks of one architecture")
    sa, sb = a.state_dict(), b.state_dict()
    record: dict[str, Any] = {"align": method}
    if method == "weights":
        perms, info = weight_matching(
            spec, sa, sb, keys=_param_keys(a, spec), max_iter=config.max_iter, seed=config.seed
        )
        record.update(
            {
                "align_objective": "sum of <theta_a, P(theta_b)> over parameters",
                "align_seed": config.seed,
                "align_sweeps": info["sweeps"],
                "align_inner_product": info["objective"],
                "align_inner_product_identity": info["objective_identity"],
            }
        )
    else:
        if data is None:
            raise ValueError("align='activations' needs data: pass the dataset whose training images to match on")
        device = next(a.parameters()).device
        xs = training_batches(data, config.batches, config.batch_size, config.data_seed, device)
        perms, info = activation_matching(spec, a, b, xs)
        record.update(
            {
                "align_objective": "summed Pearson correlation of unit activations",
                "align_examples": info["examples"],
                "align_data_seed": config.data_seed,
                "align_mean_correlation": info["mean_correlation"],
            }
        )
    out = copy.deepcopy(b)
    out.load_state_dict(apply_permutation(spec, perms, sb))
    record["align_changed_units"] = int(sum(int((perms[p] != np.arange(n)).sum()) for p, n in spec.sizes.items()))
    record["align_units"] = int(sum(spec.sizes.values()))
    record["permutations"] = json.dumps({p: [int(i) for i in v] for p, v in perms.items()})
    return out, record
