"""The runs behind the analyses: distillations (one, or many through the executor), other work units,
supervised children of a student and its init, and probes of a run's networks."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from analyses.context import Context
from distill.config import DistillConfig, SupervisedConfig
from distill.schema import result_dataset
from distill.store import Store


def run_config(
    ctx: Context,
    dataset: str,
    subset: int | None = None,
    seed: int | None = None,
    *,
    probe_seed: bool = True,
    recipe: str = "paper",
    **fields: Any,
) -> DistillConfig:
    """The DistillConfig of one run on ``subset`` images of ``dataset`` (CIFAR from ``ctx.root``) on
    ``ctx.device``, with ``fields``; ``seed`` sets the init and data seeds (and the probe seed unless
    ``probe_seed`` is False) to it and the noise seed to ``seed + 1000``. ``recipe``: ``paper`` or
    ``reference`` (:meth:`DistillConfig.reference`: the authors' code's settings, ``fields`` win)."""
    seeds = {} if seed is None else {"seed": seed, "noise_seed": seed + 1000, "data_seed": seed}
    if seed is not None and probe_seed:
        seeds["probe_seed"] = seed
    root = ctx.root if "cifar" in dataset else None
    base = DistillConfig.reference if recipe == "reference" else DistillConfig
    return base(dataset=dataset, subset=subset, data_root=root, **seeds, **{**fields, "device": ctx.device})


def sweep(units: Sequence[Any], ctx: Context) -> list[Any]:
    """Run independent work units (:mod:`landscape.executors`) through ``ctx.executor``, skipping
    finished ones; their results in order (None for the skipped). A unit whose file records other settings
    (:class:`analyses.units.Unit`) is refused before any unit runs."""
    from analyses.units import Unit
    from landscape.executors import run_units

    for unit in units:
        if isinstance(unit, Unit):
            unit.check()
    return run_units(units, ctx.executor, desc=f"analyses.{ctx.name}", progress=False)[0]


def distil_all(jobs: Sequence[tuple[DistillConfig, Path]], ctx: Context, data: Any = None) -> list[Store]:
    """The stores of independent runs ``[(cfg, out), ...]``, distilled or resumed where needed through
    ``ctx.executor`` (finished ones skipped), in the order given."""
    from landscape.locality import DistillUnit

    sweep([DistillUnit(cfg.to_dict(), str(out), data) for cfg, out in jobs], ctx)
    return [Store(out) for _, out in jobs]


def child_settings(pre: dict[str, Any], ctx: Context) -> tuple[DistillConfig, SupervisedConfig]:
    """The student's DistillConfig (the preset's ``distill`` fields, no checkpoints unless it says) and its
    children's SupervisedConfig (``sup``)."""
    dcfg = run_config(ctx, pre["dataset"], pre["subset"], **{"save_every": 0, **pre["distill"]})
    return dcfg, SupervisedConfig(**{**pre["sup"], "device": ctx.device})


def student_and_init_children(
    pre: dict[str, Any], ctx: Context, data: Any, children: int
) -> tuple[DistillConfig, SupervisedConfig, Store, dict[str, tuple[str, np.ndarray]]]:
    """Distil the preset's student (``distill.rts``), then train ``children`` supervised children
    (``landscape.instability``: data_seed = aug_seed = 0, 1, ...) of its last epoch and of its
    random init (epoch 0). The configs, the student's store and, per start (``student``, ``init``),
    the children's store path (``children-<start>.rts``) and their test accuracies (fractions)."""
    import landscape

    dcfg, scfg = child_settings(pre, ctx)
    (store,) = distil_all([(dcfg, ctx.store("distill.rts"))], ctx, data)
    out = {}
    for start, epoch in (("student", store.epochs[-1]), ("init", 0)):
        path = str(ctx.store(f"children-{start}.rts"))
        kids = landscape.instability(
            (store, epoch), data, children=children, cfg=scfg, alphas=2, store=path, device=ctx.device,
            executor=ctx.executor, progress=False,
        )  # fmt: skip
        out[start] = (path, kids.child_test_accuracy.values)
    return dcfg, scfg, store, out


def probe_backbone(cfg: DistillConfig, backbone: Any, data: Any, cache: Path | None = None) -> dict[str, float]:
    """``cfg.probes`` of ``backbone`` (None: raw pixels) on ``data``: fractions, cached as JSON at ``cache``."""
    from distill.device import resolve_device
    from distill.train import run_probes

    if cache is not None and cache.exists():
        return json.loads(cache.read_text())
    out = run_probes(cfg, backbone, data, resolve_device(cfg.device))
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(out))
    return out


def probe_run(
    cfg: DistillConfig, store: Store, data: Any, ctx: Context, tag: str, epoch: int = -1
) -> dict[str, dict[str, float]]:
    """Probes of one distillation run's teacher, BN-recalibrated teacher, student (``epoch``) and the input
    pixels on ``data`` (fractions), each cached under ``runs/<name>/<preset>/probes/``."""
    from distill.bn import has_batchnorm
    from distill.device import resolve_device
    from distill.train import recalibrated_teacher

    def probe(backbone: Any, name: str) -> dict[str, float]:
        return probe_backbone(cfg, backbone, data, ctx.store("probes", f"{name}.json"))

    device = resolve_device(cfg.device)
    teacher = store.teacher(device)
    e = store.epochs[-1] if epoch == -1 else epoch
    out = {
        "teacher": probe(teacher.backbone, f"{tag}-teacher"),
        "student": probe(store.student(e, device).eval().backbone, f"{tag}-student-e{e}"),
        "input": probe(None, f"input-{data.name}-{len(data.train)}"),
    }
    out["teacher_bn"] = out["teacher"]
    if has_batchnorm(teacher):
        out["teacher_bn"] = probe(recalibrated_teacher(teacher, data, cfg, device).backbone, f"{tag}-teacher_bn")
    return out


MODELS = ["teacher", "teacher_bn", "student", "input"]


def probes_array(rows: dict[str, dict[str, float]], probes: Sequence[str]) -> xr.DataArray:
    """{model: {probe: acc}} -> DataArray (model, probe) over ``MODELS``."""
    vals = [[rows.get(m, {}).get(p, np.nan) for p in probes] for m in MODELS]
    coords = {"model": ("model", MODELS), "probe": ("probe", list(probes))}
    return result_dataset("analyses.probes", {"accuracy": (("model", "probe"), vals)}, coords).accuracy.rename(None)


def last_probes(store: Store) -> xr.DataArray | None:
    """The teacher's and the student's probe accuracies (fractions) at the last probed epoch of the run in
    ``store``, dims (model, probe); None when only epoch 0 (or nothing) was probed."""
    from distill.train import probed_accuracy

    acc = probed_accuracy(store.metrics)
    if acc.sizes.get("epoch", 0) < 2:
        return None
    return acc.isel(epoch=-1, drop=True).sel(model=["teacher", "student"])
