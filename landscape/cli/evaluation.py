"""``rtt lmc``, ``rtt plane``, ``rtt align``, ``rtt surface``, ``rtt hessian`` and ``rtt plot``: the
commands that evaluate checkpoints and draw results. Light (argparse and the config classes); heavy
imports happen inside each ``run``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from landscape.cli import declare
from landscape.cli.common import (
    REF_HELP,
    add_data_args,
    add_executor_arg,
    add_settings,
    barrier_table,
    beside,
    data_for,
    parse_ref,
    require_classifier,
    write_nc,
)
from landscape.configs import HessianConfig, HessianPathConfig, PathConfig, PlaneConfig, SurfaceConfig

# the flags of the path commands, and their defaults where they differ from linear_path's
_PATH_FLAGS = ("alphas", "bn", "splits", "max_examples", "device")
_PATH_DEFAULTS: dict[str, Any] = {"splits": ("test",)}


def _pair_args(p: argparse.ArgumentParser, first: str, second: str) -> None:
    p.add_argument("a", metavar="A", help=f"{first}: {REF_HELP}")
    p.add_argument("b", metavar="B", help=second)


def _with_barrier(ds: Any) -> Any:
    from landscape.paths import barrier

    heights = barrier(ds)
    return ds.assign(barrier_error=heights.barrier_error, barrier_loss=heights.barrier_loss), heights


# ---------------------------------------------------------------------------- lmc
def _lmc_args(p: argparse.ArgumentParser) -> None:
    _pair_args(p, "first checkpoint", "second checkpoint, same architecture")
    p.add_argument("--out", default=None, help="netCDF file to write (default: beside A's store)")
    p.add_argument(
        "--compile",
        action="store_true",
        help="evaluate through torch.compile (inductor: needs a C++ compiler on a CPU); one graph for all alphas",
    )
    add_data_args(p)


def _lmc(config: PathConfig, a: argparse.Namespace) -> int:
    from landscape.paths import linear_path

    ref_a, ref_b = parse_ref(a.a), parse_ref(a.b)
    ds = linear_path(ref_a, ref_b, data_for(ref_a[0], a), config=config, compile=a.compile)
    ds, heights = _with_barrier(ds)
    ds.attrs = dict(heights.attrs)
    print(barrier_table(ds))
    print(f"wrote {write_nc(ds, beside(ref_a, a.out, 'lmc', ref_b))}")
    return 0


declare(
    "lmc",
    "linear mode connectivity: error and loss on the straight line between two checkpoints",
    PathConfig,
    _lmc,
    _lmc_args,
    keep=_PATH_FLAGS,
    defaults=_PATH_DEFAULTS,
    flags={"splits": "--split"},
)


# ---------------------------------------------------------------------------- align
def _align_args(p: argparse.ArgumentParser) -> None:
    _pair_args(p, "reference checkpoint (a classifier)", "checkpoint whose units are permuted onto A's")
    p.add_argument("--out", default=None, help="netCDF file to write (default: beside A's store)")
    add_data_args(p)


def _align(config: PathConfig, a: argparse.Namespace) -> int:
    import xarray as xr

    from landscape.paths import linear_path

    ref_a, ref_b = parse_ref(a.a), parse_ref(a.b)
    data = data_for(ref_a[0], a)
    method = str(config.align)
    settings = {"none": config.replace(align=None, repair=False), method: config.replace(repair=False)}
    if config.repair:
        settings[f"{method}+repair"] = config
    runs = {name: linear_path(ref_a, ref_b, data, config=c) for name, c in settings.items()}
    rows = []
    for name, ds in runs.items():
        ds, heights = _with_barrier(ds)
        print(f"alignment: {name}")
        print(barrier_table(ds))
        rows.append(ds.expand_dims(alignment=[name]))
    out_ds = xr.concat(rows, "alignment", combine_attrs="override")
    out_ds.attrs.update({k: v for k, v in runs[method].attrs.items() if k.startswith(("align", "perm"))})
    out_ds.attrs["barrier_error_definition"] = heights.attrs["barrier_error_definition"]
    print(f"wrote {write_nc(out_ds, beside(ref_a, a.out, 'align', ref_b))}")
    return 0


declare(
    "align",
    "permutation alignment: barrier between two checkpoints before and after matching their units",
    PathConfig,
    _align,
    _align_args,
    keep=(*_PATH_FLAGS, "align", "repair"),
    defaults={**_PATH_DEFAULTS, "alphas": 21, "align": "weights"},
    flags={"splits": "--split", "align": "--method"},
)


# ---------------------------------------------------------------------------- plane
def _plane_args(p: argparse.ArgumentParser) -> None:
    for name, what in (("a", "origin"), ("b", "u = B - A"), ("c", "third point (v: C - A orthogonalised)")):
        p.add_argument(name, metavar=name.upper(), help=f"{what}: STORE:EPOCH or STORE:NAME")
    p.add_argument("--out", required=True, help="netCDF file to write")
    add_data_args(p)
    add_executor_arg(p, "grid rows", resumable=False)


def _plane(config: PlaneConfig, a: argparse.Namespace) -> int:
    from landscape.executors import open_executor
    from landscape.planes import plane

    refs = [parse_ref(t) for t in (a.a, a.b, a.c)]
    data = data_for(refs[0][0], a)
    with open_executor(a.executor) as ex:
        ds = plane(*refs, data, config=config, executor=ex)
    print(
        f"|B - A| = {ds.attrs['norm_u']:.4g}, |v| = {ds.attrs['norm_v']:.4g}; in units of |B - A|: "
        + ", ".join(
            f"{p} = ({float(x):.3f}, {float(y):.3f})"
            for p, x, y in zip(ds.point.values, ds.point_x.values, ds.point_y.values)
        )
    )
    best = ds.error.where(ds.error == ds.error.min(), drop=True)
    print(
        f"{config.split} error: min {float(ds.error.min()):.4f} at (x, y) = ({float(best.x[0]):.3f}, "
        f"{float(best.y[0]):.3f}), max {float(ds.error.max()):.4f}"
    )
    print(f"wrote {write_nc(ds, Path(a.out))}")
    return 0


declare(
    "plane",
    "loss and error on the plane through three checkpoints",
    PlaneConfig,
    _plane,
    _plane_args,
    keep=("resolution", "span", "margin", "bn", "split", "max_examples", "device"),
)


# ---------------------------------------------------------------------------- surface
def _surface_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("center", metavar="CENTER", help="checkpoint at the origin: STORE:EPOCH or STORE:NAME")
    p.add_argument("--out", required=True, help="netCDF file (written after every row; resumed when it exists)")
    p.add_argument(
        "--directions",
        default="random",
        help="random (filter-normalised), hessian (top "
        "eigenvectors) or one/two checkpoints STORE:EPOCH[,STORE:EPOCH] (default: random)",
    )
    add_data_args(p)


def _surface(config: SurfaceConfig, a: argparse.Namespace) -> int:
    from landscape.surface import surface

    ref = parse_ref(a.center)
    data = data_for(ref[0], a)
    require_classifier(a.center, ref, data, "center")
    directions = (
        a.directions if a.directions in ("random", "hessian") else [parse_ref(t) for t in a.directions.split(",")]
    )
    ds = surface(ref, data, directions, config=config, out=a.out)
    centre = ds.loss.sel(x=0.0, method="nearest")
    if "y" in centre.dims:
        centre = centre.sel(y=0.0, method="nearest")
    print(
        f"{config.split} loss: centre {float(centre):.4f}, min {float(ds.loss.min()):.4f}, max "
        f"{float(ds.loss.max()):.4f}; error min {float(ds.error.min()):.4f}"
    )
    print(f"wrote {a.out}")
    return 0


declare(
    "surface",
    "1-D or 2-D loss surface around a checkpoint along filter-normalised random, Hessian or checkpoint directions",
    SurfaceConfig,
    _surface,
    _surface_args,
    keep=("dims", "resolution", "span", "seed", "bias", "bn_params", "bn", "split", "max_examples", "device"),
)


# ---------------------------------------------------------------------------- hessian
_HESSIAN_FLAGS = ("k", "loss", "split", "batches", "batch_size", "trace_probes", "trace_method", "seed", "device")


def _hessian_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="CKPT", help="checkpoint: STORE:EPOCH or STORE:NAME")
    p.add_argument("--out", required=True, help="netCDF file to write")
    p.add_argument("--teacher", default=None, help="teacher for --loss distillation (default: STORE:teacher)")
    p.add_argument(
        "--path-to",
        default=None,
        help="evaluate along the straight line to this checkpoint instead (with --alphas points)",
    )
    add_settings(p, HessianPathConfig, keep=("alphas",))
    add_data_args(p)


def _hessian(config: HessianConfig, a: argparse.Namespace) -> int:
    import numpy as np

    from landscape.hessian import hessian, hessian_along_path

    ref = parse_ref(a.model)
    data = data_for(ref[0], a)
    teacher = None
    if config.loss == "distillation":
        teacher = parse_ref(a.teacher) if a.teacher else (ref[0], "teacher")
    else:
        require_classifier(a.model, ref, data, "model")
    if a.path_to:  # the same flags along the line (k and trace_probes as given here)
        shared = {name: getattr(config, name) for name in _HESSIAN_FLAGS}
        ds = hessian_along_path(ref, parse_ref(a.path_to), data, alphas=a.alphas, teacher=teacher, **shared)
    else:
        ds = hessian(ref, data, config=config, teacher=teacher)
    if "eigenvalue" in ds:
        print("top eigenvalues: " + np.array2string(ds.eigenvalue.values, precision=5))
    if "trace" in ds:
        print("trace: " + np.array2string(ds.trace.values, precision=5) + f" ({config.trace_method})")
    print(
        f"{ds.attrs['batches']} batches, {ds.attrs['examples']} examples, {int(ds.hvps.values.sum())} "
        "Hessian-vector products"
    )
    print(f"wrote {write_nc(ds, Path(a.out))}")
    return 0


declare(
    "hessian",
    "curvature at a checkpoint: top Hessian eigenvalues (Lanczos), trace, spectral density",
    HessianConfig,
    _hessian,
    _hessian_args,
    keep=(*_HESSIAN_FLAGS, "slq_runs", "slq_steps"),
)


# ---------------------------------------------------------------------------- plot
_RESULT_HINT = "pass a .nc written by rtt lmc, instability, plane, lottery or locality"


def _store_metrics(path: Path) -> Any:
    """The probe metrics of the checkpoint store at ``path``, or a ValueError saying what to pass."""
    from distill.store import Store, StoreError

    hint = f"{_RESULT_HINT}, or a store with metrics"
    try:
        metrics = Store(path).metrics
    except (StoreError, OSError, KeyError, ValueError):
        raise ValueError(f"{path} holds no result variables: {hint}") from None
    if not metrics.data_vars:
        raise ValueError(f"{path} holds no result variables: {hint}")
    return metrics


def _check_result_file(path: Path) -> None:
    """A one-line error when ``path`` is no HDF5 file, or holds links or external storage (a result
    reads nothing from outside its file)."""
    import h5py

    from distill.store.info import check_hdf5_links

    if path.is_symlink():
        path = path.resolve()  # the user's own link: read what it names, which must itself be a file
    try:
        with h5py.File(path, "r", locking=False) as f:
            check_hdf5_links(f, str(path))
    except OSError as e:
        raise ValueError(f"{path} is not a readable netCDF result ({str(e).splitlines()[0]})") from None


def _read_result(path: Path) -> Any:
    """The result at ``path``: a netCDF file's variables, or a store's probe metrics."""
    import xarray as xr

    if path.is_dir():  # a checkpoint store: draw its probe metrics
        return _store_metrics(path)
    _check_result_file(path)
    try:
        with xr.open_dataset(path, engine="h5netcdf") as opened:
            ds = opened.load()
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"{path} is not a readable netCDF result ({str(e).splitlines()[0]})") from None
    if not ds.data_vars:  # e.g. a packed store: its root holds no variables; draw its probe metrics
        return _store_metrics(path)
    if any(str(d).startswith("phony_dim") for v in ds.data_vars.values() for d in v.dims):
        raise ValueError(
            f"{path} is an HDF5 file but not a netCDF result (its datasets have no named dimensions): {_RESULT_HINT}"
        )
    return ds


def _plot_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "file",
        help="netCDF result written by rtt lmc / instability / plane / lottery / locality, "
        "or a store (.rts folder, or a packed .h5 file: its probe metrics)",
    )
    p.add_argument("--out", default=None, help="image to write (default: FILE with .png)")
    p.add_argument("--var", default=None, help="variable to draw (default: error, else the first one)")


def _plot(_: None, a: argparse.Namespace) -> int:
    from landscape.plotting import plot_result

    path = Path(a.file)
    if not path.exists():
        raise FileNotFoundError(f"no result file {path}: pass a .nc written by rtt lmc, instability or plane")
    ds = _read_result(path)
    if a.var is not None and a.var not in ds.data_vars:
        raise ValueError(f"{path} has no variable {a.var!r}: choose one of {', '.join(map(str, ds.data_vars))}")
    out = plot_result(ds, Path(a.out) if a.out else path.with_suffix(".png"), var=a.var)
    print(f"wrote {out}")
    return 0


declare("plot", "draw a figure of a result file (.nc)", None, _plot, _plot_args)
