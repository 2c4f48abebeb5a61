"""``rtt`` subcommands beyond ``info``; each registers itself with `landscape.cli.command`.

Keep this module light (argparse and `distill.config` only): it is imported by ``rtt -h``.
Heavy imports (torch, xarray, the analyses) go inside each command's ``run``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from distill.config import DistillConfig, add_arguments, from_args
from landscape.cli import command

# the BatchNorm policies of landscape.evaluate.POLICIES, repeated here so that -h imports no torch
# (tests/test_cli_startup.py checks that both agree)
BN_POLICIES = ("reset", "interpolate", "keep_a")


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


@command("distill", "distil a student from a random teacher into an HDF5 store")
class _Distill:
    @staticmethod
    def add_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--out", required=True, help="store folder to write, e.g. runs/x.rts (resumed when it exists)")
        p.add_argument("--no-resume", action="store_true", help="refuse to touch an existing store")
        p.add_argument(
            "--tensorboard",
            default=None,
            metavar="DIR",
            help="also write loss, KL and probe accuracies "
            "as TensorBoard scalars into DIR (needs the tensorboard extra)",
        )
        add_arguments(p, DistillConfig)

    @staticmethod
    def run(a: argparse.Namespace) -> int:
        cfg = from_args(DistillConfig, a)
        held = _lock_early(Path(a.out)) if not a.no_resume else None  # noqa: F841 - held for the run
        from distill.train import distill, summary_table

        store = distill(cfg, Path(a.out), resume=not a.no_resume, tensorboard=a.tensorboard)
        if int(os.environ.get("RANK", "0") or 0) == 0:  # under torchrun only rank 0 reports
            if cfg.probes:
                print(summary_table(store.metrics))
            print(f"wrote {store.path}")
        return 0


def _add_executor_arg(p: argparse.ArgumentParser, what: str, resumable: bool = True) -> None:
    p.add_argument(
        "--executor",
        default=None,
        metavar="SPEC",
        help=f"run the {what} through dask:SCHEDULER, "
        "dask-local:N, submitit:FOLDER[,key=value...], process:N or thread:N (default: one after the "
        "other here)" + ("; finished ones are skipped on a rerun" if resumable else ""),
    )


# ---------------------------------------------------------------------------- landscape helpers
_SPLITS = ("train", "test")


_REF_HELP = "STORE:EPOCH or STORE:NAME (e.g. runs/x.rts:10, runs/x.rts:-1 for the last student, runs/x.rts:teacher)"


def _parse_ref(text: str) -> tuple:
    """``STORE:EPOCH`` or ``STORE:NAME`` -> (Store, int epoch | str name); a negative epoch counts
    back from the last saved student and comes back resolved."""
    from distill.store import Store
    from landscape.refs import resolve_epoch

    path, sep, which = text.rpartition(":")
    if not sep or not path or not which:
        raise ValueError(f"{text!r} is not a checkpoint reference: write {_REF_HELP}")
    store = Store(path)
    try:
        epoch = int(which)
    except ValueError:
        return store, which
    return store, resolve_epoch(store, epoch)


def _path_alphas(text: str):
    """``--alphas`` of the path commands: N (that many evenly spaced points on [0, 1], ends included)
    or comma-separated values in [0, 1]."""
    text = text.strip()
    try:
        if "," not in text and "." not in text:
            n = int(text)
            if n < 2:
                raise argparse.ArgumentTypeError(f"{text!r}: a path needs at least 2 points (both ends)")
            return n
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: pass a number of points (e.g. 21) or comma-separated values in [0, 1] (e.g. 0,0.25,0.5,0.75,1)"
        ) from None
    if not values or any(not 0.0 <= v <= 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: the values must lie in [0, 1]")
    return values


_MAX_EXAMPLES_HELP = "evaluate a seeded subset of this many images per split (default: all)"
_ALPHAS_HELP = (
    "points on the path: N evenly spaced on [0, 1], ends included, or comma-separated values in [0, 1] (e.g. 0,0.5,1)"
)


def _splits(text: str) -> tuple[str, ...]:
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    if not names or any(s not in _SPLITS for s in names) or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"{text!r}: pass train, test or train,test")
    return names


def _add_data_args(p: argparse.ArgumentParser) -> None:
    from distill import registry
    from distill.config import _CONVERTERS, registered_name

    p.add_argument(
        "--dataset",
        default=None,
        type=registered_name("datasets"),
        metavar="NAME",
        help="dataset to evaluate on (registered: "
        f"{', '.join(registry.dataset_names())}; default: the one in the store's config)",
    )
    p.add_argument(
        "--data-root",
        default=None,
        metavar="PATH",
        help="folder or file holding the dataset (default: "
        "the store's config, else $RTT_DATA/<dataset> and, for Fashion-MNIST, /usr/share/datasets)",
    )
    p.add_argument(
        "--subset",
        type=_CONVERTERS[int],
        default=None,
        metavar="N",
        help="stratified subset of this "
        "many training images (default: the store's config when --dataset is not given, else all)",
    )
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto: CUDA when present)")


def _data_for(store, a: argparse.Namespace):
    """The dataset named by --dataset, else the one recorded in ``store``'s config."""
    from distill.data import load_dataset

    cfg = store.config
    seed = int(cfg.get("data_seed", 0) or 0)
    if a.dataset:
        return load_dataset(a.dataset, root=a.data_root, subset=a.subset, seed=seed)
    name = cfg.get("dataset")
    if not name:
        raise ValueError(f"{store.path} records no dataset in its config: pass --dataset NAME (and --data-root DIR)")
    subset = a.subset if a.subset is not None else cfg.get("subset")
    return load_dataset(name, root=a.data_root or cfg.get("data_root"), subset=subset, seed=seed)


def _require_classifier(text: str, ref: tuple, num_classes: int) -> None:
    """Refuse a checkpoint whose head is not a linear classifier for ``num_classes`` classes (for the
    commands that evaluate one network; linear_path and plane check their inputs themselves)."""
    from distill.store import as_module

    model = as_module(ref)
    head = getattr(model, "spec", {}).get("head")
    out = getattr(getattr(model, "head", None), "out_features", None)
    if head != "linear" or out != num_classes:
        raise ValueError(
            f"{text} is not a classifier for {num_classes} classes (head={head!r}): compare "
            "classifiers, e.g. the children written by 'rtt instability' (from Python: "
            "landscape.instability, or distill.supervised.with_classifier and train_supervised)"
        )


def _slug(which) -> str:
    return str(which).replace("/", "_")


def _write_nc(ds, path: Path) -> Path:
    """Write the result ``ds`` as netCDF at ``path``: under a temporary name, fsynced and renamed into
    place (a killed writer leaves a temporary that the next write of ``path`` removes)."""
    from distill.store import fsio

    path = Path(path)
    fsio.write_atomic(path, lambda tmp: ds.to_netcdf(tmp, engine="h5netcdf"))
    return path


def _barrier_table(ds) -> str:
    """One row per (pair, split): endpoint errors, largest error on the path, barrier heights."""
    pairs = [str(p) for p in ds.pair.values] if "pair" in ds.dims else [None]
    lines = [
        ("pair  " if pairs[0] is not None else "") + "split   err(0)   err(1)  max err  barrier_error  barrier_loss"
    ]
    for p in pairs:
        sub = ds if p is None else ds.sel(pair=p)
        for s in ds.split.values:
            err = sub.error.sel(split=s)
            row = (f"{p:<6}" if p is not None else "") + f"{str(s):<6}"
            row += f"{float(err.isel(alpha=0)):9.4f}{float(err.isel(alpha=-1)):9.4f}{float(err.max()):9.4f}"
            row += f"{float(sub.barrier_error.sel(split=s)):15.4f}{float(sub.barrier_loss.sel(split=s)):14.4f}"
            lines.append(row)
    return "\n".join(lines)


# ---------------------------------------------------------------------------- lmc
def _add_start_and_recipe_args(p: argparse.ArgumentParser, skip: tuple[str, ...]) -> None:
    """The flags `_start_and_recipe` reads: STORE, --epoch/--module, --preset, the data
    flags and one --sup-* flag per SupervisedConfig field not in ``skip``."""
    from dataclasses import fields

    from distill.config import SUPERVISED_PRESETS, SupervisedConfig

    p.add_argument(
        "store",
        metavar="START",
        help=f"the start checkpoint: {_REF_HELP}; a bare STORE is its last student",
    )
    p.add_argument("--epoch", type=int, default=None, help="deprecated: write STORE:EPOCH")
    p.add_argument("--module", default=None, help="deprecated: write STORE:NAME")
    p.add_argument(
        "--preset",
        default="paper",
        choices=tuple(SUPERVISED_PRESETS),
        help="supervised training recipe (paper: 160 epochs; cpu: 8; tiny: 2); --sup-* flags override "
        "it (default: paper)",
    )
    _add_data_args(p)
    add_arguments(p, SupervisedConfig, prefix="sup-", skip=skip, defaults_text=_preset_defaults())
    # absent --sup-* flags (None) must not override the preset
    p.set_defaults(**{f"sup_{f.name}": None for f in fields(SupervisedConfig) if f.name not in skip})


def _preset_defaults() -> dict[str, str]:
    """For each SupervisedConfig field a preset changes: its default per preset, as the help shows it."""
    from distill.config import SUPERVISED_PRESETS, SupervisedConfig, _show

    changed = {k for changes in SUPERVISED_PRESETS.values() for k in changes}
    recipes = {name: SupervisedConfig.preset(name) for name in SUPERVISED_PRESETS}
    return {k: ", ".join(f"{name} {_show(getattr(cfg, k))}" for name, cfg in recipes.items()) for k in changed}


def _start_and_recipe(a: argparse.Namespace) -> tuple:
    """(store, epoch or module name, tag for file names, SupervisedConfig) from the shared flags
    of ``rtt instability`` and ``rtt lottery``: --epoch/--module, --preset and the --sup-* overrides."""
    import sys
    from dataclasses import fields

    from distill.config import SupervisedConfig

    text = a.store
    bare = Path(text).exists() or ":" not in text  # STORE alone: its last student
    if a.epoch is not None or a.module is not None:  # the former spelling, STORE --epoch N / --module NAME
        if not bare:
            raise ValueError(f"{text} names its checkpoint already: drop --epoch/--module")
        if a.epoch is not None and a.module is not None:
            raise ValueError("pass --epoch or --module, not both (better: STORE:EPOCH or STORE:NAME)")
        text = f"{text}:{a.module if a.module is not None else a.epoch}"
        print(f"rtt {a.command}: note: --epoch and --module are deprecated: write {text}", file=sys.stderr)
    elif bare:
        text = f"{text}:-1"
    store, which = _parse_ref(text)
    if isinstance(which, int) and which not in store.epochs:
        saved = ", ".join(map(str, store.epochs)) or "none"
        raise ValueError(f"{store.path} has no student at epoch {which} (saved epochs: {saved}): pass one of those")
    tag = f"e{which}" if isinstance(which, int) else _slug(which)
    overrides = {
        f.name: getattr(a, f"sup_{f.name}")
        for f in fields(SupervisedConfig)
        if getattr(a, f"sup_{f.name}", None) is not None
    }
    return store, which, tag, SupervisedConfig.preset(a.preset, **overrides, device=a.device)


@command("lmc", "linear mode connectivity: error and loss on the straight line between two checkpoints")
class _Lmc:
    @staticmethod
    def add_args(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "a", metavar="A", help="first checkpoint: STORE:EPOCH or STORE:NAME (e.g. runs/x.rts:children/0)"
        )
        p.add_argument("b", metavar="B", help="second checkpoint, same architecture")
        p.add_argument(
            "--alphas",
            type=_path_alphas,
            default=30,
            metavar="N|A,B,...",
            help=f"{_ALPHAS_HELP} (default: 30, Frankle et al.'s barrier grid; the paper's Figure 9 uses 50)",
        )
        p.add_argument(
            "--bn", default="reset", choices=BN_POLICIES, help="BatchNorm statistics along the path (default: reset)"
        )
        p.add_argument("--split", type=_splits, default=("test",), help="train, test or train,test (default: test)")
        p.add_argument("--max-examples", type=int, default=None, metavar="N", help=_MAX_EXAMPLES_HELP)
        p.add_argument("--out", default=None, help="netCDF file to write (default: beside A's store)")
        p.add_argument(
            "--compile",
            action="store_true",
            help="evaluate through torch.compile (inductor: needs a C++ compiler on a CPU); one graph for all alphas",
        )
        _add_data_args(p)

    @staticmethod
    def run(a: argparse.Namespace) -> int:
        from landscape.paths import barrier, linear_path

        ref_a, ref_b = _parse_ref(a.a), _parse_ref(a.b)
        data = _data_for(ref_a[0], a)
        ds = linear_path(
            ref_a,
            ref_b,
            data,
            alphas=a.alphas,
            bn=a.bn,
            splits=a.split,
            max_examples=a.max_examples,
            device=a.device,
            compile=a.compile,
        )
        heights = barrier(ds)
        ds["barrier_error"], ds["barrier_loss"] = heights.barrier_error, heights.barrier_loss
        ds.attrs = dict(heights.attrs)
        print(_barrier_table(ds))
        store = ref_a[0].path
        out = Path(a.out) if a.out else store.with_name(f"{store.stem}-lmc-{_slug(ref_a[1])}-{_slug(ref_b[1])}.nc")
        print(f"wrote {_write_nc(ds, out)}")
        return 0


# ---------------------------------------------------------------------------- instability
@command("instability", "train children of a checkpoint with labels and measure the barriers between them")
class _Instability:
    @staticmethod
    def add_args(p: argparse.ArgumentParser) -> None:
        _add_start_and_recipe_args(p, skip=("device", "data_seed", "aug_seed"))
        p.add_argument("--children", type=int, default=2, help="number of children (default: 2)")
        p.add_argument(
            "--seeds",
            default=None,
            metavar="A,B,...",
            help="comma-separated seeds, one per child (default: 0..children-1)",
        )
        p.add_argument(
            "--children-store",
            default=None,
            help="store for the children (resumed when it exists; default: STORE-instability-eEPOCH.rts beside STORE, "
            "or its older .h5 folder)",
        )
        p.add_argument(
            "--alphas",
            type=_path_alphas,
            default=30,
            metavar="N|A,B,...",
            help=f"{_ALPHAS_HELP}, on each path between children (default: 30, "
            "Frankle et al.'s barrier grid; the paper's Figure 9 uses 50)",
        )
        p.add_argument(
            "--bn",
            default="reset",
            choices=BN_POLICIES,
            help="BatchNorm statistics along the paths: reset = re-estimated at each point (default: reset)",
        )
        p.add_argument("--split", type=_splits, default=("test",), help="train, test or train,test (default: test)")
        p.add_argument("--max-examples", type=int, default=None, metavar="N", help=_MAX_EXAMPLES_HELP)
        p.add_argument("--out", default=None, help="netCDF file to write (default: the children store's name, .nc)")
        _add_executor_arg(p, "children")

    @staticmethod
    def run(a: argparse.Namespace) -> int:
        from distill.store.names import SUFFIX, store_name
        from landscape.executors import open_executor
        from landscape.instability import instability

        store, which, tag, cfg = _start_and_recipe(a)
        seeds = [int(s) for s in a.seeds.split(",") if s.strip()] if a.seeds else None
        children_store = (
            Path(a.children_store)
            if a.children_store
            else store_name(store.path.with_name(f"{store.path.stem}-instability-{tag}{SUFFIX}"))
        )
        data = _data_for(store, a)
        with open_executor(a.executor) as ex:
            ds = instability(
                (store, which),
                data,
                children=a.children,
                seeds=seeds,
                cfg=cfg,
                store=children_store,
                alphas=a.alphas,
                bn=a.bn,
                splits=a.split,
                device=a.device,
                path_options={"max_examples": a.max_examples},
                executor=ex,
            )
        print(_barrier_table(ds))
        print(
            "children test accuracy: "
            + ", ".join(
                f"{int(c)} (seed {int(s)}): {float(v):.4f}"
                for c, s, v in zip(ds.child.values, ds.child_seed.values, ds.child_test_accuracy.values)
            )
        )
        out = Path(a.out) if a.out else children_store.with_suffix(".nc")
        print(f"children in {children_store}")
        print(f"wrote {_write_nc(ds, out)}")
        return 0


# ---------------------------------------------------------------------------- plane
@command("plane", "loss and error on the plane through three checkpoints")
class _Plane:
    @staticmethod
    def add_args(p: argparse.ArgumentParser) -> None:
        for name, what in (("a", "origin"), ("b", "u = B - A"), ("c", "third point (v: C - A orthogonalised)")):
            p.add_argument(name, metavar=name.upper(), help=f"{what}: STORE:EPOCH or STORE:NAME")
        p.add_argument("--out", required=True, help="netCDF file to write")
        p.add_argument("--resolution", type=int, default=21, help="grid points per axis (default: 21)")
        p.add_argument(
            "--span",
            default=None,
            help="LOW,HIGH range of both coordinates in units of |B - A| (default: the three points plus --margin)",
        )
        p.add_argument(
            "--margin",
            type=float,
            default=0.5,
            help="margin around the three points in units of |B - A| (default: 0.5)",
        )
        p.add_argument(
            "--bn",
            default="reset",
            choices=BN_POLICIES,
            help="BatchNorm statistics at each grid point: reset = re-estimated there (default: reset)",
        )
        p.add_argument("--split", default="test", choices=_SPLITS, help="split to evaluate (default: test)")
        p.add_argument("--max-examples", type=int, default=None, metavar="N", help=_MAX_EXAMPLES_HELP)
        _add_data_args(p)
        _add_executor_arg(p, "grid rows", resumable=False)

    @staticmethod
    def run(a: argparse.Namespace) -> int:
        from landscape.executors import open_executor
        from landscape.planes import plane

        refs = [_parse_ref(t) for t in (a.a, a.b, a.c)]
        span = None
        if a.span:
            try:
                span = tuple(float(s) for s in a.span.split(","))
            except ValueError:
                span = ()
            if len(span) != 2:
                raise ValueError(f"--span {a.span!r}: pass LOW,HIGH, e.g. --span -0.5,1.5")
        data = _data_for(refs[0][0], a)
        with open_executor(a.executor) as ex:
            ds = plane(
                refs[0],
                refs[1],
                refs[2],
                data,
                resolution=a.resolution,
                span=span,
                margin=a.margin,
                bn=a.bn,
                split=a.split,
                max_examples=a.max_examples,
                device=a.device,
                executor=ex,
            )
        print(
            f"|B - A| = {ds.attrs['norm_u']:.4g}, |v| = {ds.attrs['norm_v']:.4g}; in units of |B - A|: "
            + ", ".join(
                f"{p} = ({float(x):.3f}, {float(y):.3f})"
                for p, x, y in zip(ds.point.values, ds.point_x.values, ds.point_y.values)
            )
        )
        best = ds.error.where(ds.error == ds.error.min(), drop=True)
        print(
            f"{a.split} error: min {float(ds.error.min()):.4f} at (x, y) = ({float(best.x[0]):.3f}, "
            f"{float(best.y[0]):.3f}), max {float(ds.error.max()):.4f}"
        )
        print(f"wrote {_write_nc(ds, Path(a.out))}")
        return 0


# ---------------------------------------------------------------------------- plot
def _store_metrics(path: Path):
    """The probe metrics of the checkpoint store at ``path``, or a ValueError saying what to pass."""
    from distill.store import Store, StoreError

    hint = "pass a .nc written by rtt lmc, instability, plane, lottery or locality, or a store with metrics"
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


@command("plot", "draw a figure of a result file (.nc)")
class _Plot:
    @staticmethod
    def add_args(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "file",
            help="netCDF result written by rtt lmc / instability / plane / lottery / locality, "
            "or a store (.rts folder, or a packed .h5 file: its probe metrics)",
        )
        p.add_argument("--out", default=None, help="image to write (default: FILE with .png)")
        p.add_argument("--var", default=None, help="variable to draw (default: error, else the first one)")

    @staticmethod
    def run(a: argparse.Namespace) -> int:
        import xarray as xr

        from landscape.plotting import plot_result

        path = Path(a.file)
        if not path.exists():
            raise FileNotFoundError(f"no result file {path}: pass a .nc written by rtt lmc, instability or plane")
        if path.is_dir():  # a checkpoint store: draw its probe metrics
            ds = _store_metrics(path)
        else:
            _check_result_file(path)
            try:
                with xr.open_dataset(path, engine="h5netcdf") as opened:
                    ds = opened.load()
            except (OSError, ValueError, KeyError) as e:
                raise ValueError(f"{path} is not a readable netCDF result ({str(e).splitlines()[0]})") from None
            if not ds.data_vars:  # e.g. a packed store: its root holds no variables; draw its probe metrics
                ds = _store_metrics(path)
            elif any(str(d).startswith("phony_dim") for v in ds.data_vars.values() for d in v.dims):
                raise ValueError(
                    f"{path} is an HDF5 file but not a netCDF result (its datasets have no named dimensions): "
                    "pass a .nc written by rtt lmc, instability, plane, lottery or locality"
                )
        if a.var is not None and a.var not in ds.data_vars:
            raise ValueError(f"{path} has no variable {a.var!r}: choose one of {', '.join(map(str, ds.data_vars))}")
        out = plot_result(ds, Path(a.out) if a.out else path.with_suffix(".png"), var=a.var)
        print(f"wrote {out}")
        return 0


# ---------------------------------------------------------------------------- lottery
def _lottery_table(ds) -> str:
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


@command("lottery", "lottery tickets: iterative magnitude pruning with rewinding, from a checkpoint")
class _Lottery:
    @staticmethod
    def add_args(p: argparse.ArgumentParser) -> None:
        _add_start_and_recipe_args(p, skip=("device",))
        p.add_argument("--levels", type=int, default=5, help="trained levels, level 0 dense (default: 5)")
        p.add_argument(
            "--prune-fraction",
            type=float,
            default=0.2,
            help="fraction of the remaining weights pruned per level (default: 0.2)",
        )
        p.add_argument(
            "--rewind", default="start", help="rewind target(s), comma-separated: start, init, step (default: start)"
        )
        p.add_argument("--rewind-step", type=int, default=None, help="optimiser steps of level 0 for --rewind step")
        p.add_argument(
            "--prunable",
            default="weights",
            choices=("weights", "all"),
            help="weights: conv and linear weights (Frankle et al.); all: every parameter (the paper's "
            "code) (default: weights)",
        )
        p.add_argument("--baselines", default="", help="comma-separated: random_prune, random_reinit (default: none)")
        p.add_argument(
            "--no-rewind-rng",
            action="store_true",
            help="reseed data order and augmentation per level (default: every level replays the same order)",
        )
        p.add_argument("--seed", type=int, default=0, help="classifier head, init and baseline seed (default: 0)")
        p.add_argument(
            "--lottery-store",
            default=None,
            help="store for the pruned checkpoints (resumed when it "
            "exists; default: STORE-lottery-TAG.rts beside STORE, or its older .h5 folder)",
        )
        p.add_argument("--out", default=None, help="netCDF file to write (default: the lottery store's name, .nc)")
        p.add_argument(
            "--seeds",
            default=None,
            help="comma-separated replicate seeds (each as --seed; one store per "
            "rewind target and seed in the folder named like the lottery store)",
        )
        _add_executor_arg(p, "rewind targets and seeds (one store each, in the folder named like the lottery store)")

    @staticmethod
    def run(a: argparse.Namespace) -> int:
        from distill.store.names import SUFFIX, store_name
        from landscape.lottery import lottery

        store, which, tag, cfg = _start_and_recipe(a)
        rewinds = [r.strip() for r in a.rewind.split(",") if r.strip()]
        baselines = [b.strip() for b in a.baselines.split(",") if b.strip()]
        lottery_store = (
            Path(a.lottery_store)
            if a.lottery_store
            else store_name(store.path.with_name(f"{store.path.stem}-lottery-{tag}{SUFFIX}"))
        )
        data = _data_for(store, a)
        options = dict(
            levels=a.levels,
            prune_fraction=a.prune_fraction,
            prunable=a.prunable,
            rewind_step=a.rewind_step,
            baselines=baselines,
            device=a.device,
            rewind_rng=not a.no_rewind_rng,
        )
        if a.executor or a.seeds:
            from landscape.executors import open_executor
            from landscape.lottery_sweep import lottery_sweep

            seeds = [int(s) for s in a.seeds.split(",") if s.strip()] if a.seeds else [a.seed]
            lottery_store = lottery_store.with_suffix("")
            with open_executor(a.executor) as ex:
                ds = lottery_sweep(
                    (store, which),
                    data,
                    rewinds=rewinds,
                    seeds=seeds,
                    out_dir=lottery_store,
                    executor=ex,
                    cfg=cfg,
                    **options,
                )
            if "seed" in ds.dims:
                print(f"mean over seeds {', '.join(map(str, seeds))}")
            print(_lottery_table(ds.mean("seed", keep_attrs=True) if "seed" in ds.dims else ds))
        else:
            ds = lottery(
                (store, which),
                data,
                rewind=rewinds if len(rewinds) != 1 else rewinds[0],
                cfg=cfg,
                store=lottery_store,
                seed=a.seed,
                **options,
            )
            print(_lottery_table(ds))
        out = Path(a.out) if a.out else lottery_store.with_suffix(".nc")
        print(f"checkpoints in {lottery_store}")
        print(f"wrote {_write_nc(ds, out)}")
        return 0


@command("locality", "teacher-distance sweep: one distillation per alpha (or eps), gathered into one result")
class _Locality:
    @staticmethod
    def add_args(p: argparse.ArgumentParser) -> None:
        from distill.config import _parse_list

        g = p.add_mutually_exclusive_group(required=True)
        g.add_argument(
            "--alphas",
            type=_parse_list,
            metavar="A,B,...",
            help="the sweep: comma-separated "
            "student-teacher interpolation weights in [0, 1] (0: the teacher, 1: independent), e.g. "
            "0,0.25,0.5,1; one distillation each",
        )
        g.add_argument(
            "--eps",
            dest="eps_values",
            type=_parse_list,
            metavar="A,B,...",
            help="or the sweep over noise scales: comma-separated eps >= 0 (student = teacher + eps x noise)",
        )
        p.add_argument(
            "--seeds",
            type=_parse_list,
            default=[0],
            metavar="A,B,...",
            help="replicate seeds, comma-separated (default: 0)",
        )
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
        _add_executor_arg(p, "points")
        add_arguments(p, DistillConfig, skip=("init", "alpha", "eps"))

    @staticmethod
    def run(a: argparse.Namespace) -> int:
        from landscape.executors import open_executor
        from landscape.locality import locality

        cfg = from_args(DistillConfig, a)
        spec = a.executor or (f"process:{a.workers}" if a.workers > 1 else None)
        with open_executor(spec) as ex:
            ds = locality(cfg, alphas=a.alphas, eps=a.eps_values, seeds=a.seeds, out_dir=a.runs, executor=ex)
        _write_nc(ds, Path(a.out))
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


# ---------------------------------------------------------------------------- align, surface, hessian
def _floats(text: str, n: int, flag: str) -> tuple[float, ...]:
    try:
        values = tuple(float(s) for s in text.split(","))
    except ValueError:
        values = ()
    if len(values) != n:
        raise ValueError(f"{flag} {text!r}: pass {n} comma-separated numbers, e.g. " + ",".join(["-1", "1"][:n]))
    return values


@command("align", "permutation alignment: barrier between two checkpoints before and after matching their units")
class _Align:
    @staticmethod
    def add_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("a", metavar="A", help="reference checkpoint: STORE:EPOCH or STORE:NAME (a classifier)")
        p.add_argument("b", metavar="B", help="checkpoint whose units are permuted onto A's, same architecture")
        p.add_argument(
            "--method",
            default="weights",
            choices=("weights", "activations"),
            help="weight matching (Ainsworth et al.) or activation matching on training images (default: weights)",
        )
        p.add_argument(
            "--repair",
            action="store_true",
            help="also evaluate the aligned path with REPAIR renormalisation of layers without BatchNorm",
        )
        p.add_argument(
            "--alphas", type=_path_alphas, default=21, metavar="N|A,B,...", help=f"{_ALPHAS_HELP} (default: 21)"
        )
        p.add_argument(
            "--bn", default="reset", choices=BN_POLICIES, help="BatchNorm statistics along the path (default: reset)"
        )
        p.add_argument("--split", type=_splits, default=("test",), help="train, test or train,test (default: test)")
        p.add_argument("--max-examples", type=int, default=None, metavar="N", help=_MAX_EXAMPLES_HELP)
        p.add_argument("--out", default=None, help="netCDF file to write (default: beside A's store)")
        _add_data_args(p)

    @staticmethod
    def run(a: argparse.Namespace) -> int:
        import xarray as xr

        from landscape.paths import barrier, linear_path

        ref_a, ref_b = _parse_ref(a.a), _parse_ref(a.b)
        data = _data_for(ref_a[0], a)
        common = dict(alphas=a.alphas, bn=a.bn, splits=a.split, max_examples=a.max_examples, device=a.device)
        runs = {
            "none": linear_path(ref_a, ref_b, data, **common),
            a.method: linear_path(ref_a, ref_b, data, align=a.method, **common),
        }
        if a.repair:
            runs[f"{a.method}+repair"] = linear_path(ref_a, ref_b, data, align=a.method, repair=True, **common)
        rows = []
        for name, ds in runs.items():
            heights = barrier(ds)
            ds = ds.assign(barrier_error=heights.barrier_error, barrier_loss=heights.barrier_loss)
            print(f"alignment: {name}")
            print(_barrier_table(ds))
            rows.append(ds.expand_dims(alignment=[name]))
        out_ds = xr.concat(rows, "alignment", combine_attrs="override")
        out_ds.attrs.update({k: v for k, v in runs[a.method].attrs.items() if k.startswith(("align", "perm"))})
        out_ds.attrs["barrier_error_definition"] = heights.attrs["barrier_error_definition"]
        store = ref_a[0].path
        out = Path(a.out) if a.out else store.with_name(f"{store.stem}-align-{_slug(ref_a[1])}-{_slug(ref_b[1])}.nc")
        print(f"wrote {_write_nc(out_ds, out)}")
        return 0


@command(
    "surface",
    "1-D or 2-D loss surface around a checkpoint along filter-normalised random, Hessian or checkpoint directions",
)
class _Surface:
    @staticmethod
    def add_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("center", metavar="CENTER", help="checkpoint at the origin: STORE:EPOCH or STORE:NAME")
        p.add_argument("--out", required=True, help="netCDF file (written after every row; resumed when it exists)")
        p.add_argument(
            "--directions",
            default="random",
            help="random (filter-normalised), hessian (top "
            "eigenvectors) or one/two checkpoints STORE:EPOCH[,STORE:EPOCH] (default: random)",
        )
        p.add_argument("--dims", type=int, default=2, choices=(1, 2), help="1-D line or 2-D surface (default: 2)")
        p.add_argument("--resolution", type=int, default=21, help="points per axis (default: 21)")
        p.add_argument("--span", default="-1,1", help="LOW,HIGH of the coordinates (default: -1,1)")
        p.add_argument("--seed", type=int, default=0, help="seed of the random directions (default: 0)")
        p.add_argument(
            "--bias",
            default="ignore",
            choices=("ignore", "normalize"),
            help="biases in random directions: zero, or rescaled to the bias norm (default: ignore)",
        )
        p.add_argument(
            "--bn-params",
            default="ignore",
            choices=("ignore", "normalize"),
            help="BatchNorm weight/bias in random directions (default: ignore)",
        )
        p.add_argument(
            "--bn", default="reset", choices=BN_POLICIES, help="BatchNorm statistics at each point (default: reset)"
        )
        p.add_argument("--split", default="test", choices=_SPLITS, help="split to evaluate (default: test)")
        p.add_argument("--max-examples", type=int, default=None, metavar="N", help=_MAX_EXAMPLES_HELP)
        _add_data_args(p)

    @staticmethod
    def run(a: argparse.Namespace) -> int:
        from landscape.surface import surface

        ref = _parse_ref(a.center)
        data = _data_for(ref[0], a)
        _require_classifier(a.center, ref, data.num_classes)
        directions = (
            a.directions if a.directions in ("random", "hessian") else [_parse_ref(t) for t in a.directions.split(",")]
        )
        ds = surface(
            ref,
            data,
            directions=directions,
            dims=a.dims,
            resolution=a.resolution,
            span=_floats(a.span, 2, "--span"),
            seed=a.seed,
            bias=a.bias,
            bn_params=a.bn_params,
            bn=a.bn,
            split=a.split,
            max_examples=a.max_examples,
            out=a.out,
            device=a.device,
        )
        centre = ds.loss.sel(x=0.0, method="nearest")
        if "y" in centre.dims:
            centre = centre.sel(y=0.0, method="nearest")
        print(
            f"{a.split} loss: centre {float(centre):.4f}, min {float(ds.loss.min()):.4f}, max "
            f"{float(ds.loss.max()):.4f}; error min {float(ds.error.min()):.4f}"
        )
        print(f"wrote {a.out}")
        return 0


@command("hessian", "curvature at a checkpoint: top Hessian eigenvalues (Lanczos), trace, spectral density")
class _Hessian:
    @staticmethod
    def add_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("model", metavar="CKPT", help="checkpoint: STORE:EPOCH or STORE:NAME")
        p.add_argument("--out", required=True, help="netCDF file to write")
        p.add_argument("--k", type=int, default=5, help="number of top eigenvalues (default: 5)")
        p.add_argument(
            "--loss",
            default="supervised",
            choices=("supervised", "distillation"),
            help="cross-entropy on labels, or against the store's teacher (default: supervised)",
        )
        p.add_argument("--teacher", default=None, help="teacher for --loss distillation (default: STORE:teacher)")
        p.add_argument(
            "--batches", type=int, default=4, help="mini-batches to average over; 0 = the whole split (default: 4)"
        )
        p.add_argument("--batch-size", type=int, default=256, help="mini-batch size (default: 256)")
        p.add_argument("--split", default="train", choices=_SPLITS, help="split (default: train)")
        p.add_argument(
            "--trace-probes",
            type=int,
            default=100,
            help="Hessian-vector products for the trace (default: 100; 0: skip)",
        )
        p.add_argument(
            "--trace-method",
            default="hutch++",
            choices=("hutch++", "hutchinson"),
            help="trace estimator (default: hutch++)",
        )
        p.add_argument(
            "--slq-runs",
            type=int,
            default=0,
            help="stochastic Lanczos quadrature runs for the spectral density (default: 0)",
        )
        p.add_argument("--slq-steps", type=int, default=50, help="Lanczos steps per SLQ run (default: 50)")
        p.add_argument(
            "--path-to",
            default=None,
            help="evaluate along the straight line to this checkpoint instead (with --alphas points)",
        )
        p.add_argument("--alphas", type=int, default=5, help="points on the line for --path-to (default: 5)")
        p.add_argument("--seed", type=int, default=0, help="seed of the Lanczos start vector and probes")
        _add_data_args(p)

    @staticmethod
    def run(a: argparse.Namespace) -> int:
        from landscape.hessian import hessian, hessian_along_path

        ref = _parse_ref(a.model)
        data = _data_for(ref[0], a)
        if a.k < 0 or a.batches < 0 or a.trace_probes < 0:
            raise ValueError("--k, --batches and --trace-probes must be >= 0")
        teacher = None
        if a.loss == "distillation":
            teacher = _parse_ref(a.teacher) if a.teacher else (ref[0], "teacher")
        else:
            _require_classifier(a.model, ref, data.num_classes)
        common = dict(
            loss=a.loss,
            teacher=teacher,
            split=a.split,
            batches=a.batches or None,
            batch_size=a.batch_size,
            trace_probes=a.trace_probes,
            trace_method=a.trace_method,
            seed=a.seed,
            device=a.device,
        )
        if a.path_to:
            ds = hessian_along_path(ref, _parse_ref(a.path_to), data, alphas=a.alphas, k=a.k, **common)
        else:
            ds = hessian(ref, data, k=a.k, slq_runs=a.slq_runs, slq_steps=a.slq_steps, **common)
        import numpy as np

        if "eigenvalue" in ds:
            print("top eigenvalues: " + np.array2string(ds.eigenvalue.values, precision=5))
        if "trace" in ds:
            print("trace: " + np.array2string(ds.trace.values, precision=5) + f" ({a.trace_method})")
        print(
            f"{ds.attrs['batches']} batches, {ds.attrs['examples']} examples, {int(ds.hvps.values.sum())} "
            "Hessian-vector products"
        )
        print(f"wrote {_write_nc(ds, Path(a.out))}")
        return 0


# ---------------------------------------------------------------------------- pack, verify
@command("pack", "write a store as one self-contained HDF5 file (for sharing; read by the same Store API)")
class _Pack:
    @staticmethod
    def add_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("store", help="store to pack")
        p.add_argument("out", help="HDF5 file to write (must not exist)")

    @staticmethod
    def run(a: argparse.Namespace) -> int:
        from distill.store.pack import pack

        out = pack(a.store, a.out)
        print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
        return 0


@command("verify", "read every object of a store (checksums, dtypes, architectures); exit 1 on damage")
class _Verify:
    @staticmethod
    def add_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("store", help="store to check")

    @staticmethod
    def run(a: argparse.Namespace) -> int:
        import sys

        from distill.store.pack import verify

        count, problems = verify(a.store)
        for line in problems:
            print(f"damaged: {line}")
        print(
            f"{a.store}: {count} objects read, {len(problems)} problem(s)", file=sys.stderr if problems else sys.stdout
        )
        return 1 if problems else 0
