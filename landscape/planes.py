"""2-D slices of the loss landscape through three checkpoints (Garipov et al. 2018; the paper's Figure 5).

The plane through a, b, c has origin a and two orthogonal directions over the flattened
floating-point *parameters*: ``u = b - a`` and ``v = (c - a) - (<c - a, u> / <u, u>) u``
(one Gram-Schmidt step). A grid point (x, y) is

    theta(x, y) = a + x * u + y * (||u|| / ||v||) * v,

so both coordinates are in units of ||u|| = ||b - a|| and the plane keeps its true aspect
ratio: a = (0, 0), b = (1, 0), c = (<c - a, u> / ||u||^2, ||v|| / ||u||). Floating-point buffers
(BN running statistics) follow the same affine combination of a, b and c; the BN policy then
decides what is used (``reset``: re-estimated at every grid point, the default).

Example:

```python
ds = plane((store, 10), (store, 50), (other, 50), data, resolution=21)
ds.error.plot(x="x", y="y")
```
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import Tensor, nn

from distill.bn import has_batchnorm
from distill.options import with_config
from distill.schema import result_dataset
from landscape.configs import PlaneConfig
from landscape.evaluate import PathInputs, bn_stat_keys, run_segment
from landscape.executors import run_units
from landscape.points import EvalSettings, check_same_architecture, stamp_result, use_channels_last
from landscape.refs import load_ref, require_classifier

DEFINITION = (
    "theta(x, y) = a + x * u + y * (|u| / |v|) * v with u = b - a and v = (c - a) - "
    "(<c - a, u> / <u, u>) u over the floating-point parameters; x, y in units of |u| = |b - a|; "
    "floating-point buffers follow the same affine combination of a, b, c"
)


def _axis(lo: float, hi: float, n: int, name: str) -> np.ndarray:
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise ValueError(f"the {name} range ({lo}, {hi}) is empty: pass span=(low, high) with low < high")
    return np.linspace(lo, hi, n)


def _resolution(resolution: int | Sequence[int]) -> tuple[int, int]:
    values = (resolution, resolution) if isinstance(resolution, (int, np.integer)) else tuple(resolution)
    if len(values) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 2 for v in values):
        raise ValueError(f"resolution={resolution!r}: pass an int >= 2 or a pair (nx, ny) of such ints")
    return int(values[0]), int(values[1])


def _inputs_to(inputs: PathInputs, device: torch.device) -> PathInputs:
    return replace(
        inputs,
        bn=[t.to(device) for t in inputs.bn],
        splits={k: (x.to(device), y.to(device)) for k, (x, y) in inputs.splits.items()},
        mean=inputs.mean.to(device),
        std=inputs.std.to(device),
    )


@dataclass(frozen=True)
class PlaneRow:
    """One grid row (fixed y) as a work unit (`landscape.executors`): picklable, independent.

    The row is the segment from ``a + y s v`` (x = 0) to ``b + y s v`` (x = 1) with
    ``s = scale = |u| / |v|``, evaluated at ``xs`` by the linear-path evaluators (lerp gives
    ``a + x u + y s v``). Tensors travel on the CPU when the row runs elsewhere and are moved to
    ``device`` there. Returns (loss, error, evaluator): float64 arrays of shape (len(xs),).
    """

    y: float
    scale: float
    model: nn.Module
    sa: dict[str, Tensor]
    sb: dict[str, Tensor]
    v: dict[str, Tensor]
    keep: frozenset[str]
    xs: list[float]
    policy: str
    inputs: PathInputs
    eval_batch_size: int
    backend: str
    chosen: str
    device: str

    def done(self) -> bool:
        """Never: a row writes no store, so it is always computed."""
        return False

    def __call__(self) -> tuple[np.ndarray, np.ndarray, str]:
        dev = torch.device(self.device)
        start, end = {}, {}
        for k, t in self.sa.items():
            if not t.is_floating_point() or k in self.keep:
                start[k], end[k] = t, t
                continue
            shift = self.v[k] * (self.y * self.scale)
            start[k] = (t.double() + shift).to(t.dtype)
            end[k] = (self.sb[k].double() + shift).to(t.dtype)
        if any(t.device != dev for t in start.values()):
            start = {k: t.to(dev) for k, t in start.items()}
            end = {k: t.to(dev) for k, t in end.items()}
        inputs = self.inputs if self.inputs.mean.device == dev else _inputs_to(self.inputs, dev)
        model = copy.deepcopy(self.model).to(dev)  # the evaluators overwrite its state: rows may share a process
        loss, err, chosen = run_segment(
            model,
            start,
            end,
            self.xs,
            self.policy,
            inputs,
            self.eval_batch_size,
            min(8, len(self.xs)),
            self.backend,
            self.chosen,
        )
        return loss[:, 0], err[:, 0], chosen


def plane_basis(
    sa: Mapping[str, Tensor], sb: Mapping[str, Tensor], sc: Mapping[str, Tensor], param_keys: set[str] | None = None
) -> dict[str, Any]:
    """The plane's directions from three state dicts (one Gram-Schmidt step, in float64).

    Inner products run over ``param_keys`` (default: every floating-point key). Returns
    ``u = b - a`` and ``v = (c - a) - projection * u`` as float64 tensors for every floating-point
    key (buffers included, with the same coefficient), ``projection = <c - a, u> / <u, u>`` and the
    norms ``norm_u``, ``norm_v``, ``norm_w`` (= |c - a|) over ``param_keys``. Raises ValueError
    when b == a or when c lies on the line through a and b.
    """
    float_keys = [k for k, t in sa.items() if t.is_floating_point()]
    # a fixed order of summation: a set's order changes with the process's string hash (and the last bit)
    keys = sorted(set(float_keys) if param_keys is None else set(param_keys) & set(float_keys))
    u = {k: sb[k].double() - sa[k].double() for k in float_keys}
    w = {k: sc[k].double() - sa[k].double() for k in float_keys}
    uu = sum(float((u[k] * u[k]).sum()) for k in keys)
    uw = sum(float((u[k] * w[k]).sum()) for k in keys)
    ww = sum(float((w[k] * w[k]).sum()) for k in keys)
    if uu == 0.0:
        raise ValueError("a and b have identical parameters: the plane needs b != a")
    proj = uw / uu
    v = {k: w[k] - proj * u[k] for k in float_keys}
    vv = sum(float((v[k] * v[k]).sum()) for k in keys)
    if vv <= 1e-12 * max(uu, ww):
        raise ValueError("c lies on the line through a and b: pick a third checkpoint off that line")
    return {
        "u": u,
        "v": v,
        "projection": proj,
        "norm_u": math.sqrt(uu),
        "norm_v": math.sqrt(vv),
        "norm_w": math.sqrt(ww),
    }


@with_config(PlaneConfig)
def plane(
    a: Any,
    b: Any,
    c: Any,
    data: Any,
    *,
    config: PlaneConfig,
    progress: bool | None = None,
    executor: Executor | None = None,
) -> xr.Dataset:
    """Loss and error on a grid in the plane through ``a``, ``b``, ``c`` (see the module docstring),
    evaluated in fp32 by the evaluators of `landscape.evaluate` (vmap: one grid row per pass).

    a, b, c: ``nn.Module`` (never modified) or ``(store_or_path, epoch | name)``; one architecture,
        classifiers for ``data``'s classes (e.g. children of `landscape.instability`). ``a``
        is the origin (0, 0), ``b`` sets the x axis (1, 0), ``c`` the third point (the y axis).

    Args:
        executor: any ``concurrent.futures.Executor`` evaluating the grid rows (`PlaneRow`) in
            parallel (default: one after the other here); the values equal the sequential run's
            (bit for bit when the workers use as many intra-op threads).

    Returns:
        An ``xr.Dataset`` with dims (x, y): ``loss`` (mean cross-entropy, nats) and ``error``
        (fraction); ``point_x``/``point_y`` over ``point`` = ["a", "b", "c"] (the three checkpoints'
        coordinates); attrs ``norm_u``, ``norm_v`` (L2 norms of u and v in parameter space), the
        definition and provenance.
    """
    cf = config
    nx, ny = _resolution(cf.resolution)
    from distill.train import resolve_device

    dev = resolve_device(cf.device)
    model, (sa, sb, sc), infos = _three(a, b, c, data, dev)
    basis = plane_basis(sa, sb, sc, {k for k, _ in model.named_parameters()})
    v, proj, norm_u, norm_v = basis["v"], basis["projection"], basis["norm_u"], basis["norm_v"]
    points = np.array([[0.0, 0.0], [1.0, 0.0], [proj, norm_v / norm_u]])
    xs, ys = _grid(points, cf.span, cf.margin, nx, ny)
    policy = cf.bn if has_batchnorm(model) else "none"
    chosen = cf.backend if cf.backend != "auto" else ("vmap" if dev.type == "cuda" else "loop")
    ev = EvalSettings.of(cf)
    use_cl = use_channels_last(cf.channels_last, dev, model, data.train.images.dim(), chosen)
    split = cf.split
    inputs = ev.inputs(
        data, (split,), dev, policy == "reset", use_cl, f"the {split} split is empty: nothing to evaluate"
    )
    keep = frozenset(bn_stat_keys(model) if policy == "keep_a" else ())
    state = (norm_u / norm_v, model, sa, sb, v, keep, [float(x) for x in xs])
    row = PlaneRow(0.0, *state, policy, inputs, cf.eval_batch_size, cf.backend, chosen, str(dev))
    loss, error, chosen = _rows(row, ys, executor, progress)
    attrs: dict[str, Any] = {
        "analysis": "plane",
        "plane_definition": DEFINITION,
        "norm_u": norm_u,
        "norm_v": norm_v,
        "norm_c_minus_a": basis["norm_w"],
        "c_projection": proj,
        "coordinate_units": "|b - a| (norm_u)",
        "backend": chosen,
        **ev.split_attrs(policy, split, inputs, data, dev),
        **infos,
    }
    leave_out = ("backend", "device", "norm_u", "norm_v", "norm_c_minus_a", "c_projection")
    stamp_result(attrs, model, "plane", dev, leave_out, x=[float(x) for x in xs], y=[float(y) for y in ys])
    return _dataset(loss, error, points, xs, ys, attrs)


def _dataset(
    loss: np.ndarray, error: np.ndarray, points: np.ndarray, xs: np.ndarray, ys: np.ndarray, attrs: dict[str, Any]
) -> xr.Dataset:
    return result_dataset(
        "plane",
        {"loss": (("x", "y"), loss), "error": (("x", "y"), error)}
        | {"point_x": ("point", points[:, 0]), "point_y": ("point", points[:, 1])},
        {"x": ("x", xs), "y": ("y", ys), "point": ("point", np.array(["a", "b", "c"]))},
        attrs,
    )


def _rows(
    row: PlaneRow, ys: np.ndarray, executor: Executor | None, progress: bool | None
) -> tuple[np.ndarray, np.ndarray, str]:
    """Loss and error (x, y) of ``row`` moved to every ``y`` (rows run by ``executor``, travelling on
    the CPU when there is one), and the evaluator used (the loop where vmap failed under auto)."""
    if executor is not None:  # rows travel to the workers on the CPU and move to the device there
        cpu = torch.device("cpu")
        sa, sb, v = ({k: t.to(cpu) for k, t in d.items()} for d in (row.sa, row.sb, row.v))
        row = replace(row, sa=sa, sb=sb, v=v, model=row.model.to(cpu), inputs=_inputs_to(row.inputs, cpu))
    results, _ = run_units([replace(row, y=float(y)) for y in ys], executor, desc="plane rows", progress=progress)
    loss = np.stack([r[0] for r in results], axis=1)  # (nx, ny)
    error = np.stack([r[1] for r in results], axis=1)
    chosen = row.chosen if all(r[2] == row.chosen for r in results) else "loop"  # vmap failed, auto fell back
    return loss, error, chosen


def _three(
    a: Any, b: Any, c: Any, data: Any, dev: torch.device
) -> tuple[nn.Module, tuple[dict[str, Tensor], ...], dict[str, Any]]:
    """(working copy of a, the states of a, b and c, their a_/b_/c_ provenance attrs); the three
    checked to be classifiers of one architecture."""
    modules, infos = zip(*(load_ref(ref, dev) for ref in (a, b, c)))
    for name, module, info in zip("abc", modules, infos):
        require_classifier(module, data, name, info["source"])
    model = modules[0]
    sa = {k: t.detach().clone() for k, t in model.state_dict().items()}
    sb, sc = ({k: t.detach() for k, t in m.state_dict().items()} for m in modules[1:])
    check_same_architecture(sa, sb, "b")
    check_same_architecture(sa, sc, "c")
    model.requires_grad_(False)
    return model, (sa, sb, sc), {f"{p}_{k}": v for p, info in zip("abc", infos) for k, v in info.items()}


def _grid(
    points: np.ndarray, span: Sequence[float] | Sequence[Sequence[float]] | None, margin: float, nx: int, ny: int
) -> tuple[np.ndarray, np.ndarray]:
    """The x and y coordinates: ``span`` or the bounding box of the ``points`` widened by ``margin``."""
    if span is None:
        (x0, y0), (x1, y1) = points.min(0) - margin, points.max(0) + margin  # margin >= 0: checked by PlaneConfig
    else:
        grid = np.asarray(span, dtype=np.float64) if np.ndim(span) in (1, 2) else None
        if grid is not None and grid.shape == (2,):
            (x0, x1), (y0, y1) = grid.tolist(), grid.tolist()
        elif grid is not None and grid.shape == (2, 2):
            (x0, x1), (y0, y1) = grid.tolist()
        else:
            raise ValueError(f"span={span!r}: pass (low, high) or ((x_low, x_high), (y_low, y_high))")
    return _axis(x0, x1, nx, "x"), _axis(y0, y1, ny, "y")
