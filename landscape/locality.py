"""Teacher-distance sweeps: how distillation changes with the student's distance from the teacher.

``locality(cfg, alphas=[0, 0.1, ..., 1])`` runs one distillation per (alpha, seed), each in
its own store, with the student initialised as

    theta_s = ((1 - alpha) theta_t + alpha theta_noise) / sqrt(alpha^2 + (1 - alpha)^2)

or, with ``eps=[...]``, as ``theta_s = theta_t + eps * theta_noise``; then gathers probe
accuracy over epochs, the final KL to the teacher, and the student's parameter distance
from the teacher and from its own initialisation.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

import distill
from distill.config import DistillConfig
from distill.init import parameter_distance
from distill.options import with_config
from distill.schema import plain, result_dataset
from distill.store import Store
from distill.store.names import SUFFIX, store_name
from landscape.configs import LocalityConfig
from landscape.executors import run_units
from landscape.units import differing, finished


def point_config(cfg: DistillConfig, axis: str, value: float, seed: int) -> DistillConfig:
    """The configuration of one sweep point: ``axis`` is ``alpha`` or ``eps``; replicate ``seed``
    shifts the teacher, noise and data-order seeds together."""
    mode = {"alpha": "alpha", "eps": "eps"}[axis]
    return cfg.replace(
        init=mode,
        **{axis: float(value)},
        seed=cfg.seed + seed,
        noise_seed=cfg.noise_seed + seed,
        data_seed=cfg.data_seed + seed,
    )


def point_path(out_dir: Path, cfg: DistillConfig, axis: str, value: float, seed: int) -> Path:
    """The store of one sweep point: ``<out_dir>/<dataset>-<arch>-<axis><value>-seed<seed>.rts`` (its older
    ``.h5`` folder when only that one is there, `distill.store.store_name`)."""
    return store_name(Path(out_dir) / f"{cfg.dataset.replace(':', '-')}-{cfg.arch}-{axis}{value:g}-seed{seed}{SUFFIX}")


def distillation_complete(cfg: DistillConfig, out: str | Path) -> bool:
    """True when ``out`` holds the finished run of ``cfg``: same configuration (fields that may
    change on resume aside), the student of the last epoch saved and its metrics row written."""
    from distill.resume import RESUMABLE

    wanted = cfg.to_dict()

    def complete(store: Store) -> bool:
        if differing(store.config, wanted, [k for k in wanted if k not in RESUMABLE]):
            return False
        if cfg.epochs not in store.epochs or "metrics" not in store.results():
            return False
        return int(store.metrics.epoch.values[-1]) == cfg.epochs

    return finished(out, complete)


@dataclass(frozen=True)
class DistillUnit:
    """One sweep point as a work unit (`landscape.executors`): plain data, picklable; writes
    (or resumes) its own store and is done when that store holds the finished run."""

    cfg: dict
    out: str
    data: Any = None

    def done(self) -> bool:
        """Whether the point's store holds the finished distillation of the same configuration."""
        return distillation_complete(DistillConfig.from_dict(self.cfg), self.out)

    def __call__(self) -> str:
        if not self.done():
            distill.distill(DistillConfig.from_dict(self.cfg), self.out, data=self.data, progress=False)
        return self.out


@with_config(LocalityConfig)
def locality(
    cfg: DistillConfig,
    *,
    config: LocalityConfig,
    out_dir: str | Path = "runs/locality",
    executor: Executor | None = None,
    data: Any = None,
    progress: bool | None = None,
) -> xr.Dataset:
    """Run the sweep (resuming stores that exist) and return a Dataset over
    (``alpha`` or ``eps``, ``seed``, ``epoch``, ``model``, ``probe``).

    ``executor``: any ``concurrent.futures.Executor`` to run the points in parallel
    (sequential in this process by default; `landscape.executors.open_executor` makes dask
    and submitit ones). Points whose store is complete are skipped, so a rerun after a failure
    computes only what is missing. ``data``: a preloaded Dataset used by every point (default:
    each point loads ``cfg.dataset``; with an executor, loading on the workers sends less).
    Variables: ``accuracy`` (alpha, seed, epoch,
    model, probe), ``kl``, ``distance_teacher`` (alpha, seed, epoch), ``final_kl``,
    ``distance_init``, ``distance_teacher_init`` (alpha, seed).
    """
    alphas, eps, seeds = config.alphas, config.eps, config.seeds
    if (alphas is None) == (eps is None):
        raise ValueError("pass exactly one of alphas=[...] or eps=[...]")
    axis, values = ("alpha", list(alphas)) if alphas is not None else ("eps", list(eps))  # type: ignore[arg-type]
    if axis == "alpha" and any(not 0 <= a <= 1 for a in values):
        raise ValueError(f"alphas must lie in [0, 1], got {values}")
    out_dir = Path(out_dir)
    points = [(v, s) for v in values for s in seeds]
    jobs = {(v, s): (point_config(cfg, axis, v, s), point_path(out_dir, cfg, axis, v, s)) for v, s in points}
    units = [DistillUnit(c.to_dict(), str(path), data) for c, path in jobs.values()]
    run_units(units, executor, desc=f"locality ({axis})", progress=progress)
    return collect(cfg, axis, values, seeds, {k: p for k, (_, p) in jobs.items()})


def collect(
    cfg: DistillConfig, axis: str, values: Sequence[float], seeds: Sequence[int], paths: dict[tuple[float, int], Path]
) -> xr.Dataset:
    """Gather the stores of a sweep into one Dataset (see `locality`)."""
    rows = []
    for v in values:
        per_seed = []
        for s in seeds:
            store = Store(paths[(v, s)])
            m = store.metrics
            teacher, first, last = store.teacher(), store.student(0), store.student(-1)
            point = xr.Dataset(
                {
                    "accuracy": m.accuracy,
                    "kl": m.kl,
                    "distance_teacher": m.distance,
                    "final_kl": m.kl.isel(epoch=-1, drop=True),
                    "distance_init": ((), parameter_distance(last, first)),
                    "distance_teacher_init": ((), parameter_distance(first, teacher)),
                }
            )
            point["store"] = ((), str(store.path))
            per_seed.append(point)
        rows.append(xr.concat(per_seed, dim=xr.DataArray(list(seeds), dims="seed", name="seed"), join="outer"))
    ds = xr.concat(rows, dim=xr.DataArray(np.asarray(values, dtype=np.float64), dims=axis, name=axis), join="outer")
    coords = plain(ds.coords) | {"store": ((axis, "seed"), ds["store"].values.astype(str))}
    attrs = {
        "config": cfg.to_json(),
        "axis": axis,
        "init_definition": (
            "theta_s = ((1 - alpha) theta_t + alpha theta_noise) / sqrt(alpha^2 + (1 - alpha)^2)"
            if axis == "alpha"
            else "theta_s = theta_t + eps * theta_noise"
        ),
        "seeds": json.dumps(list(seeds)),
    }
    recipe = {"distill": cfg.to_dict(), "axis": axis, "values": [float(v) for v in values], "seeds": list(seeds)}
    from distill.device import resolve_device

    prov = {"recipe": recipe, "kind": "locality", "device": resolve_device(cfg.device), "precision": cfg.precision}
    return result_dataset("locality", plain(ds.drop_vars("store").data_vars), coords, attrs, provenance=prov)
