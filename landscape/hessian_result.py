"""What the Hessian analyses measure at each point, and the ``xarray.Dataset`` they return
(`landscape.hessian.hessian`, `hessian_along_path`, `hessian_over_levels`)."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import nn

from distill.schema import result_dataset
from landscape.linalg import smoothed_density, spectral_density, top_eigenpairs, trace
from landscape.refs import model_spec_attrs


@dataclass(frozen=True)
class Measures:
    """What is computed at each point: top-``k`` eigenpairs (Lanczos to ``tol``), the trace from
    ``probes`` probes and (``slq_runs`` > 0) the spectral density on ``density_points``; ``vectors``
    keeps the eigenvectors in the result. Every random draw uses ``seed``."""

    k: int
    probes: int
    trace_method: str
    seed: int
    tol: float
    slq_runs: int = 0
    slq_steps: int = 0
    density_points: int = 0
    vectors: bool = False

    def measure(self, op: Any) -> dict[str, Any]:
        """Loss value, eigenpairs (and their wall time in s), trace, SLQ nodes and the product count
        of a `landscape.hessian.HessianOperator`."""
        out: dict[str, Any] = {"loss_value": op.value()}
        t0 = time.perf_counter()
        if self.k:
            out["eigenvalues"], out["eigenvectors"] = top_eigenpairs(op, self.k, tol=self.tol, seed=self.seed)
        out["eig_seconds"] = time.perf_counter() - t0
        if self.probes:
            out["trace"], out["trace_samples"] = trace(op, self.probes, self.seed, self.trace_method)
        if self.slq_runs:
            out["nodes"], out["weights"] = spectral_density(op, self.slq_runs, self.slq_steps, self.seed)
        out["hvps"] = op.hvps
        return out


def to_dataset(
    results: list[dict[str, Any]],
    alphas: np.ndarray | None,
    setup: dict[str, Any],
    info: Mapping[str, Any],
    module: nn.Module,
    m: Measures,
    device: torch.device,
    kind: str = "hessian",
    along: str = "alpha",
) -> xr.Dataset:
    """The Dataset of ``results`` (one `Measures.measure` per point; ``alphas``: the points' coordinate
    ``along``, None for a single point), a result of ``kind`` (`distill.schema`). ``setup`` (the
    operator's attrs) gains ``slq_sigma`` with SLQ."""
    data_vars, coords = _point_vars(results, alphas, m, along)
    if m.slq_runs:
        setup["slq_sigma"] = _slq_vars(results[0], m, data_vars, coords)
    attrs = _attrs(m, module, device)
    attrs.update(setup)
    attrs.update({k: v for k, v in info.items() if isinstance(v, (str, int, float))})
    model_spec_attrs(attrs, module)
    fill = {"loss": setup["loss"], "trace_method": m.trace_method, "trace_probes": m.probes}
    return result_dataset(kind, data_vars, coords, attrs, fill=fill)


def _point_vars(
    results: list[dict[str, Any]], alphas: np.ndarray | None, m: Measures, along: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Variables with one value (or ``k`` eigenvalues) per point, and their coordinates."""
    lead = (along,) if alphas is not None else ()

    def stack(key: str) -> np.ndarray:
        vals = np.stack([np.asarray(r[key], dtype=np.float64) for r in results])
        return vals if alphas is not None else vals[0]

    data_vars: dict[str, Any] = {
        "loss": (lead, stack("loss_value")),
        "hvps": (lead, stack("hvps")),
        "eig_seconds": (lead, stack("eig_seconds")),
    }
    coords: dict[str, Any] = {}
    if m.k:
        data_vars["eigenvalue"] = (lead + ("eigen",), stack("eigenvalues"))
        if m.vectors and alphas is None:
            data_vars["eigenvector"] = (("eigen", "parameter"), results[0]["eigenvectors"])
        coords["eigen"] = ("eigen", np.arange(m.k))
    if m.probes:
        data_vars["trace"] = (lead, stack("trace"))
        samples = np.stack([r["trace_samples"] for r in results])
        n = samples.shape[-1]
        se = samples.std(axis=-1, ddof=1) / math.sqrt(n) if n > 1 else np.full(samples.shape[:-1], np.nan)
        data_vars["trace_stderr"] = (lead, se if alphas is not None else se[0])
    if alphas is not None:
        coords[along] = (along, np.asarray(alphas))
    return data_vars, coords


def _slq_vars(result: Mapping[str, Any], m: Measures, data_vars: dict[str, Any], coords: dict[str, Any]) -> float:
    """Add the SLQ nodes, weights and smoothed density of one point; returns the smoothing width (nats)."""
    nodes, weights = result["nodes"], result["weights"]
    data_vars["slq_node"] = (("run", "node"), nodes)
    data_vars["slq_weight"] = (("run", "node"), weights)
    lo, hi = np.nanmin(nodes), np.nanmax(nodes)
    pad = 0.05 * (hi - lo + 1e-12)
    grid = np.linspace(lo - pad, hi + pad, m.density_points)
    sigma = max((hi - lo) / 100, 1e-12)
    data_vars["density"] = ("lambda", smoothed_density(nodes, weights, grid, sigma))
    coords["lambda"] = ("lambda", grid)
    coords["run"] = ("run", np.arange(m.slq_runs))
    return sigma


def _attrs(m: Measures, module: nn.Module, device: torch.device) -> dict[str, Any]:
    import distill

    return {
        "analysis": "hessian",
        "hessian_of": "mean loss over the batches w.r.t. all floating-point parameters; "
        "buffers fixed, BatchNorm in eval mode (running statistics)",
        "hvp": "torch.func.jvp of torch.func.grad",
        "eigen_method": "Lanczos, full reorthogonalisation, stopped at Ritz residuals <= tol |theta| "
        "(ARPACK's test; scipy eigsh continues if it has not converged), which=LA",
        "eigsh_tol": m.tol,
        "trace_method": m.trace_method,
        "trace_probes": m.probes,
        "probe_distribution": "Rademacher",
        "slq_runs": m.slq_runs,
        "slq_steps": m.slq_steps,
        "seed": m.seed,
        "precision": str(next(module.parameters()).dtype).replace("torch.", ""),
        "device": str(device),
        "toolkit_version": str(distill.__version__),
        "torch_version": str(torch.__version__),
    }
