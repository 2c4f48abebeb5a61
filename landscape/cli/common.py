"""What several ``rtt`` commands share: settings flags from a config class, checkpoint references,
the data flags, the executor flag, the supervised recipe flags (--preset, --sup-*), writing results
and printing barriers. Light: heavy imports happen inside the functions that need them."""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

from distill.options import add_arguments

REF_HELP = "STORE:EPOCH or STORE:NAME (e.g. runs/x.rts:10, runs/x.rts:-1 for the last student, runs/x.rts:teacher)"


# ---------------------------------------------------------------------------- settings
def add_settings(
    p: Any,
    cls: type,
    keep: tuple[str, ...] | None = None,
    skip: tuple[str, ...] = (),
    defaults: dict[str, Any] | None = None,
    flags: dict[str, str] | None = None,
) -> None:
    """One flag per field of ``cls`` (those in ``keep`` when given, minus ``skip``) on the parser or
    group ``p``: defaults from ``defaults`` where given, else the field's; flag names from ``flags``
    (field -> flag) where not ``--field``. A None choice (no value on a command line) is not offered."""
    from landscape.configs import with_defaults

    names = [f.name for f in fields(cls)]
    skip = tuple(skip) + tuple(n for n in names if keep is not None and n not in keep)
    add_arguments(p, with_defaults(cls, **defaults) if defaults else cls, skip=skip)
    for action in p._actions:
        if action.dest in names and action.choices and None in action.choices:
            action.choices = [c for c in action.choices if c is not None]
        if action.dest in (flags or {}):
            _rename(p, action, (flags or {})[action.dest])


def _rename(p: Any, action: argparse.Action, flag: str) -> None:
    """Give ``action`` the option string ``flag`` instead of its own."""
    table = p._option_string_actions  # shared with the parser when p is a group
    for old in action.option_strings:
        table.pop(old, None)
    action.option_strings = [flag]
    table[flag] = action


# ---------------------------------------------------------------------------- checkpoints
def parse_ref(text: str) -> tuple:
    """``STORE:EPOCH`` or ``STORE:NAME`` -> (Store, int epoch | str name); a negative epoch counts
    back from the last saved student and comes back resolved."""
    from distill.store import Store
    from landscape.refs import resolve_epoch

    path, sep, which = text.rpartition(":")
    if not sep or not path or not which:
        raise ValueError(f"{text!r} is not a checkpoint reference: write {REF_HELP}")
    store = Store(path)
    try:
        epoch = int(which)
    except ValueError:
        return store, which
    return store, resolve_epoch(store, epoch)


def slug(which: Any) -> str:
    """A checkpoint's epoch or name as it appears in a file name."""
    return str(which).replace("/", "_")


def beside(ref: tuple, out: str | None, what: str, other: tuple | None = None) -> Path:
    """``out``, else a file named after the checkpoints beside the first one's store."""
    store = ref[0].path
    tags = "-".join(slug(r[1]) for r in (ref, other) if r is not None)
    return Path(out) if out else store.with_name(f"{store.stem}-{what}-{tags}.nc")


def require_classifier(text: str, ref: tuple, data: Any, what: str) -> None:
    """Refuse (one line) a checkpoint that is no classifier for ``data``'s classes."""
    from distill.store import as_module
    from landscape.refs import require_classifier as check

    check(as_module(ref), data, what, text)


# ---------------------------------------------------------------------------- data
def add_data_args(p: argparse.ArgumentParser) -> None:
    """--dataset, --data-root and --subset (the store's config by default); --device is a setting."""
    from distill import registry
    from distill.options import _CONVERTERS, registered_name

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


def data_for(store: Any, a: argparse.Namespace) -> Any:
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


def add_executor_arg(p: argparse.ArgumentParser, what: str, resumable: bool = True) -> None:
    p.add_argument(
        "--executor",
        default=None,
        metavar="SPEC",
        help=f"run the {what} through dask:SCHEDULER, "
        "dask-local:N, submitit:FOLDER[,key=value...], process:N or thread:N (default: one after the "
        "other here)" + ("; finished ones are skipped on a rerun" if resumable else ""),
    )


# ---------------------------------------------------------------------------- output
def write_nc(ds: Any, path: Path) -> Path:
    """Write the result ``ds`` as netCDF at ``path``: under a temporary name, fsynced and renamed into
    place (a killed writer leaves a temporary that the next write of ``path`` removes)."""
    from distill.store import fsio

    path = Path(path)
    fsio.write_atomic(path, lambda tmp: ds.to_netcdf(tmp, engine="h5netcdf"))
    return path


def barrier_table(ds: Any) -> str:
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


# ---------------------------------------------------------------------------- start and recipe
def add_start_and_recipe_args(p: argparse.ArgumentParser, skip: tuple[str, ...]) -> None:
    """The flags `start_and_recipe` reads: START, --epoch/--module, --preset, the data flags and one
    --sup-* flag per SupervisedConfig field not in ``skip``."""
    from distill.config import SUPERVISED_PRESETS, SupervisedConfig

    p.add_argument("store", metavar="START", help=f"the start checkpoint: {REF_HELP}; a bare STORE is its last student")
    p.add_argument("--epoch", type=int, default=None, help="deprecated: write STORE:EPOCH")
    p.add_argument("--module", default=None, help="deprecated: write STORE:NAME")
    p.add_argument(
        "--preset",
        default="paper",
        choices=tuple(SUPERVISED_PRESETS),
        help="supervised training recipe (paper: 160 epochs; cpu: 8; tiny: 2); --sup-* flags override "
        "it (default: paper)",
    )
    add_data_args(p)
    add_arguments(p, SupervisedConfig, prefix="sup-", skip=skip, defaults_text=_preset_defaults())
    # absent --sup-* flags (None) must not override the preset
    p.set_defaults(**{f"sup_{f.name}": None for f in fields(SupervisedConfig) if f.name not in skip})


def _preset_defaults() -> dict[str, str]:
    """For each SupervisedConfig field a preset changes: its default per preset, as the help shows it."""
    from distill.config import SUPERVISED_PRESETS, SupervisedConfig
    from distill.options import _show

    changed = {k for changes in SUPERVISED_PRESETS.values() for k in changes}
    recipes = {name: SupervisedConfig.preset(name) for name in SUPERVISED_PRESETS}
    return {k: ", ".join(f"{name} {_show(getattr(cfg, k))}" for name, cfg in recipes.items()) for k in changed}


def start_and_recipe(a: argparse.Namespace) -> tuple:
    """(store, epoch or module name, tag for file names, SupervisedConfig) from the shared flags
    of ``rtt instability`` and ``rtt lottery``: --epoch/--module, --preset and the --sup-* overrides."""
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
    store, which = parse_ref(text)
    if isinstance(which, int) and which not in store.epochs:
        saved = ", ".join(map(str, store.epochs)) or "none"
        raise ValueError(f"{store.path} has no student at epoch {which} (saved epochs: {saved}): pass one of those")
    tag = f"e{which}" if isinstance(which, int) else slug(which)
    overrides = {
        f.name: getattr(a, f"sup_{f.name}")
        for f in fields(SupervisedConfig)
        if getattr(a, f"sup_{f.name}", None) is not None
    }
    return store, which, tag, SupervisedConfig.preset(a.preset, **overrides, device=a.device)
