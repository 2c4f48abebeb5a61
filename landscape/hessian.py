"""Curvature of the loss at a checkpoint: top Hessian eigenpairs, trace, spectral density (PyHessian's
quantities, computed with ``torch.func`` and SciPy).

The Hessian is never formed: `HessianOperator` gives Hessian-vector products over all
floating-point *parameters* (buffers fixed; BatchNorm in eval mode, i.e. with its running
statistics) as forward-mode derivatives of the gradient (``torch.func.jvp`` of
``torch.func.grad``), averaged over a fixed set of batches (the whole split, or a seeded number
of mini-batches; the count is recorded).

- `top_eigenpairs`: Lanczos with a Ritz-residual stop (``scipy.sparse.linalg.eigsh`` as the
  fallback and on request).
- `power_iteration`: the plain baseline (PyHessian's method), for benchmarks.
- `trace`: Hutchinson's estimator with Rademacher probes (and Hutch++, Meyer et al. 2021).
- `spectral_density`: stochastic Lanczos quadrature (Ghorbani et al. 2019).
- `hessian`: all of it on one checkpoint as an ``xarray.Dataset``; `hessian_along_path`
  the same at points of the straight line between two checkpoints.

Losses: ``supervised`` (mean cross-entropy of a classifier on the labels) or ``distillation``
(mean cross-entropy H(p_teacher, p_student) against a frozen teacher's outputs, as in training).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import xarray as xr
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp

from distill.options import with_config
from landscape.configs import HessianConfig, HessianPathConfig

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
        out, i = {}, 0
        for k, shape, size in zip(self.names, self.shapes, self.sizes):
            out[k] = t[i : i + size].view(shape)
            i += size
        return out

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

    def linear_operator(self):
        """A ``scipy.sparse.linalg.LinearOperator`` (float64) of shape (n, n)."""
        from scipy.sparse.linalg import LinearOperator

        return LinearOperator((self.n, self.n), matvec=self.matvec, dtype=np.float64)


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
    from landscape.evaluate import prepare_inputs

    if loss not in LOSSES:
        raise ValueError(f"loss={loss!r}: choose one of {', '.join(LOSSES)}")
    if loss == "distillation" and teacher is None:
        raise ValueError("loss='distillation' needs the teacher: pass teacher=(store, 'teacher') or a module")
    if split not in ("train", "test"):
        raise ValueError(f"split={split!r}: choose 'train' or 'test'")
    device = next(model.parameters()).device
    max_examples = None if batches is None else int(batches) * int(batch_size)
    inputs = prepare_inputs(
        data,
        (split,),
        bn_batches=1,
        bn_batch_size=1,
        bn_seed=0,
        max_examples=max_examples,
        eval_seed=seed,
        device=device,
        need_bn=False,
    )
    out = []
    for x, y in inputs.batches(split, batch_size):
        if teacher is not None and loss == "distillation":
            with torch.no_grad():
                y = teacher.eval()(x.to(next(teacher.parameters()).dtype))
        out.append((x, y))
    if not out:
        raise ValueError(f"the {split} split is empty: nothing to compute the Hessian on")
    return out


# ----------------------------------------------------------------------------- eigenpairs
def _start_vector(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(n)


def top_eigenpairs(
    op: HessianOperator,
    k: int = 5,
    which: str = "LA",
    tol: float = 1e-6,
    seed: int = 0,
    maxiter: int | None = None,
    method: str = "lanczos",
    max_steps: int = 300,
    memory_bytes: int = 2**30,
    stop: str = "residual",
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest (``LA``, algebraic) or largest-magnitude (``LM``) eigenvalues of the Hessian.

    ``lanczos`` (default): Lanczos from a seeded start vector with full reorthogonalisation, stopped
    as soon as every wanted Ritz pair has residual ``|H y - theta y| <= tol |theta|`` (read off the
    tridiagonal, one product per step, no restarts); if that has not happened after ``max_steps``
    steps (fewer when the basis would exceed ``memory_bytes``), ARPACK continues from the best Ritz
    vector. ``eigsh``: implicitly restarted Lanczos (``scipy.sparse.linalg.eigsh``) only. Both use
    ARPACK's convergence test, so ``tol`` means the same. ``stop="value"`` (Lanczos only) stops
    instead when no wanted Ritz value changed by more than ``tol`` (relative) in one step, the rule
    of PyHessian's power iteration (`power_iteration`), for like-for-like comparisons.

    Returns:
        (values (k,), descending; vectors (k, n), unit L2 norm in parameter space); ``op.hvps``
        counts the products.
    """
    if which not in ("LA", "LM"):
        raise ValueError(f"which={which!r}: choose 'LA' (largest) or 'LM' (largest magnitude)")
    if method not in ("lanczos", "eigsh"):
        raise ValueError(f"method={method!r}: choose 'lanczos' or 'eigsh'")
    if stop not in ("residual", "value"):
        raise ValueError(f"stop={stop!r}: choose 'residual' or 'value'")
    if not 1 <= k < op.n:
        raise ValueError(f"k={k}: pass 1 <= k < number of parameters ({op.n})")
    v0 = _start_vector(op.n, seed)
    steps = min(op.n, int(max_steps), int(memory_bytes) // (8 * op.n))
    if method == "lanczos" and steps > k:
        done, vals, vecs = _lanczos_top(op, k, which, tol, v0, steps, stop)
        if done:
            return vals, vecs
        v0 = vecs[0]
    return _eigsh_top(op, k, which, tol, v0, maxiter)


def _eigsh_top(
    op: HessianOperator, k: int, which: str, tol: float, v0: np.ndarray, maxiter: int | None
) -> tuple[np.ndarray, np.ndarray]:
    from scipy.sparse.linalg import eigsh

    vals, vecs = eigsh(op.linear_operator(), k=k, which=which, tol=tol, v0=v0, maxiter=maxiter)
    order = np.argsort(-vals if which == "LA" else -np.abs(vals))
    return vals[order], vecs[:, order].T


def _lanczos_top(
    op: HessianOperator, k: int, which: str, tol: float, v0: np.ndarray, steps: int, stop: str = "residual"
) -> tuple[bool, np.ndarray, np.ndarray]:
    """Lanczos with a Ritz-residual stop (see `top_eigenpairs`); (converged, values, vectors)."""
    from scipy.linalg import eigh_tridiagonal

    basis = np.zeros((steps, op.n))
    alpha: list[float] = []
    beta: list[float] = []
    v = v0 / np.linalg.norm(v0)
    vals, ritz = np.zeros(k), np.zeros((k, steps))
    for j in range(steps):
        basis[j] = v
        w = op.matvec(v)
        a = float(w @ v)
        w = w - a * v - (beta[-1] * basis[j - 1] if j > 0 else 0.0)
        for _ in range(2):  # twice is enough (Kahan's rule) to keep the basis orthogonal in fp64
            w = w - basis[: j + 1].T @ (basis[: j + 1] @ w)
        alpha.append(a)
        b = float(np.linalg.norm(w))
        if j + 1 >= k:
            theta, s = (
                eigh_tridiagonal(np.asarray(alpha), np.asarray(beta)) if j else (np.asarray(alpha), np.ones((1, 1)))
            )
            top = np.argsort(-theta if which == "LA" else -np.abs(theta))[:k]
            prev = vals if j + 1 > k else None
            vals, ritz = theta[top], s[:, top].T
            scale = max(float(np.abs(theta).max()), 1e-300)
            invariant = b <= 1e-12 * scale  # the Krylov space is exhausted: the Ritz pairs are exact
            if stop == "value":
                ok = prev is not None and bool(np.all(np.abs(vals - prev) < tol * np.maximum(np.abs(prev), 1e-12)))
            else:
                ok = bool(np.all(b * np.abs(ritz[:, -1]) <= tol * np.maximum(np.abs(vals), 1e-300)))
            if invariant or ok:
                vecs = ritz @ basis[: j + 1]
                return True, vals, vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
        beta.append(b)
        v = w / b
    vecs = ritz @ basis[: ritz.shape[1]]
    return False, vals, vecs / np.linalg.norm(vecs, axis=1, keepdims=True)


def power_iteration(
    op: HessianOperator, tol: float = 1e-3, max_iter: int = 100, seed: int = 0
) -> tuple[float, np.ndarray, int]:
    """The top eigenvalue by plain power iteration (PyHessian's stopping rule: relative change of
    the Rayleigh quotient below ``tol``). Returns (eigenvalue, unit vector (n,), iterations)."""
    v = _start_vector(op.n, seed)
    v /= np.linalg.norm(v)
    value, it = None, 0
    for it in range(1, max_iter + 1):  # noqa: B007 (the count is returned)
        hv = op.matvec(v)
        new = float(v @ hv)
        v = hv / (np.linalg.norm(hv) + 1e-300)
        if value is not None and abs(new - value) < tol * (abs(value) + 1e-12):
            value = new
            break
        value = new
    if value is None:
        raise ValueError(f"max_iter={max_iter}: power iteration needs at least one step")
    return value, v, it


# ----------------------------------------------------------------------------- trace
def trace(op: HessianOperator, probes: int = 100, seed: int = 0, method: str = "hutch++") -> tuple[float, np.ndarray]:
    """Trace estimate from ``probes`` Hessian-vector products with Rademacher vectors drawn with ``seed``.

    ``hutchinson``: mean of v^T H v (variance 2 sum_{i != j} H_ij^2 / probes, large for the few
    dominant directions of a network Hessian); returns (estimate, the per-probe values).
    ``hutch++`` (default): a third of the products sketch the top subspace Q (orthonormalised
    H S), tr(Q^T H Q) takes another third exactly, the rest estimate the trace of the deflated
    remainder; returns (estimate, that remainder's per-probe values).
    """
    if method not in ("hutchinson", "hutch++"):
        raise ValueError(f"method={method!r}: choose 'hutchinson' or 'hutch++'")
    if probes < (3 if method == "hutch++" else 1):
        raise ValueError(f"probes={probes}: pass at least {3 if method == 'hutch++' else 1}")
    rng = np.random.default_rng(seed)
    if method == "hutchinson":
        samples = np.empty(probes)
        for i in range(probes):
            v = rng.choice([-1.0, 1.0], size=op.n)
            samples[i] = v @ op.matvec(v)
        return float(samples.mean()), samples
    m = probes // 3
    rest = probes - 2 * m
    s = rng.choice([-1.0, 1.0], size=(op.n, m))
    q, _ = np.linalg.qr(np.stack([op.matvec(s[:, j]) for j in range(m)], 1))
    top = sum(float(q[:, j] @ op.matvec(q[:, j])) for j in range(m))
    samples = np.empty(rest)
    for i in range(rest):
        g = rng.choice([-1.0, 1.0], size=op.n)
        g = g - q @ (q.T @ g)
        samples[i] = g @ op.matvec(g)
    return top + float(samples.mean()), samples


# ----------------------------------------------------------------------------- density
def lanczos(op: HessianOperator, steps: int, v0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``steps`` Lanczos iterations from ``v0`` with full reorthogonalisation; returns the
    tridiagonal's diagonal (m,) and off-diagonal (m - 1,) (m <= steps when the space is exhausted)."""
    n = op.n
    basis = np.zeros((min(steps, n), n))
    alpha: list[float] = []
    beta: list[float] = []
    v = v0 / np.linalg.norm(v0)
    for j in range(min(steps, n)):
        basis[j] = v
        w = op.matvec(v)
        a = float(w @ v)
        w = w - a * v - (beta[-1] * basis[j - 1] if j > 0 else 0.0)
        w = w - basis[: j + 1].T @ (basis[: j + 1] @ w)  # full reorthogonalisation
        alpha.append(a)
        b = float(np.linalg.norm(w))
        if j == min(steps, n) - 1 or b < 1e-10 * max(1.0, abs(a)):
            break
        beta.append(b)
        v = w / b
    return np.asarray(alpha), np.asarray(beta[: len(alpha) - 1])


def spectral_density(
    op: HessianOperator, runs: int = 5, steps: int = 50, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Stochastic Lanczos quadrature: for each of ``runs`` Rademacher start vectors, ``steps``
    Lanczos steps give nodes (Ritz values) and weights (squared first components of the
    tridiagonal's eigenvectors, summing to 1). Returns (nodes, weights), each (runs, steps), padded
    with NaN / 0 where Lanczos stopped early; the density is ``mean_r sum_i w_ri delta(x - node_ri)``."""
    from scipy.linalg import eigh_tridiagonal

    rng = np.random.default_rng(seed)
    nodes = np.full((runs, steps), np.nan)
    weights = np.zeros((runs, steps))
    for r in range(runs):
        a, b = lanczos(op, steps, rng.choice([-1.0, 1.0], size=op.n))
        vals, vecs = eigh_tridiagonal(a, b) if len(a) > 1 else (a, np.ones((1, 1)))
        nodes[r, : len(vals)] = vals
        weights[r, : len(vals)] = vecs[0] ** 2
    return nodes, weights


def smoothed_density(nodes: np.ndarray, weights: np.ndarray, grid: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-smoothed SLQ density on ``grid`` (per unit eigenvalue; integrates to ~1)."""
    ok = np.isfinite(nodes)
    x, w = nodes[ok], weights[ok] / nodes.shape[0]
    z = (grid[:, None] - x[None, :]) / sigma
    return (np.exp(-0.5 * z * z) * w[None, :]).sum(1) / (sigma * math.sqrt(2 * math.pi))


# ----------------------------------------------------------------------------- datasets
def _operator(
    model: nn.Module,
    data: Any,
    loss: str,
    teacher: Any,
    split: str,
    batches: int | None,
    batch_size: int,
    seed: int,
    device: torch.device,
    masks: Mapping[str, Tensor] | None = None,
) -> tuple[HessianOperator, dict[str, Any]]:
    from landscape.refs import load_ref

    t_module, t_info = load_ref(teacher, device) if teacher is not None else (None, {})
    bs = make_batches(
        model, data, loss=loss, teacher=t_module, split=split, batches=batches, batch_size=batch_size, seed=seed
    )
    op = HessianOperator(model, bs, loss, masks=masks)
    info = {
        "loss": loss,
        "split": split,
        "batches": len(bs),
        "batch_size": batch_size,
        "data_seed": seed,
        "examples": op.examples,
        "full_split": int(batches is None),
        "parameters": op.n,
    }
    info.update({f"teacher_{k}": v for k, v in t_info.items()})
    return op, info


def _measure(
    op: HessianOperator, k: int, probes: int, trace_method: str, slq_runs: int, slq_steps: int, seed: int, tol: float
) -> dict[str, Any]:
    out: dict[str, Any] = {"loss_value": op.value()}
    t0 = time.perf_counter()
    if k:
        out["eigenvalues"], out["eigenvectors"] = top_eigenpairs(op, k, tol=tol, seed=seed)
    out["eig_seconds"] = time.perf_counter() - t0
    if probes:
        out["trace"], out["trace_samples"] = trace(op, probes, seed, trace_method)
    if slq_runs:
        out["nodes"], out["weights"] = spectral_density(op, slq_runs, slq_steps, seed)
    out["hvps"] = op.hvps
    return out


@with_config(HessianConfig)
def hessian(
    model: Any,
    data: Any,
    *,
    k: int,
    loss: str,
    teacher: Any = None,
    split: str,
    batches: int | None,
    batch_size: int,
    data_seed: int,
    trace_probes: int,
    trace_method: str,
    seed: int,
    tol: float,
    slq_runs: int,
    slq_steps: int,
    density_points: int,
    vectors: bool,
    device: str | torch.device,
) -> xr.Dataset:
    """Top-``k`` Hessian eigenvalues, trace and (``slq_runs`` > 0) spectral density of the loss at ``model``.

    Args:
        model: ``nn.Module`` or ``(store, epoch | name)``; for ``loss="supervised"`` a classifier on
            ``data``'s labels; for ``distillation``, a DINO-head student and ``teacher`` the frozen teacher.
        batches: mini-batches of ``batch_size`` drawn with ``data_seed`` (None: the whole split).
        vectors: also return the unit eigenvectors as ``eigenvector`` (eigen, parameter).

    Returns:
        An ``xr.Dataset``: ``eigenvalue`` (eigen), ``trace``, ``loss``, and with SLQ
        ``slq_node``/``slq_weight`` (run, node) and ``density`` (lambda); attrs: settings and provenance.
    """
    from distill.device import resolve_device
    from landscape.refs import load_ref

    dev = resolve_device(device)
    module, info = load_ref(model, dev)
    op, setup = _operator(module, data, loss, teacher, split, batches, batch_size, data_seed, dev)
    res = _measure(op, k, trace_probes, trace_method, slq_runs, slq_steps, seed, tol)
    return _to_dataset(
        [res],
        None,
        setup,
        info,
        module,
        k,
        trace_probes,
        trace_method,
        slq_runs,
        slq_steps,
        density_points,
        seed,
        tol,
        vectors,
        dev,
    )


@with_config(HessianPathConfig)
def hessian_along_path(
    a: Any,
    b: Any,
    data: Any,
    *,
    alphas: int | Sequence[float],
    k: int,
    bn: str,
    loss: str,
    teacher: Any = None,
    split: str,
    batches: int | None,
    batch_size: int,
    seed: int,
    data_seed: int,
    tol: float,
    trace_probes: int,
    trace_method: str,
    device: str | torch.device,
) -> xr.Dataset:
    """`hessian` (eigenvalues and trace) at points ``(1 - alpha) a + alpha b`` of the straight
    line; ``bn``: ``interpolate`` (running statistics on the line) or ``reset`` (re-estimated on 8
    seeded training batches). Returns an ``xr.Dataset`` over (alpha, eigen)."""
    from distill.bn import recalibrate_bn
    from distill.device import resolve_device
    from landscape.align import training_batches
    from landscape.paths import _alpha_values, interpolate_state
    from landscape.refs import load_ref

    if bn not in ("interpolate", "reset"):
        raise ValueError(f"bn={bn!r}: choose 'interpolate' or 'reset'")
    dev = resolve_device(device)
    ma, info_a = load_ref(a, dev)
    mb, info_b = load_ref(b, dev)
    # copies: ``ma`` is loaded with every point below, and its state_dict() tensors are its own parameters
    sa = {k: t.detach().clone() for k, t in ma.state_dict().items()}
    sb = {k: t.detach().clone() for k, t in mb.state_dict().items()}
    alist = _alpha_values(alphas)
    bn_batches = training_batches(data, 8, 256, 0, dev) if bn == "reset" else []
    results: list[dict[str, Any]] = []
    setup: dict[str, Any] = {}
    for x in alist:
        ma.load_state_dict(interpolate_state(sa, sb, float(x)))
        if bn_batches:
            recalibrate_bn(ma, bn_batches)
        op, setup = _operator(ma, data, loss, teacher, split, batches, batch_size, data_seed, dev)
        results.append(_measure(op, k, trace_probes, trace_method, 0, 0, seed, tol))
    info = {**{f"a_{kk}": v for kk, v in info_a.items()}, **{f"b_{kk}": v for kk, v in info_b.items()}, "bn_policy": bn}
    return _to_dataset(results, alist, setup, info, ma, k, trace_probes, trace_method, 0, 0, 0, seed, tol, False, dev)


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
    from distill.store import Store, StoreError

    store = store if isinstance(store, Store) else Store(store)
    names = [n for n in store.names(f"lottery/{rewind}/") if n.rsplit("/", 1)[1].isdigit() and n.count("/") == 2]
    if not names:
        raise ValueError(
            f"{store.path} holds no lottery levels for rewind {rewind!r}: run landscape.lottery with this store first"
        )
    dev = resolve_device(device)
    results: list[dict[str, Any]] = []
    levels: list[int] = []
    remaining: list[float] = []
    setup: dict[str, Any] = {}
    for name in names:
        module = store.load_module(name, dev).eval()
        try:
            masks = store.load_masks(name)
        except (StoreError, KeyError):
            masks = None
        op, setup = _operator(module, data, "supervised", None, split, batches, batch_size, data_seed, dev, masks)
        results.append(_measure(op, k, trace_probes, trace_method, 0, 0, seed, tol))
        levels.append(int(name.rsplit("/", 1)[1]))
        kept = [float(m.float().mean()) * m.numel() for m in (masks or {}).values()]
        total = sum(m.numel() for m in (masks or {}).values())
        remaining.append(sum(kept) / total if total else 1.0)
    ds = _to_dataset(
        results,
        np.asarray(levels, dtype=np.float64),
        setup,
        {"store": str(store.path), "rewind": rewind},
        module,
        k,
        trace_probes,
        trace_method,
        0,
        0,
        0,
        seed,
        tol,
        False,
        dev,
    )
    ds = ds.rename({"alpha": "level"}).assign_coords(
        level=("level", np.asarray(levels), {"long_name": "IMP level (0 = dense)", "units": "1"})
    )
    ds["remaining"] = (
        "level",
        np.asarray(remaining),
        {"long_name": "fraction of prunable weights kept", "units": "fraction"},
    )
    ds.attrs["restricted_to"] = "unpruned weights (M H M with the stored masks)"
    return ds


def _to_dataset(
    results: list[dict[str, Any]],
    alphas: np.ndarray | None,
    setup: dict[str, Any],
    info: dict[str, Any],
    module: nn.Module,
    k: int,
    probes: int,
    trace_method: str,
    slq_runs: int,
    slq_steps: int,
    density_points: int,
    seed: int,
    tol: float,
    vectors: bool,
    dev: torch.device,
) -> xr.Dataset:
    import distill

    lead = ("alpha",) if alphas is not None else ()

    def stack(key: str) -> np.ndarray:
        vals = np.stack([np.asarray(r[key], dtype=np.float64) for r in results])
        return vals if alphas is not None else vals[0]

    data_vars: dict[str, Any] = {
        "loss": (lead, stack("loss_value"), {"long_name": f"{setup['loss']} loss at the point", "units": "nats"}),
        "hvps": (lead, stack("hvps"), {"long_name": "Hessian-vector products used", "units": "1"}),
        "eig_seconds": (
            lead,
            stack("eig_seconds"),
            {"long_name": "wall time of the eigenvalue computation", "units": "s"},
        ),
    }
    if k:
        data_vars["eigenvalue"] = (
            lead + ("eigen",),
            stack("eigenvalues"),
            {"long_name": "Hessian eigenvalue (largest first)", "units": "nats"},
        )
        if vectors and alphas is None:
            data_vars["eigenvector"] = (
                ("eigen", "parameter"),
                results[0]["eigenvectors"],
                {"long_name": "unit Hessian eigenvector (parameters in named_parameters order)", "units": "1"},
            )
    if probes:
        data_vars["trace"] = (
            lead,
            stack("trace"),
            {"long_name": f"Hessian trace ({trace_method}, {probes} probes)", "units": "nats"},
        )
        samples = np.stack([r["trace_samples"] for r in results])
        se = (
            samples.std(axis=-1, ddof=1) / math.sqrt(samples.shape[-1])
            if samples.shape[-1] > 1
            else np.full(samples.shape[:-1], np.nan)
        )
        data_vars["trace_stderr"] = (
            lead,
            se if alphas is not None else se[0],
            {"long_name": "standard error of the trace estimate", "units": "nats"},
        )
    coords: dict[str, Any] = {}
    if k:
        coords["eigen"] = ("eigen", np.arange(k), {"long_name": "eigenvalue rank (0 = largest)", "units": "1"})
    if alphas is not None:
        coords["alpha"] = ("alpha", np.asarray(alphas), {"long_name": "interpolation coefficient", "units": "1"})
    if slq_runs:
        nodes, weights = results[0]["nodes"], results[0]["weights"]
        data_vars["slq_node"] = (
            ("run", "node"),
            nodes,
            {"long_name": "SLQ quadrature node (Ritz value)", "units": "nats"},
        )
        data_vars["slq_weight"] = (("run", "node"), weights, {"long_name": "SLQ quadrature weight", "units": "1"})
        lo, hi = np.nanmin(nodes), np.nanmax(nodes)
        pad = 0.05 * (hi - lo + 1e-12)
        grid = np.linspace(lo - pad, hi + pad, density_points)
        sigma = max((hi - lo) / 100, 1e-12)
        data_vars["density"] = (
            ("lambda",),
            smoothed_density(nodes, weights, grid, sigma),
            {"long_name": "Hessian spectral density (Gaussian-smoothed SLQ)", "units": "1/nats"},
        )
        coords["lambda"] = ("lambda", grid, {"long_name": "eigenvalue", "units": "nats"})
        coords["run"] = ("run", np.arange(slq_runs))
        setup["slq_sigma"] = sigma
    attrs: dict[str, Any] = {
        "analysis": "hessian",
        "hessian_of": "mean loss over the batches w.r.t. all floating-point parameters; "
        "buffers fixed, BatchNorm in eval mode (running statistics)",
        "hvp": "torch.func.jvp of torch.func.grad",
        "eigen_method": "Lanczos, full reorthogonalisation, stopped at Ritz residuals <= tol |theta| "
        "(ARPACK's test; scipy eigsh continues if it has not converged), which=LA",
        "eigsh_tol": tol,
        "trace_method": trace_method,
        "trace_probes": probes,
        "probe_distribution": "Rademacher",
        "slq_runs": slq_runs,
        "slq_steps": slq_steps,
        "seed": seed,
        "precision": str(next(module.parameters()).dtype).replace("torch.", ""),
        "device": str(dev),
        "toolkit_version": str(distill.__version__),
        "torch_version": str(torch.__version__),
    }
    attrs.update(setup)
    attrs.update({k_: v for k_, v in info.items() if isinstance(v, (str, int, float))})
    spec = getattr(module, "spec", None)
    if isinstance(spec, Mapping):
        attrs["model_spec"] = json.dumps(spec, sort_keys=True, default=str)
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)


def eigenvector_state(op_or_model: Any, vector: np.ndarray) -> dict[str, Tensor]:
    """A flat eigenvector (n,) as a dict of parameter-shaped tensors (named_parameters order)."""
    if isinstance(op_or_model, HessianOperator):
        return op_or_model.unflatten(vector)
    out, i = {}, 0
    for k, p in op_or_model.named_parameters():
        out[k] = torch.as_tensor(vector[i : i + p.numel()], dtype=p.dtype).view(p.shape)
        i += p.numel()
    return out
