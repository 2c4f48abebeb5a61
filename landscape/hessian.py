"""Curvature of the loss at a checkpoint: top Hessian eigenpairs, trace, spectral density (PyHessian's
quantities, computed with ``torch.func`` and SciPy).

The Hessian is never formed: `HessianOperator` gives Hessian-vector products over all
floating-point *parameters* (buffers fixed; BatchNorm in eval mode, i.e. with its running
statistics) as forward-mode derivatives of the gradient (``torch.func.jvp`` of
``torch.func.grad``), averaged over a fixed set of batches (the whole split, or a seeded number
of mini-batches; the count is recorded).

The eigenpairs, trace and spectral density come from `landscape.linalg` (Lanczos, Hutch++,
SLQ on any operator; re-exported here).

- `hessian`: all of it on one checkpoint as an ``xarray.Dataset``; `hessian_along_path`
  the same at points of the straight line between two checkpoints.

Losses: ``supervised`` (mean cross-entropy of a classifier on the labels) or ``distillation``
(mean cross-entropy H(p_teacher, p_student) against a frozen teacher's outputs, as in training).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import xarray as xr
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp

from distill.options import with_config
from distill.schema import labels
from landscape.configs import HessianConfig, HessianPathConfig
from landscape.hessian_result import Measures, to_dataset
from landscape.linalg import (  # noqa: F401 - the linear algebra, also importable from here
    power_iteration,
    smoothed_density,
    spectral_density,
    top_eigenpairs,
    trace,
)

LOSSES = ("supervised", "distillation")


# ----------------------------------------------------------------------------- the operator
class HessianOperator:
    """Hessian of the mean loss over ``batches`` with respect to ``model``'s floating-point parameters.

    batches: list of (inputs (B, ...) normalised float, targets) where targets are int64 labels
        (``supervised``) or teacher logits (B, K) (``distillation``).
    Vectors are flat float64 numpy arrays of length ``n`` (parameters in ``named_parameters``
    order) or dicts of tensors shaped like the parameters. ``hvps`` counts products so far.
    masks: optional 0/1 tensors by parameter name (a pruned network): products are then those of
    the Hessian restricted to the unpruned weights, ``M H M``.
    """

    def __init__(
        self,
        model: nn.Module,
        batches: Sequence[tuple[Tensor, Tensor]],
        loss: str = "supervised",
        teacher_temp: float = 1.0,
        student_temp: float = 1.0,
        masks: Mapping[str, Tensor] | None = None,
    ) -> None:
        if loss not in LOSSES:
            raise ValueError(f"loss={loss!r}: choose one of {', '.join(LOSSES)}")
        if not batches:
            raise ValueError("the Hessian needs at least one batch of data")
        self.model = model.eval()
        self.names = [k for k, p in model.named_parameters() if p.is_floating_point()]
        self.params = {k: p.detach() for k, p in model.named_parameters() if k in self.names}
        self.buffers = {k: b.detach() for k, b in model.named_buffers()}
        self.shapes = [self.params[k].shape for k in self.names]
        self.sizes = [int(self.params[k].numel()) for k in self.names]
        self.n = int(sum(self.sizes))
        self.dtype = self.params[self.names[0]].dtype
        self.device = self.params[self.names[0]].device
        self.batches = [(x.to(self.device, self.dtype), y.to(self.device)) for x, y in batches]
        total = sum(len(x) for x, _ in self.batches)
        self.weights = [len(x) / total for x, _ in self.batches]
        self.examples = total
        self.loss = loss
        self.hvps = 0
        self.masks = {k: m.to(self.device, self.dtype) for k, m in (masks or {}).items() if k in self.params}
        tt, ts = float(teacher_temp), float(student_temp)

        def loss_fn(params: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
            out = functional_call(self.model, (params, self.buffers), (x,))
            if loss == "supervised":
                return F.cross_entropy(out, y)
            pt = F.softmax(y.to(out.dtype) / tt, dim=-1)
            return -(pt * F.log_softmax(out / ts, dim=-1)).sum(-1).mean()

        self._loss = loss_fn
        self._grad = grad(loss_fn)

    # flat <-> dict
    def unflatten(self, v: np.ndarray) -> dict[str, Tensor]:
        """A flat float64 vector as one tensor per parameter (names, shapes and dtype of the model)."""
        t = torch.as_tensor(np.asarray(v), dtype=self.dtype, device=self.device)
        return {k: part.view(shape) for k, shape, part in zip(self.names, self.shapes, t.split(self.sizes))}

    def flatten(self, d: Mapping[str, Tensor]) -> np.ndarray:
        """One tensor per parameter as a flat float64 numpy vector (the inverse of ``unflatten``)."""
        return torch.cat([d[k].reshape(-1) for k in self.names]).detach().double().cpu().numpy()

    def value(self) -> float:
        """The mean loss over the batches."""
        with torch.no_grad():
            return float(sum(w * float(self._loss(self.params, x, y)) for w, (x, y) in zip(self.weights, self.batches)))

    def hvp(self, v: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """H v for a dict of parameter-shaped tensors."""
        out = {k: torch.zeros_like(self.params[k]) for k in self.names}
        v = {k: t * self.masks[k] if k in self.masks else t for k, t in v.items()}
        for w, (x, y) in zip(self.weights, self.batches):
            hv = jvp(
                lambda p: self._grad(p, x, y),  # noqa: B023 (called at once)
                (self.params,),
                (dict(v),),
            )[1]  # (gradient, H v)
            for k in self.names:
                out[k].add_(hv[k], alpha=w)
        for k, m in self.masks.items():
            out[k].mul_(m)
        self.hvps += 1
        return out

    def matvec(self, v: np.ndarray) -> np.ndarray:
        """H v for a flat float64 vector (n,) or (n, 1)."""
        return self.flatten(self.hvp(self.unflatten(np.ravel(v))))


def make_batches(
    model: nn.Module,
    data: Any,
    *,
    loss: str = "supervised",
    teacher: nn.Module | None = None,
    split: str = "train",
    batches: int | None = None,
    batch_size: int = 256,
    seed: int = 0,
) -> list[tuple[Tensor, Tensor]]:
    """Normalised (inputs, targets) batches of ``split``: all of it (``batches=None``) or ``batches``
    mini-batches of ``batch_size`` drawn once with ``seed``. Targets: labels, or the teacher's
    logits (eval mode) for the distillation loss."""
    from landscape.points import EvalSettings

    if loss not in LOSSES:
        raise ValueError(f"loss={loss!r}: choose one of {', '.join(LOSSES)}")
    if loss == "distillation" and teacher is None:
        raise ValueError("loss='distillation' needs the teacher: pass teacher=(store, 'teacher') or a module")
    if split not in ("train", "test"):
        raise ValueError(f"split={split!r}: choose 'train' or 'test'")
    device = next(model.parameters()).device
    ev = EvalSettings(1, 1, 0, batch_size, None if batches is None else int(batches) * int(batch_size), seed)
    empty = f"the {split} split is empty: nothing to compute the Hessian on"
    inputs = ev.inputs(data, (split,), device, False, False, empty)
    out = []
    for x, y in inputs.batches(split, batch_size):
        if teacher is not None and loss == "distillation":
            with torch.no_grad():
                y = teacher.eval()(x.to(next(teacher.parameters()).dtype))
        out.append((x, y))
    return out


# ----------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class _Batches:
    """The loss and the data the Hessian is taken over (`make_batches`)."""

    loss: str
    teacher: Any
    split: str
    batches: int | None
    batch_size: int
    seed: int

    @classmethod
    def of(cls, config: Any, teacher: Any) -> _Batches:
        """The loss and data of a Hessian config (its ``data_seed`` draws the batches)."""
        return cls(config.loss, teacher, config.split, config.batches, config.batch_size, config.data_seed)

    def operator(
        self, model: nn.Module, data: Any, device: torch.device, masks: Mapping[str, Tensor] | None = None
    ) -> tuple[HessianOperator, dict[str, Any]]:
        """The operator at ``model`` and its setup attrs."""
        from landscape.refs import load_ref

        t_module, t_info = load_ref(self.teacher, device) if self.teacher is not None else (None, {})
        kw = {k: getattr(self, k) for k in ("loss", "split", "batches", "batch_size", "seed")}
        bs = make_batches(model, data, teacher=t_module, **kw)
        op = HessianOperator(model, bs, self.loss, masks=masks)
        info = {
            "loss": self.loss,
            "split": self.split,
            "batches": len(bs),
            "batch_size": self.batch_size,
            "data_seed": self.seed,
            "examples": op.examples,
            "full_split": int(self.batches is None),
            "parameters": op.n,
        }
        info.update({f"teacher_{k}": v for k, v in t_info.items()})
        return op, info


# ----------------------------------------------------------------------------- entry points
@with_config(HessianConfig)
def hessian(model: Any, data: Any, *, config: HessianConfig, teacher: Any = None) -> xr.Dataset:
    """Top-``k`` Hessian eigenvalues, trace and (``slq_runs`` > 0) spectral density of the loss at ``model``.

    Args:
        model: ``nn.Module`` or ``(store, epoch | name)``; for ``loss="supervised"`` a classifier on
            ``data``'s labels; for ``distillation``, a DINO-head student.
        teacher: the frozen teacher (module or reference) of ``loss="distillation"``.

    Returns:
        An ``xr.Dataset``: ``eigenvalue`` (eigen), ``trace``, ``loss``, with ``vectors`` the unit
        eigenvectors ``eigenvector`` (eigen, parameter), and with SLQ ``slq_node``/``slq_weight`` (run,
        node) and ``density`` (lambda); attrs: settings and provenance.
    """
    from distill.device import resolve_device
    from landscape.refs import load_ref

    c = config
    dev = resolve_device(c.device)
    module, info = load_ref(model, dev)
    op, setup = _Batches.of(c, teacher).operator(module, data, dev)
    m = Measures(
        c.k, c.trace_probes, c.trace_method, c.seed, c.tol, c.slq_runs, c.slq_steps, c.density_points, c.vectors
    )
    return to_dataset([m.measure(op)], None, setup, info, module, m, dev)


@with_config(HessianPathConfig)
def hessian_along_path(a: Any, b: Any, data: Any, *, config: HessianPathConfig, teacher: Any = None) -> xr.Dataset:
    """`hessian` (eigenvalues and trace) at points ``(1 - alpha) a + alpha b`` of the straight
    line (``teacher`` as there). Returns an ``xr.Dataset`` over (alpha, eigen)."""
    from distill.bn import recalibrate_bn
    from distill.device import resolve_device
    from landscape.align import training_batches
    from landscape.paths import _alpha_values, interpolate_state
    from landscape.refs import load_ref

    c = config
    dev = resolve_device(c.device)
    ma, info_a = load_ref(a, dev)
    mb, info_b = load_ref(b, dev)
    # copies: ``ma`` is loaded with every point below, and its state_dict() tensors are its own parameters
    sa = {k: t.detach().clone() for k, t in ma.state_dict().items()}
    sb = {k: t.detach().clone() for k, t in mb.state_dict().items()}
    alist = _alpha_values(c.alphas)
    bn_batches = training_batches(data, 8, 256, 0, dev) if c.bn == "reset" else []
    source = _Batches.of(c, teacher)
    m = Measures(c.k, c.trace_probes, c.trace_method, c.seed, c.tol)
    results: list[dict[str, Any]] = []
    setup: dict[str, Any] = {}
    for x in alist:
        ma.load_state_dict(interpolate_state(sa, sb, float(x)))
        if bn_batches:
            recalibrate_bn(ma, bn_batches)
        op, setup = source.operator(ma, data, dev)
        results.append(m.measure(op))
    info = {**{f"a_{k}": v for k, v in info_a.items()}, **{f"b_{k}": v for k, v in info_b.items()}, "bn_policy": c.bn}
    return to_dataset(results, alist, setup, info, ma, m, dev, "hessian_path")


def hessian_over_levels(
    store: Any,
    data: Any,
    rewind: str = "start",
    k: int = 3,
    *,
    split: str = "train",
    batches: int | None = 4,
    batch_size: int = 256,
    data_seed: int = 0,
    trace_probes: int = 51,
    trace_method: str = "hutch++",
    seed: int = 0,
    tol: float = 1e-4,
    device: str | torch.device = "auto",
) -> xr.Dataset:
    """`hessian` (supervised loss, eigenvalues and trace) of every level of a lottery-ticket
    store (``lottery/<rewind>/<level>`` written by `landscape.lottery.lottery`), restricted to
    each level's unpruned weights (``M H M`` with the stored masks). Returns a Dataset over
    (level, eigen) with ``remaining`` (fraction of masked weights kept)."""
    from distill.device import resolve_device
    from distill.store import Store

    store = store if isinstance(store, Store) else Store(store)
    names = [n for n in store.names(f"lottery/{rewind}/") if n.rsplit("/", 1)[1].isdigit() and n.count("/") == 2]
    if not names:
        raise ValueError(
            f"{store.path} holds no lottery levels for rewind {rewind!r}: run landscape.lottery with this store first"
        )
    dev = resolve_device(device)
    source = _Batches("supervised", None, split, batches, batch_size, data_seed)
    m = Measures(k, trace_probes, trace_method, seed, tol)
    results: list[dict[str, Any]] = []
    remaining: list[float] = []
    setup: dict[str, Any] = {}
    for name in names:
        module, masks = _level(store, name, dev)
        op, setup = source.operator(module, data, dev, masks)
        results.append(m.measure(op))
        total = sum(t.numel() for t in (masks or {}).values())
        remaining.append(
            sum(float(t.float().mean()) * t.numel() for t in (masks or {}).values()) / total if total else 1.0
        )
    levels = np.asarray([int(n.rsplit("/", 1)[1]) for n in names])
    info = {"store": str(store.path), "rewind": rewind}
    ds = to_dataset(results, levels, setup, info, module, m, dev, "hessian_levels", "level")
    ds["remaining"] = ("level", np.asarray(remaining), labels("hessian_levels", "remaining"))
    ds.attrs["restricted_to"] = "unpruned weights (M H M with the stored masks)"
    return ds


def _level(store: Any, name: str, device: torch.device) -> tuple[nn.Module, dict[str, Tensor] | None]:
    """The stored network of one lottery level (eval mode) and its masks (None when it has none)."""
    from distill.store import StoreError

    module = store.load_module(name, device).eval()
    try:
        return module, store.load_masks(name)
    except (StoreError, KeyError):
        return module, None
