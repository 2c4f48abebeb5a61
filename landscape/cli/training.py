"""``rtt distill``, ``rtt instability``, ``rtt lottery`` and ``rtt locality``: the commands that train.
Light (argparse and the config classes); heavy imports happen inside each ``run``."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from distill.config import DistillConfig
from distill.options import add_arguments, from_args
from landscape.cli import declare
from landscape.cli.common import (
    add_executor_arg,
    add_settings,
    add_start_and_recipe_args,
    barrier_table,
    data_for,
    start_and_recipe,
    write_nc,
)
from landscape.configs import (
    InstabilityConfig,
    LocalityConfig,
    LotteryConfig,
    LotterySweepConfig,
    PathConfig,
)


# ---------------------------------------------------------------------------- distill
def _lock_early(out: Path) -> object | None:
    """The writer lock of the existing folder store ``out``, taken before torch is imported, so that
    a second writer of a busy store is refused at once (the lock is shared with the Store objects of
    this process, which keep it). None when ``out`` is no folder store (the run says why)."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 or not out.is_dir() or out.is_symlink():
        return None
    from distill.store import StoreError
    from distill.store.fsio import acquire
    from distill.store.info import read_attrs

    try:
        read_attrs(out)
    except StoreError:
        return None
    return acquire(out)


_TENSORBOARD_HELP = (
    "also write loss, KL and probe accuracies as TensorBoard scalars into DIR (needs the tensorboard extra)"
)


def _distill_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="store folder to write, e.g. runs/x.rts (resumed when it exists)")
    p.add_argument("--no-resume", action="store_true", help="refuse to touch an existing store")
    p.add_argument("--tensorboard", default=None, metavar="DIR", help=_TENSORBOARD_HELP)


def _distill(cfg: DistillConfig, a: argparse.Namespace) -> int:
    held = _lock_early(Path(a.out)) if not a.no_resume else None  # noqa: F841 - held for the run
    from distill.train import distill, summary_table

    store = distill(cfg, Path(a.out), resume=not a.no_resume, tensorboard=a.tensorboard)
    if int(os.environ.get("RANK", "0") or 0) == 0:  # under torchrun only rank 0 reports
        if cfg.probes:
            print(summary_table(store.metrics))
        print(f"wrote {store.path}")
    return 0


declare("distill", "distil a student from a random teacher into an HDF5 store", DistillConfig, _distill, _distill_args)


# ---------------------------------------------------------------------------- instability
def _write_beside(ds: Any, out: str | None, store: Path, what: str) -> int:
    """Say where the ``what`` are (``store``) and write ``ds`` to ``out``, else beside ``store`` (.nc)."""
    print(f"{what} in {store}")
    print(f"wrote {write_nc(ds, Path(out) if out else store.with_suffix('.nc'))}")
    return 0


def _instability_args(p: argparse.ArgumentParser) -> None:
    add_start_and_recipe_args(p, skip=("device", "data_seed", "aug_seed"))
    p.add_argument(
        "--children-store",
        default=None,
        help="store for the children (resumed when it exists; default: STORE-instability-eEPOCH.rts beside STORE, "
        "or its older .h5 folder)",
    )
    add_settings(p, PathConfig, keep=("max_examples",))
    p.add_argument("--out", default=None, help="netCDF file to write (default: the children store's name, .nc)")
    add_executor_arg(p, "children")


def _instability(config: InstabilityConfig, a: argparse.Namespace) -> int:
    from distill.store.names import SUFFIX, store_name
    from landscape.executors import open_executor
    from landscape.instability import instability

    store, which, tag, recipe = start_and_recipe(a)
    children_store = (
        Path(a.children_store)
        if a.children_store
        else store_name(store.path.with_name(f"{store.path.stem}-instability-{tag}{SUFFIX}"))
    )
    config = config.replace(cfg=recipe, path_options={**(config.path_options or {}), "max_examples": a.max_examples})
    data = data_for(store, a)
    with open_executor(a.executor) as ex:
        ds = instability((store, which), data, config=config, store=children_store, executor=ex)
    print(barrier_table(ds))
    print(
        "children test accuracy: "
        + ", ".join(
            f"{int(c)} (seed {int(s)}): {float(v):.4f}"
            for c, s, v in zip(ds.child.values, ds.child_seed.values, ds.child_test_accuracy.values)
        )
    )
    return _write_beside(ds, a.out, children_store, "children")


declare(
    "instability",
    "train children of a checkpoint with labels and measure the barriers between them",
    InstabilityConfig,
    _instability,
    _instability_args,
    keep=("children", "seeds", "alphas", "bn", "splits", "device"),
    flags={"splits": "--split"},
)


# ---------------------------------------------------------------------------- lottery
def _lottery_table(ds: Any) -> str:
    """One row per level: remaining weights, then best / final test accuracy per rewind (and method)."""
    methods = [str(m) for m in ds["method"].values] if "method" in ds.dims else [None]
    cols = [(str(r), m) for r in ds.rewind.values for m in methods]
    head = f"{'level':<7}{'remaining':>10}  " + "".join(f"{r + ('/' + m if m else ''):>26}" for r, m in cols)
    lines = [head, " " * 19 + "".join(f"{'best acc  final acc':>26}" for _ in cols)]
    for i, level in enumerate(ds.level.values):
        row = f"{int(level):<7}{100 * float(ds.sparsity.values[i]):8.2f} %  "
        for r, m in cols:
            sel = {"rewind": r, "level": level, **({"method": m} if m else {})}
            row += f"{float(ds.best_accuracy.sel(sel)):15.4f}{float(ds.final_accuracy.sel(sel)):11.4f}"
        lines.append(row)
    return "\n".join(lines)


def _lottery_args(p: argparse.ArgumentParser) -> None:
    add_start_and_recipe_args(p, skip=("device",))
    p.add_argument(
        "--lottery-store",
        default=None,
        help="store for the pruned checkpoints (resumed when it "
        "exists; default: STORE-lottery-TAG.rts beside STORE, or its older .h5 folder)",
    )
    p.add_argument("--out", default=None, help="netCDF file to write (default: the lottery store's name, .nc)")
    # --seeds: a sweep over replicate seeds (default: --seed alone, no sweep)
    add_settings(p, LotterySweepConfig, keep=("seeds",), defaults={"seeds": None})
    add_executor_arg(p, "rewind targets and seeds (one store each, in the folder named like the lottery store)")


# the lottery settings a sweep passes on to each run (a sweep's finished runs are found by them)
_SWEPT = ("levels", "prune_fraction", "prunable", "rewind_step", "baselines", "device", "rewind_rng")


def _lottery(config: LotteryConfig, a: argparse.Namespace) -> int:
    from distill.store.names import SUFFIX, store_name
    from landscape.lottery import lottery

    store, which, tag, recipe = start_and_recipe(a)
    config = config.replace(cfg=recipe)
    lottery_store = (
        Path(a.lottery_store)
        if a.lottery_store
        else store_name(store.path.with_name(f"{store.path.stem}-lottery-{tag}{SUFFIX}"))
    )
    data = data_for(store, a)
    if a.executor or a.seeds:
        from landscape.executors import open_executor
        from landscape.lottery_sweep import lottery_sweep

        rewinds = [config.rewind] if isinstance(config.rewind, str) else list(config.rewind)
        seeds = list(a.seeds) if a.seeds else [config.seed]
        lottery_store = lottery_store.with_suffix("")
        options = {name: getattr(config, name) for name in _SWEPT}
        with open_executor(a.executor) as ex:
            ds = lottery_sweep(
                (store, which),
                data,
                rewinds=rewinds,
                seeds=seeds,
                out_dir=lottery_store,
                executor=ex,
                cfg=config.cfg,
                **options,
            )
        if "seed" in ds.dims:
            print(f"mean over seeds {', '.join(map(str, seeds))}")
        print(_lottery_table(ds.mean("seed", keep_attrs=True) if "seed" in ds.dims else ds))
    else:
        ds = lottery((store, which), data, config=config, store=lottery_store)
        print(_lottery_table(ds))
    return _write_beside(ds, a.out, lottery_store, "checkpoints")


declare(
    "lottery",
    "lottery tickets: iterative magnitude pruning with rewinding, from a checkpoint",
    LotteryConfig,
    _lottery,
    _lottery_args,
    skip=("cfg", "rewind_optimizer"),
)


# ---------------------------------------------------------------------------- locality
# the DistillConfig fields each point of a sweep sets itself
_POINT_FIELDS = ("init", "alpha", "eps")


def _locality_args(p: argparse.ArgumentParser) -> None:
    add_settings(p.add_mutually_exclusive_group(required=True), LocalityConfig, keep=("alphas", "eps"))
    p.add_argument(
        "--runs",
        default="runs/locality",
        metavar="DIR",
        help="folder of the per-point stores (.rts), resumed when present (default: runs/locality)",
    )
    p.add_argument("--out", required=True, metavar="FILE", help="result file (.nc)")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="points run in parallel processes (default: 1, one after the other; same as --executor process:N)",
    )
    add_executor_arg(p, "points")
    add_arguments(p, DistillConfig, skip=_POINT_FIELDS)


def _locality(config: LocalityConfig, a: argparse.Namespace) -> int:
    from landscape.executors import open_executor
    from landscape.locality import locality

    # --eps is the sweep's; the DistillConfig field of that name keeps its default
    cfg = from_args(DistillConfig, a, eps=DistillConfig.eps)
    spec = a.executor or (f"process:{a.workers}" if a.workers > 1 else None)
    with open_executor(spec) as ex:
        ds = locality(cfg, config=config, out_dir=a.runs, executor=ex)
    write_nc(ds, Path(a.out))
    axis = ds.attrs["axis"]
    acc = ds.accuracy.isel(epoch=-1).mean("seed")
    print(f"{axis:<8}" + "".join(f"{str(p):>12}" for p in acc.probe.values) + "   (student accuracy, %)")
    for v in acc[axis].values:
        print(
            f"{v:<8g}"
            + "".join(
                f"{100 * float(acc.sel({axis: v, 'model': 'student', 'probe': p})):12.2f}" for p in acc.probe.values
            )
        )
    print(f"wrote {a.out}")
    return 0


declare(
    "locality",
    "teacher-distance sweep: one distillation per alpha (or eps), gathered into one result",
    LocalityConfig,
    _locality,
    _locality_args,
    keep=("seeds",),
)
