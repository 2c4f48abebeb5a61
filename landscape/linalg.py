"""Model-free linear algebra on a symmetric operator known only through its products ``v -> A v``.

The operator is anything with ``n`` (the dimension) and ``matvec(v)`` (float64 vectors (n,) in and
out), e.g. `landscape.hessian.HessianOperator`.

- `top_eigenpairs`: Lanczos with a Ritz-residual stop (``scipy.sparse.linalg.eigsh`` as the
  fallback and on request); `power_iteration`: the plain baseline (PyHessian's method).
- `trace`: Hutchinson's estimator with Rademacher probes, and Hutch++ (Meyer et al. 2021).
- `spectral_density`: stochastic Lanczos quadrature (Ghorbani et al. 2019); `smoothed_density`.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import numpy as np


class Operator(Protocol):
    """A symmetric linear map of dimension ``n`` given by its products (float64 vectors)."""

    n: int

    def matvec(self, v: np.ndarray) -> np.ndarray:
        """A v for a float64 vector (n,)."""
        ...


def as_linear_operator(op: Operator) -> Any:
    """``op`` as a ``scipy.sparse.linalg.LinearOperator`` (float64) of shape (n, n)."""
    from scipy.sparse.linalg import LinearOperator

    return LinearOperator((op.n, op.n), matvec=op.matvec, dtype=np.float64)


def _lanczos_step(
    op: Operator, basis: np.ndarray, j: int, v: np.ndarray, beta: list[float], passes: int
) -> tuple[float, np.ndarray, float]:
    """One Lanczos step from the unit vector ``v`` (= ``basis[j]``): the diagonal entry, the next
    residual, orthogonalised ``passes`` times against ``basis[: j + 1]``, and its norm."""
    w = op.matvec(v)
    a = float(w @ v)
    w = w - a * v - (beta[-1] * basis[j - 1] if j > 0 else 0.0)
    for _ in range(passes):
        w = w - basis[: j + 1].T @ (basis[: j + 1] @ w)
    return a, w, float(np.linalg.norm(w))


# ----------------------------------------------------------------------------- eigenpairs
def _start_vector(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(n)


def top_eigenpairs(
    op: Operator,
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
    op: Operator, k: int, which: str, tol: float, v0: np.ndarray, maxiter: int | None
) -> tuple[np.ndarray, np.ndarray]:
    from scipy.sparse.linalg import eigsh

    vals, vecs = eigsh(as_linear_operator(op), k=k, which=which, tol=tol, v0=v0, maxiter=maxiter)
    order = np.argsort(-vals if which == "LA" else -np.abs(vals))
    return vals[order], vecs[:, order].T


def _lanczos_top(
    op: Operator, k: int, which: str, tol: float, v0: np.ndarray, steps: int, stop: str = "residual"
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
        a, w, b = _lanczos_step(op, basis, j, v, beta, 2)  # twice (Kahan's rule) keeps fp64 orthogonal
        alpha.append(a)
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
    op: Operator, tol: float = 1e-3, max_iter: int = 100, seed: int = 0
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
def trace(op: Operator, probes: int = 100, seed: int = 0, method: str = "hutch++") -> tuple[float, np.ndarray]:
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
def lanczos(op: Operator, steps: int, v0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``steps`` Lanczos iterations from ``v0`` with full reorthogonalisation; returns the
    tridiagonal's diagonal (m,) and off-diagonal (m - 1,) (m <= steps when the space is exhausted)."""
    n = op.n
    basis = np.zeros((min(steps, n), n))
    alpha: list[float] = []
    beta: list[float] = []
    v = v0 / np.linalg.norm(v0)
    for j in range(min(steps, n)):
        basis[j] = v
        a, w, b = _lanczos_step(op, basis, j, v, beta, 1)  # full reorthogonalisation
        alpha.append(a)
        if j == min(steps, n) - 1 or b < 1e-10 * max(1.0, abs(a)):
            break
        beta.append(b)
        v = w / b
    return np.asarray(alpha), np.asarray(beta[: len(alpha) - 1])


def spectral_density(op: Operator, runs: int = 5, steps: int = 50, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
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
