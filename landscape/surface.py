"""1-D and 2-D loss surfaces around a checkpoint (Li et al. 2018, "Visualizing the Loss Landscape").

A point of the surface is ``theta(x, y) = theta_0 + x * d1 + y * d2`` (1-D: ``theta_0 + x * d1``).
The directions are

- ``"random"``: Gaussian directions (seeded) *filter-normalised*: for every weight with two or more
  axes (Linear, Conv2d), each filter ``d[i]`` (slice along the output axis 0) is rescaled to the
  norm of the checkpoint's filter, ``d[i] <- d[i] * |theta[i]| / |d[i]|``. One-axis parameters
  (biases, BatchNorm weight and bias) are handled explicitly by ``bias`` and ``bn_params``:
  ``ignore`` (zero direction, Li et al.'s choice) or ``normalize`` (the whole vector rescaled to
  the norm of the checkpoint's vector). Buffers get no direction.
- ``"hessian"``: the top one or two Hessian eigenvectors at the checkpoint (unit norm over the
  parameters; `landscape.hessian`, supervised loss on the training split).
- checkpoints ``[b]`` / ``[b, c]``: ``d1 = b - theta_0`` (``d2 = c - theta_0``) over every
  floating-point entry (buffers included), so ``x`` is in units of ``|b - theta_0|`` and the line
  ``y = 0`` is exactly `landscape.paths.linear_path` from ``theta_0`` to ``b``.

The BN policy is that of paths: ``reset`` (running statistics re-estimated at every point on
seeded training batches, default), ``keep_a`` (the centre's), ``interpolate`` (buffers follow
the directions; for random and Hessian directions the same as ``keep_a``). With ``out=`` the
surface is written after every row and a rerun with the same settings resumes from it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import Tensor, nn
from tqdm.auto import tqdm

import distill
from distill.bn import has_batchnorm
from distill.options import with_config
from distill.schema import result_dataset
from landscape.configs import SurfaceConfig
from landscape.evaluate import run_segment
from landscape.points import EvalSettings, use_channels_last
from landscape.refs import model_spec_attrs

ONE_D = ("ignore", "normalize")
FILTER_NORMALIZATION = "per filter (axis 0 slice) of every >= 2-axis parameter (Li et al. 2018)"
# the attrs that, with the grid and the references, identify a surface (surface_key)
_KEYED = (
    "directions",
    "seed",
    "bias",
    "bn_params",
    "bn_policy",
    "split",
    "bn_batches",
    "bn_batch_size",
    "bn_seed",
    "eval_seed",
)
_BN = nn.modules.batchnorm._BatchNorm


# ----------------------------------------------------------------------------- directions
def bn_parameter_keys(model: nn.Module) -> set[str]:
    """Names of the BatchNorm (and other norm layers') weight and bias parameters."""
    keys: set[str] = set()
    for name, m in model.named_modules():
        if isinstance(m, (_BN, nn.LayerNorm, nn.GroupNorm)):
            keys.update(f"{name}.{leaf}" if name else leaf for leaf, _ in m.named_parameters(recurse=False))
    return keys


def filter_normalize(
    direction: Mapping[str, Tensor],
    reference: Mapping[str, Tensor],
    bn_keys: Set[str] = frozenset(),
    bias: str = "ignore",
    bn_params: str = "ignore",
) -> dict[str, Tensor]:
    """Filter normalisation of ``direction`` against ``reference`` (both dicts over the parameters).

    Tensors with >= 2 axes: every slice ``[i]`` along axis 0 gets the norm of ``reference[k][i]``.
    One-axis tensors: those in ``bn_keys`` follow ``bn_params``, the others (biases) ``bias``:
    ``ignore`` -> zero, ``normalize`` -> rescaled to the norm of the reference vector.

    Returns:
        Float64 tensors; a zero direction filter stays zero.
    """
    for name, value in (("bias", bias), ("bn_params", bn_params)):
        if value not in ONE_D:
            raise ValueError(f"{name}={value!r}: choose one of {', '.join(ONE_D)}")
    out = {}
    for k, d in direction.items():
        d = d.double()
        ref = reference[k].double()
        if d.dim() >= 2:
            dn = d.reshape(len(d), -1).norm(dim=1)
            rn = ref.reshape(len(ref), -1).norm(dim=1)
            scale = torch.where(dn > 0, rn / dn.clamp_min(1e-300), torch.zeros_like(dn))
            out[k] = d * scale.view(-1, *[1] * (d.dim() - 1))
        else:
            mode = bn_params if k in bn_keys else bias
            dn = d.norm()
            out[k] = torch.zeros_like(d) if mode == "ignore" or dn == 0 else d * (ref.norm() / dn)
    return out


def random_direction(
    model: nn.Module,
    seed: int,
    bias: str = "ignore",
    bn_params: str = "ignore",
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """A filter-normalised Gaussian direction over ``model``'s floating-point parameters
    (float64, drawn on the CPU in ``named_parameters`` order with ``seed`` or ``generator``)."""
    g = generator if generator is not None else torch.Generator().manual_seed(int(seed))
    params = {k: p.detach().cpu() for k, p in model.named_parameters() if p.is_floating_point()}
    raw = {k: torch.randn(p.shape, generator=g, dtype=torch.float64) for k, p in params.items()}
    return filter_normalize(raw, params, bn_parameter_keys(model), bias, bn_params)


def _norm(d: Mapping[str, Tensor], keys: set[str]) -> float:
    # summed in sorted order: a set's order follows the per-process string hash, and the last bit with it
    return float(sum(float((d[k].double() ** 2).sum()) for k in sorted(keys) if k in d)) ** 0.5


# ----------------------------------------------------------------------------- the surface
def _grid(span: Sequence[float], n: int, name: str) -> np.ndarray:
    if len(span) != 2 or not np.all(np.isfinite(span)) or not span[1] > span[0]:
        raise ValueError(f"{name}={tuple(span)!r}: pass (low, high) with low < high")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
        raise ValueError(f"resolution {n!r}: pass an int >= 2")
    return np.linspace(float(span[0]), float(span[1]), int(n))


@with_config(SurfaceConfig)
def surface(
    center: Any,
    data: Any,
    directions: str | Sequence[Any] = "random",
    *,
    config: SurfaceConfig,
    out: str | os.PathLike | None = None,
    progress: bool | None = None,
) -> xr.Dataset:
    """Loss and error on a 1-D (``dims=1``) or 2-D grid around ``center`` (see the module docstring).

    Coordinates are in units of the directions (filter-normalised: relative to the filters' own norms;
    checkpoints: |b - center|; Hessian: parameter-space L2 norm).

    Args:
        center: ``nn.Module`` (never modified) or ``(store, epoch | name)``; a classifier for ``data``.
        directions: ``"random"`` (filter-normalised, drawn with ``seed``), ``"hessian"``, or a list of
            ``dims`` checkpoints (modules or references) of the same architecture.
        out: netCDF file written after every row; an existing file with the same settings is resumed.

    Returns:
        An ``xr.Dataset`` over (x[, y]): ``loss`` (mean cross-entropy, nats), ``error``
        (fraction), ``done`` (rows finished); attrs: directions, their norms, BN policy, provenance.
    """
    from distill.device import resolve_device
    from landscape.refs import load_ref

    cf, dims, split = config, config.dims, config.split
    nx, ny = (cf.resolution,) * 2 if isinstance(cf.resolution, (int, np.integer)) else tuple(cf.resolution)
    xs = _grid(cf.span, nx, "span")
    ys = _grid(cf.span if cf.yspan is None else cf.yspan, ny, "yspan") if dims == 2 else np.zeros(1)
    dev = resolve_device(cf.device)
    model, info = load_ref(center, dev)
    model.requires_grad_(False)
    s0 = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if isinstance(directions, str):
        dirs, ends, kind, refs_info = _drawn(directions, center, model, data, cf, dev)
    else:
        dirs, ends, kind, refs_info = _checkpoints(list(directions), s0, dims, dev)
    policy = cf.bn if has_batchnorm(model) else "none"
    ev = EvalSettings.of(cf)
    use_cl = use_channels_last(cf.channels_last, dev, model, data.train.images.dim(), "loop")
    inputs = ev.inputs(
        data, (split,), dev, policy == "reset", use_cl, f"the {split} split is empty: nothing to evaluate"
    )
    attrs: dict[str, Any] = {
        "analysis": "surface",
        "surface_definition": "theta(x, y) = theta_0 + x * d1 + y * d2" if dims == 2 else "theta(x) = theta_0 + x * d1",
        "directions": kind,
        "bias": cf.bias,
        "bn_params": cf.bn_params,
        "filter_normalization": FILTER_NORMALIZATION if directions == "random" else "none",
        "seed": cf.seed,
        **ev.split_attrs(policy, split, inputs, data, dev),
        "memory_format": "channels_last" if use_cl else "contiguous",
        "toolkit_version": str(distill.__version__),
        "torch_version": str(torch.__version__),
    }
    sources = {"source": info.get("source", ""), **{k: v for k, v in refs_info.items() if k.endswith("source")}}
    values = {"dims": dims, "x": xs.tolist(), "y": ys.tolist(), "max_examples": cf.max_examples, **sources}
    attrs["surface_key"] = key = _key({**{k: attrs[k] for k in _KEYED}, **values})
    param_keys = {k for k, _ in model.named_parameters()}
    attrs.update({f"d{i + 1}_norm": _norm(d, param_keys) for i, d in enumerate(dirs)})
    attrs.update({f"center_{k}": v for k, v in info.items()})
    attrs.update(refs_info)
    model_spec_attrs(attrs, model)
    out_path = Path(out) if out is not None else None
    grid = _Grid(xs, ys, dims, *_resume(out_path, key, dims, (len(xs), len(ys))), attrs, out_path)
    keep = set(k for k in s0 if k.endswith(("running_mean", "running_var"))) if policy == "keep_a" else set()
    alist = [float(x) for x in xs]
    for j, y in enumerate(tqdm(ys, desc="surface", unit="row", disable=None if progress is None else not progress)):
        if not grid.done[j]:
            start, end = _row(s0, dirs, ends, keep, float(y), dims)
            row = run_segment(model, start, end, alist, policy, inputs, cf.eval_batch_size, 1, "loop", "loop")
            grid.fill(j, row[0][:, 0], row[1][:, 0])
    return grid.dataset()


def _key(settings: dict[str, Any]) -> str:
    """What identifies a surface's settings in its file: 16 hex digits of their JSON's SHA-256."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _drawn(
    directions: str, center: Any, model: nn.Module, data: Any, cf: SurfaceConfig, dev: torch.device
) -> tuple[list[dict[str, Tensor]], list[dict[str, Tensor]], str, dict[str, Any]]:
    """Random (filter-normalised) or top-Hessian directions: (directions, no end points, kind, attrs)."""
    dims, seed, hessian_batches = cf.dims, cf.seed, cf.hessian_batches
    if directions == "random":
        g = torch.Generator().manual_seed(int(seed))
        dirs = [random_direction(model, seed, cf.bias, cf.bn_params, generator=g) for _ in range(dims)]
        return dirs, [], "random, filter-normalised", {}
    if directions == "hessian":
        from landscape.hessian import HessianOperator, make_batches, top_eigenpairs
        from landscape.refs import load_ref

        work = load_ref(center, dev)[0]
        op = HessianOperator(work, make_batches(work, data, split="train", batches=hessian_batches, seed=seed))
        values, vecs = top_eigenpairs(op, k=dims, seed=seed)
        dirs = [{k: v.double().cpu() for k, v in op.unflatten(vec).items()} for vec in vecs]
        info = {"hessian_eigenvalues": json.dumps([float(v) for v in values]), "hessian_batches": hessian_batches}
        return dirs, [], "top Hessian eigenvectors (unit norm)", info
    raise ValueError(f"directions={directions!r}: pass 'random', 'hessian' or a list of {dims} checkpoint(s)")


def _checkpoints(
    refs: list[Any], s0: Mapping[str, Tensor], dims: int, dev: torch.device
) -> tuple[list[dict[str, Tensor]], list[dict[str, Tensor]], str, dict[str, Any]]:
    """Directions to ``dims`` checkpoints: (checkpoint - centre, the checkpoints' states, kind, attrs)."""
    from landscape.refs import load_ref

    if len(refs) != dims:
        raise ValueError(f"directions: {len(refs)} checkpoint(s) given for a {dims}-D surface; pass {dims}")
    dirs, ends, info = [], [], {}
    for i, ref in enumerate(refs):
        m, inf = load_ref(ref, dev)
        sd = m.state_dict()
        for k, t in s0.items():
            if k not in sd or sd[k].shape != t.shape:
                raise ValueError(
                    f"direction {i}: state_dict key {k!r} differs from the centre's: pass "
                    "checkpoints of one architecture"
                )
        ends.append({k: v.detach() for k, v in sd.items()})
        dirs.append({k: sd[k].double().cpu() - t.double().cpu() for k, t in s0.items() if t.is_floating_point()})
        info.update({f"d{i + 1}_{k}": v for k, v in inf.items()})
    return dirs, ends, "checkpoints minus centre", info


def _resume(
    out_path: Path | None, key: str, dims: int, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(loss, error (x, y), rows done (y,)): from the surface at ``out_path`` when it has the same
    settings (``key``), NaN and nothing done when there is none; other settings are refused."""
    if out_path is None or not out_path.exists():
        return np.full(shape, np.nan), np.full(shape, np.nan), np.zeros(shape[1], dtype=np.int8)
    with xr.open_dataset(out_path, engine="h5netcdf") as old:
        old = old.load()
    if old.attrs.get("surface_key") != key:
        raise ValueError(f"{out_path} holds a surface with other settings: pass another out= or delete it")
    expand = (lambda a: a[:, None]) if dims == 1 else (lambda a: a)
    return (
        expand(old.loss.values).copy(),
        expand(old.error.values).copy(),
        np.atleast_1d(old.done.values).astype(np.int8),
    )


def _row(
    s0: Mapping[str, Tensor],
    dirs: list[dict[str, Tensor]],
    ends: list[dict[str, Tensor]],
    keep: set[str],
    y: float,
    dims: int,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The ends (x = 0 and x = 1) of the row at ``y``; a checkpoint direction's row y = 0 ends
    exactly at the checkpoint, as the linear path does."""
    start, end = {}, {}
    for k, t in s0.items():
        if not t.is_floating_point() or k in keep:
            start[k] = end[k] = t
            continue
        d1 = dirs[0].get(k)
        d2 = dirs[1].get(k) if dims == 2 else None
        base = t.double().cpu()
        if d2 is not None and y != 0.0:
            base = base + y * d2
        start[k] = t if (d2 is None or y == 0.0) else base.to(t.dtype).to(t.device)
        if ends and (d2 is None or y == 0.0):
            end[k] = ends[0][k].to(t.device)  # exactly the linear path's end point
        elif d1 is not None:
            end[k] = (base + d1).to(t.dtype).to(t.device)
        else:
            end[k] = start[k]
    return start, end


@dataclass
class _Grid:
    """The surface so far: ``loss`` and ``error`` (x, y) filled in place, ``done`` per row."""

    xs: np.ndarray
    ys: np.ndarray
    dims: int
    loss: np.ndarray
    error: np.ndarray
    done: np.ndarray
    attrs: dict[str, Any]
    out_path: Path | None = None

    def fill(self, j: int, loss: np.ndarray, error: np.ndarray) -> None:
        """Row ``j`` evaluated: stored, and the file (when there is one) rewritten."""
        self.loss[:, j], self.error[:, j] = loss, error
        self.done[j] = 1
        if self.out_path is not None:
            self.out_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.out_path.with_name(self.out_path.name + ".tmp")
            self.dataset().to_netcdf(tmp, engine="h5netcdf")
            os.replace(tmp, self.out_path)

    def dataset(self) -> xr.Dataset:
        """The Dataset over (x[, y]) with ``done`` and the attrs."""
        dims = ("x", "y") if self.dims == 2 else ("x",)
        pick = (lambda a: a) if self.dims == 2 else (lambda a: a[:, 0])
        coords = {"x": ("x", self.xs)} | ({"y": ("y", self.ys)} if self.dims == 2 else {})
        done = ("y", self.done) if self.dims == 2 else ((), self.done[0])
        data_vars = {"loss": (dims, pick(self.loss)), "error": (dims, pick(self.error)), "done": done}
        row = "row" if self.dims == 2 else "line"
        return result_dataset("surface", data_vars, coords, self.attrs, fill={"row": row})
