"""What every analysis script shares: the command line, presets, data, provenance, result files, figures.

A script defines ``PRESETS`` (``smoke``, ``cpu``, ``gpu`` and optionally ``full`` or ``cpu-long``:
dicts of its own settings), a ``compute(pre, ctx) -> xr.Dataset`` and a ``plot(ds, path)`` drawn from the Dataset
alone, and ends with ``main = script(__name__, PRESETS, compute, plot)``. Then

    python -m analyses.<name> --preset smoke|cpu|full|gpu [--results DIR] [--runs DIR] [--plot-only]
                              [--executor SPEC]

writes ``<results>/<name>.nc`` (provenance in attrs: commit, command line, preset, recipe,
config, seeds) and ``<results>/<name>.png`` (``<name>_full.nc`` / ``.png`` for ``full``, so that it
sits beside the cpu preset's file); stores of the runs go to ``<runs>/<name>/<preset>/``
(``.rts`` folders; an old ``.h5`` folder of the same name is resumed) so a second call resumes.
``--executor`` (:func:`landscape.executors.open_executor`: dask, submitit, process or thread pools)
runs a script's independent distillations and sweep points in parallel (``ctx.executor``); the
results equal the sequential run's and finished stores are skipped.
Accuracy is a fraction (0-1) in every file and in percent in every figure and table (``pct``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from distill.config import DistillConfig
from distill.store import Store, store_name

PRESET_NAMES = ("smoke", "cpu", "full", "cpu-long", "gpu", "gpu-quick")
# What each preset is for (the --preset help). ``cpu`` keeps to about 20 minutes on 2 cores; ``full`` is
# offered only by the scripts whose paper-scale work is forward passes over the full CIFAR-10 split
# (hours on 2 cores, resumable), which a cpu preset cannot hold.
PRESET_HELP = {
    "smoke": "seconds (tests)",
    "cpu": "at most about 20 minutes on 2 cores",
    "full": "the cpu preset's experiment over the whole of it on a CPU (hours on 2 cores, resumable)",
    "cpu-long": "the paper's own training run on a CPU (days on 2 cores: a background job over several sittings, "
    "resumable; --snapshot writes the result so far)",
    "gpu": "the paper's protocol on one GPU: fp32, the paper's epochs, pruning depth and retraining recipe "
    "(hours; resumable, in calls of any length: scripts/gpu-analyses.sh)",
    "gpu-quick": "a shortened or bf16 variant of the gpu preset (the script's PRESET_NOTES say what it changes; "
    "the result's attrs record it)",
}


COMMITTED_PRESETS = ("cpu", "cpu-long")  # whose results are the checkout's results/<name>.nc


def result_stem(name: str, preset: str) -> str:
    """The file name (no suffix) of a script's result under ``--results``: ``<name>`` for the preset whose
    result the checkout holds (cpu; table1's cpu-long), ``<name>_<preset>`` for every other one
    (``_smoke``, ``_full``, ``_gpu``, ``_gpu_quick``), so no preset writes over another's file."""
    return name if preset in COMMITTED_PRESETS else f"{name}_{preset.replace('-', '_')}"


def committed(path: str | Path) -> bool:
    """Whether ``path`` is a file git tracks in this checkout (a committed result)."""
    path = Path(path).resolve()
    try:
        path.relative_to(REPO)
    except ValueError:
        return False
    try:
        r = subprocess.run(
            ["git", "ls-files", "--error-unmatch", str(path)], cwd=REPO, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return r.returncode == 0


REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- context and provenance
class UsageError(ValueError):
    """A script argument that names nothing the preset has (``--only`` with no match): a one-line error."""


@dataclass
class Context:
    """Where a script reads and writes, and its preset's name."""

    name: str
    preset: str
    runs: Path
    results: Path
    root: str | None
    device: str
    only: tuple[str, ...] = ()
    code: str = ""  # the commit when the script started
    executor: Executor | None = None  # where independent runs go (None: one after the other here)
    snapshot: bool = False  # --snapshot: read what the stores hold so far, train nothing
    options: dict[str, Any] = field(default_factory=dict)  # the script's own flags (script(options=...))
    argv: tuple[str, ...] = ()  # the script's own arguments (also when analyses.all calls it)

    def keep(self, items: Sequence[str]) -> list[str]:
        """``items`` restricted to ``--only`` (all of them without it)."""
        return [i for i in items if not self.only or i in self.only]

    def store(self, *parts: str) -> Path:
        """A store path under ``runs/<name>/<preset>/`` (folders created); a ``.rts`` name whose old
        ``.h5`` folder is there (an interrupted run's) comes back as that one, to resume it
        (`distill.store.store_name`)."""
        p = store_name(self.runs.joinpath(self.name, self.preset, *parts))
        p.parent.mkdir(parents=True, exist_ok=True)
        return p


def commit() -> str:
    """The git commit of the code that ran (``+dirty`` when the tree has uncommitted changes)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head or "unknown") + ("+dirty" if dirty else "")


def provenance(ctx: Context, configs: dict[str, Any], seeds: Sequence[int], recipe: str) -> dict[str, Any]:
    """netCDF-safe attrs: commit, command line, preset, recipe, configs (JSON), seeds, versions."""
    import torch

    import distill

    return {
        "script": f"analyses.{ctx.name}",
        "preset": ctx.preset,
        "commit": ctx.code or commit(),
        "command_line": shlex.join(["python", "-m", f"analyses.{ctx.name}", *ctx.argv]),
        "recipe": recipe,
        "seeds": json.dumps([int(s) for s in seeds]),
        "config": json.dumps(
            {k: (v.to_dict() if hasattr(v, "to_dict") else v) for k, v in configs.items()}, sort_keys=True, default=str
        ),
        "toolkit_version": distill.__version__,
        "torch_version": str(torch.__version__),
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "accuracy_units": "fraction (figures and tables show percent)",
        "only": ",".join(ctx.only) or "all",
    }


# ----------------------------------------------------------------------------- data and runs
def variant(preset: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A copy of ``preset`` with ``changes``; a change that is a dict updates the preset's dict of that
    name key by key (``variant(gpu, cfg=dict(epochs=30))`` keeps the rest of ``cfg``)."""
    out = dict(preset)
    for k, v in changes.items():
        out[k] = {**out[k], **v} if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def tiny_test(data: Any, n_test: int | None) -> Any:
    """``data`` with its test split cut to a stratified ``n_test`` images (None: unchanged); smoke presets."""
    from distill.data import Dataset, Split, stratified_indices

    if n_test is None or n_test >= len(data.test):
        return data
    idx = stratified_indices(data.test.labels, n_test, data.num_classes, 0)
    return Dataset(
        data.name,
        data.train,
        Split(data.test.images[idx], data.test.labels[idx]),
        list(data.classes),
        data.mean,
        data.std,
    )


def load(name: str, ctx: Context, subset: int | None = None, n_test: int | None = None, seed: int = 0) -> Any:
    """A dataset (``distill.load_dataset``) with ``ctx.root`` for CIFAR, the test split optionally cut."""
    from distill.data import load_dataset

    root = ctx.root if "cifar" in name else None
    return tiny_test(load_dataset(name, root=root, subset=subset, seed=seed), n_test)


def distil(cfg: DistillConfig, out: Path, data: Any = None) -> Store:
    """The store of ``cfg`` at ``out``, distilled or resumed to ``cfg.epochs`` when needed."""
    import distill

    if out.exists():
        try:
            store = Store(out)
            done = bool(store.epochs) and store.epochs[-1] >= cfg.epochs and "metrics" in store.results()
        except Exception:  # noqa: BLE001 - an unreadable leftover is redone by distill()
            done = False
        if done:
            return store
    return distill.distill(cfg, out, data=data, progress=False)


def sweep(units: Sequence[Any], ctx: Context) -> list[Any]:
    """Run independent work units (:mod:`landscape.executors`) through ``ctx.executor``, skipping
    finished ones; their results in order (None for the skipped)."""
    from landscape.executors import run_units

    return run_units(units, ctx.executor, desc=f"analyses.{ctx.name}", progress=False)[0]


def distil_all(jobs: Sequence[tuple[DistillConfig, Path]], ctx: Context, data: Any = None) -> list[Store]:
    """The stores of independent runs ``[(cfg, out), ...]``, distilled or resumed where needed through
    ``ctx.executor`` (finished ones skipped), in the order given."""
    from landscape.locality import DistillUnit

    sweep([DistillUnit(cfg.to_dict(), str(out), data) for cfg, out in jobs], ctx)
    return [Store(out) for _, out in jobs]


# How a probe curve over epochs becomes one number: the paper's is the best over the probed epochs after
# epoch 0 (the authors' results notebook drops the first row); ``best`` keeps epoch 0 (a student that never
# improves then reports its starting value), ``last`` is the last probed epoch.
STATISTICS = ("best_after_epoch0", "best", "last")
STATISTIC_HELP = {
    "best_after_epoch0": "best over the probed epochs after epoch 0 (the paper's statistic)",
    "best": "best over the probed epochs, epoch 0 included",
    "last": "the last probed epoch",
}


def best_over_epochs(metrics: xr.Dataset, statistic: str = "best_after_epoch0") -> xr.DataArray:
    """A run's probe accuracy reduced over its probed epochs by ``statistic`` (:data:`STATISTICS`), dims
    (model, probe); the choice is in the result's ``statistic`` attr. NaN where nothing was probed after 0."""
    if statistic not in STATISTICS:
        raise ValueError(f"statistic={statistic!r}: choose one of {', '.join(STATISTICS)}")
    probed = metrics.accuracy.dropna("epoch", how="all")
    if statistic == "last":
        out = probed.isel(epoch=-1, drop=True)
    else:
        if statistic == "best_after_epoch0":
            probed = probed.sel(epoch=probed.epoch > 0)
        out = (
            probed.max("epoch")
            if probed.sizes["epoch"]
            else xr.full_like(metrics.accuracy.isel(epoch=0, drop=True), np.nan)
        )
    return out.assign_attrs(statistic=statistic, statistic_meaning=STATISTIC_HELP[statistic])


def stack_seeds(rows: list[xr.Dataset | xr.DataArray], seeds: Sequence[int]) -> Any:
    """Concatenate per-seed results along a new ``seed`` dimension."""
    return xr.concat(rows, dim=xr.DataArray(list(seeds), dims="seed", name="seed"), combine_attrs="drop_conflicts")


def save(ds: xr.Dataset, path: str | Path) -> Path:
    """Write a result as netCDF (h5netcdf), creating the folder: under a temporary name of its own,
    fsynced and renamed into place, as the store writes (two workers finishing the same unit each
    write a whole file; the reader sees one of them, never a mix, and a kill leaves no partial file)."""
    from distill.store import fsio

    path = Path(path)
    fsio.write_atomic(path, lambda tmp: ds.to_netcdf(tmp, engine="h5netcdf"))
    return path


def holds_unit(path: str | Path, key: str) -> bool:
    """Whether the result file at ``path`` was written by the work unit whose settings are ``key``
    (its ``unit`` attr); a missing or unreadable file is not."""
    try:
        return open_result(path).attrs.get("unit") == key
    except (OSError, ValueError):
        return False


def open_result(path: str | Path) -> xr.Dataset:
    """Read a result file fully into memory (the file is closed afterwards)."""
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        return ds.load()


# ----------------------------------------------------------------------------- figures
def pct(x: Any) -> Any:
    """Accuracy or error as a fraction -> percent (the figures' and tables' unit)."""
    return 100 * x


STYLE = {
    "teacher": dict(color="C0", ls="-", marker="s"),
    "teacher_bn": dict(color="C1", ls="--", marker="^", mfc="none"),  # hollow: an equal teacher shows through
    "student": dict(color="C2", ls="-", marker="o"),
    "input": dict(color="0.4", ls=":", marker=""),
}
LABEL = {"teacher": "teacher", "teacher_bn": "teacher, BN recalibrated", "student": "student", "input": "input pixels"}
PROBE_LABEL = {"knn": "k-NN probe", "linear": "linear probe", "linear_std": "standardised linear probe"}
PROBE_SHORT = {"knn": "k-NN", "linear": "linear", "linear_std": "linear, std."}  # tick labels


def band(ax: Any, x: Any, da: xr.DataArray, label: str, dim: str = "seed", **style: Any) -> None:
    """Mean over ``dim`` as a line, mean +- std as a shaded band (no band for a single seed)."""
    mean = da.mean(dim) if dim in da.dims else da
    (line,) = ax.plot(np.asarray(x), np.asarray(mean), label=label, ms=4, **style)
    if dim in da.dims and da.sizes[dim] > 1:
        std = da.std(dim)
        ax.fill_between(
            np.asarray(x), np.asarray(mean - std), np.asarray(mean + std), color=line.get_color(), alpha=0.2, lw=0
        )


def figure(ncols: int = 1, nrows: int = 1, width: float = 4.6, height: float = 3.4) -> tuple[Any, Any]:
    """A figure with a flat array of axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False, layout="constrained")
    return fig, axes.ravel()


def shared_levels(*arrays: Any, n: int = 15) -> Any:
    """Contour levels at round values spanning every array (NaNs ignored): maps drawn side by side with
    them share one colour range, and their colour bars read in short numbers."""
    import matplotlib.ticker as mticker

    lo = min(float(np.nanmin(np.asarray(a))) for a in arrays)
    hi = max(float(np.nanmax(np.asarray(a))) for a in arrays)
    return mticker.MaxNLocator(n).tick_values(lo, hi)


def log_ticks(ax: Any, values: Sequence[float], base: int = 10, powers: bool = False) -> None:
    """A log-scaled x axis labelled at exactly ``values`` (no crowded minor labels); ``powers``: as powers
    of ``base`` (``2^16``, short labels that do not run into each other)."""
    ax.set_xscale("log", base=base)
    if powers:
        labels = [f"${base}^{{{np.log(v) / np.log(base):.3g}}}$" for v in values]
    else:
        labels = [f"{v:g}" for v in values]
    ax.set_xticks(list(values), labels)
    ax.minorticks_off()


def legend(ax: Any, every_panel: bool = False, below: bool = False, **kw: Any) -> None:
    """The legend outside the axes, on the right (never over the curves); ``below``: under the axes, in
    two columns (for a panel that is not the last of its row). ``every_panel``: list each labelled artist
    of all the figure's axes once, so a line drawn on one panel only (the paper's points, say) is still
    named."""
    if every_panel and "handles" not in kw:
        seen: dict[str, Any] = {}
        for other in ax.figure.axes:
            for h, label in zip(*other.get_legend_handles_labels()):
                seen.setdefault(label, h)
        kw = {**kw, "handles": list(seen.values()), "labels": list(seen)}
    if below:
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncols=2, **kw)
    else:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5), **kw)


def finish(fig: Any, path: str | Path, title: str = "") -> Path:
    """Title (each line wrapped to the figure's width), save (PNG, 110 dpi), close."""
    import matplotlib.pyplot as plt

    if title:
        import textwrap

        width = max(40, int(fig.get_figwidth() * 12))  # characters of the 9-point title per line
        fig.suptitle("\n".join(textwrap.fill(line, width) for line in title.split("\n")), fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def subtitle(ds: xr.Dataset) -> str:
    """One line naming the preset, the seeds and the commit of a result file."""
    return f"{ds.attrs.get('script', '')} --preset {ds.attrs.get('preset', '?')}, seeds {ds.attrs.get('seeds', '?')}"


DATASET_NAME = {
    "fashion-mnist": "Fashion-MNIST",
    "mnist": "MNIST",
    "cifar10": "CIFAR-10",
    "cifar100": "CIFAR-100",
    "svhn": "SVHN",
}
TRAIN_IMAGES = {"fashion-mnist": 60_000, "mnist": 60_000, "cifar10": 50_000, "cifar100": 50_000}
NUM_CLASSES = {"fashion-mnist": 10, "mnist": 10, "cifar10": 10, "cifar100": 100}  # all equally sized


def dataset_name(name: str) -> str:
    """A dataset's name as a paper writes it: ``fashion-mnist`` -> ``Fashion-MNIST``,
    ``gaussian:cifar10`` -> ``Gaussian noise (CIFAR-10 shape)``."""
    kind, _, base = str(name).partition(":")
    if base:
        return f"{kind.capitalize()} noise ({dataset_name(base)} shape)"
    return DATASET_NAME.get(kind, kind)


def arch_name(arch: str, options: dict[str, Any] | None = None) -> str:
    """An architecture as a paper writes it: ``convnet`` with depth 4, width 32 -> ``4x32 ConvNet``,
    ``resnet20`` -> ``ResNet20``, ``vit_tiny`` -> ``ViT-Tiny`` (BN is left to :func:`describe`)."""
    options = options or {}
    arch = str(arch)
    if arch == "convnet":
        depth, width = options.get("depth"), options.get("width")
        return f"{depth}x{width} ConvNet" if depth and width else "ConvNet"
    if arch == "mlp":
        return "MLP"
    for prefix, nice in (("resnet", "ResNet"), ("vgg", "VGG")):
        if arch.startswith(prefix):
            return nice + arch[len(prefix) :]
    if arch.startswith("vit"):
        return "ViT-" + "-".join(p.capitalize() for p in arch.split("_")[1:]) if "_" in arch else "ViT"
    return arch


def _configs(ds: xr.Dataset) -> list[dict[str, Any]]:
    """The distillation configs in a result's ``config`` attr (one config or a dict of them), those that
    name a dataset and an architecture (supervised children's recipes do not)."""
    try:
        raw = json.loads(ds.attrs.get("config", "{}"))
    except (TypeError, ValueError):
        return []
    if not isinstance(raw, dict):
        return []
    found = [raw] if "arch" in raw else [v for v in raw.values() if isinstance(v, dict)]
    return [c for c in found if c.get("dataset") and c.get("arch")]


def _train_images(cfg: dict[str, Any]) -> int | None:
    """The training images of a config without ``subset``: the whole split, or the share of the classes it
    keeps (:data:`NUM_CLASSES`: equally sized); None when unknown."""
    name = str(cfg["dataset"]).split(":")[-1]
    full = TRAIN_IMAGES.get(name)
    classes = cfg.get("classes")
    if full is None or not classes:
        return full
    return full * len(classes) // NUM_CLASSES[name]


def _joined(values: Sequence[Any], fmt: Callable[[Any], str] = str) -> str:
    """Distinct values in first-seen order, formatted and joined with `` / ``."""
    seen: list[Any] = []
    for v in values:
        if v not in seen:
            seen.append(v)
    return " / ".join(fmt(v) for v in seen)


def describe(ds: xr.Dataset, training: bool = True) -> str:
    """The setting of a result in words, from its attrs alone (never its command line): architecture,
    dataset, the preset's scale and the number of seeds, e.g. ``4x32 ConvNet, Fashion-MNIST, 2,000 images,
    3 epochs, 3 seeds``. Values that differ between the runs are joined (``500 / 2,000 images``).
    ``training=False`` leaves out the images and epochs of distillation (random teachers, not trained)."""
    a = ds.attrs
    configs = _configs(ds)
    parts: list[str] = []
    if configs:
        names = _joined([arch_name(c["arch"], c.get("arch_options")) for c in configs])
        bn = {(c.get("arch_options") or {}).get("bn") for c in configs if c["arch"] == "convnet"}
        if bn == {True, False}:
            names += " with and without BN"
        elif bn == {True}:
            names += " with BN"
        elif bn == {False}:
            names += " without BN"
        parts += [names, _joined([c["dataset"] for c in configs], dataset_name)]
        if training:
            sizes = [c.get("subset") or _train_images(c) for c in configs]
            if all(sizes):
                parts.append(_joined(sorted(sizes), lambda n: f"{int(n):,}") + " images")
            parts.append(_joined(sorted(int(c["epochs"]) for c in configs)) + " epochs")
    else:  # results that keep their setting in attrs of their own
        if a.get("arch"):
            parts.append(arch_name(str(a["arch"])))
        if a.get("dataset"):
            parts.append(dataset_name(str(a["dataset"])))
        images = a.get("train_subset") or a.get("train_images")
        if images:
            parts.append(f"{int(images):,} images")
    try:
        n = len(json.loads(a["seeds"]))
        parts.append(f"{n} seed{'s' if n != 1 else ''}")
    except (KeyError, TypeError, ValueError):
        pass
    return ", ".join(parts)


def title(ds: xr.Dataset, what: str, note: str = "", training: bool = True) -> str:
    """A figure's title: ``what`` it shows, then a line with the setting (:func:`describe`) and a ``note``
    (what the bands mean, say)."""
    setting = describe(ds, training=training)
    second = "; ".join(p for p in (setting, note) if p)
    return f"{what}\n{second}" if second else what


# ----------------------------------------------------------------------------- the script runner
def _log_progress() -> None:
    """Show the toolkit's progress lines (one per epoch of a distillation, finished and skipped work
    units) on stderr, unless the caller configured logging already."""
    import logging

    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")


Compute = Callable[[dict[str, Any], Context], xr.Dataset]
Plot = Callable[[xr.Dataset, Path], Any]


def parser(
    name: str, doc: str | None, presets: Sequence[str] = PRESET_NAMES, notes: dict[str, str] | None = None
) -> argparse.ArgumentParser:
    """The arguments every analysis script takes (``presets``: the names the script offers; ``notes``: the
    script's own help for some of them, e.g. what its ``gpu-quick`` changes)."""
    first = (doc or name).strip().split("\n\n")[0]  # the docstring's first paragraph, whole
    p = argparse.ArgumentParser(
        prog=f"python -m analyses.{name}", description=" ".join(first.split()), allow_abbrev=False
    )
    offered = [n for n in PRESET_NAMES if n in presets]
    default = "cpu" if "cpu" in offered else next(n for n in offered if n != "smoke")
    helps = {**PRESET_HELP, **(notes or {})}
    p.add_argument(
        "--preset",
        choices=offered,
        default=default,
        help="; ".join(f"{n}: {helps[n]}" for n in offered).replace("%", "%%") + f" (default: {default})",
    )
    p.add_argument("--results", default="results", help="folder of the .nc and .png (default: results)")
    p.add_argument("--runs", default="runs", help="folder of the stores, for resuming (default: runs)")
    p.add_argument("--root", default=None, help="CIFAR-10 location (default: the standard places)")
    p.add_argument("--device", default=None, help="override the preset's device (cpu, cuda, auto)")
    p.add_argument("--plot-only", action="store_true", help="redraw the .png from the existing .nc")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a result file that git tracks in this checkout (a committed result); without it such "
        "a file is refused before any work",
    )
    p.add_argument(
        "--only",
        default="",
        help="comma-separated subset of the preset's items, where a script has "
        "them (tables: architectures, e.g. vgg11,resnet18); the .nc records it",
    )
    p.add_argument(
        "--executor",
        default=None,
        metavar="SPEC",
        help="run the independent distillations and sweep points through dask:SCHEDULER, dask-local:N, "
        "submitit:FOLDER[,key=value...], process:N or thread:N (default: one after the other here); "
        "finished stores are skipped",
    )
    return p


def script(
    module: str,
    presets: dict[str, dict[str, Any]],
    compute: Compute,
    plot: Plot,
    doc: str | None = None,
    snapshot: bool = False,
    options: dict[str, dict[str, Any]] | None = None,
) -> Callable[[Sequence[str] | None], int]:
    """The ``main(argv)`` of an analysis script (see the module docstring). ``snapshot``: the script
    offers ``--snapshot`` (its ``compute`` then reads what its stores hold so far and trains nothing,
    so a long run in another process can be looked at while it goes on). ``options``: the script's own
    flags, ``{"--recipe": argparse keywords}``, their values in ``ctx.options`` (by dest name); a flag
    with ``"stem": True`` whose value is not its default names the result file too
    (``<name>_<value>.nc``), so it never replaces the default's."""
    spec = getattr(sys.modules.get(module), "__spec__", None)
    name = (spec.name if spec is not None else module).rsplit(".", 1)[-1]  # "__main__" under python -m

    def main(argv: Sequence[str] | None = None) -> int:
        notes: dict[str, str] = getattr(sys.modules[module], "PRESET_NOTES", {})
        p = parser(name, doc or sys.modules[module].__doc__, list(presets), notes)
        if snapshot:
            p.add_argument(
                "--snapshot",
                action="store_true",
                help="write the .nc and .png from the epochs the stores hold so far, training nothing "
                "(safe while the run goes on in another process)",
            )
        own = {flag: {k: v for k, v in kw.items() if k != "stem"} for flag, kw in (options or {}).items()}
        for flag, kw in own.items():
            p.add_argument(flag, **kw)
        a = p.parse_args(argv)
        dest = {flag: flag.lstrip("-").replace("-", "_") for flag in own}
        values = {d: getattr(a, d) for d in dest.values()}
        suffix = "".join(
            f"_{values[dest[flag]]}"
            for flag, kw in (options or {}).items()
            if kw.get("stem") and values[dest[flag]] != kw.get("default")
        )
        stem = Path(a.results) / (result_stem(name, a.preset) + suffix)
        nc, png = stem.with_suffix(".nc"), stem.with_suffix(".png")
        if a.plot_only:
            if not nc.exists():
                print(f"analyses.{name}: error: {nc} does not exist: run without --plot-only first", file=sys.stderr)
                return 1
            plot(open_result(nc), png)
            print(f"wrote {png}")
            return 0
        if not a.overwrite and (committed(nc) or committed(png)):
            print(
                f"analyses.{name}: error: {nc} is a committed result: pass --overwrite to replace it, or "
                "--results DIR to write elsewhere",
                file=sys.stderr,
            )
            return 2
        pre = dict(presets[a.preset])
        device = a.device or pre.get("device") or ("auto" if a.preset.startswith("gpu") else "cpu")
        ctx = Context(
            name,
            a.preset,
            Path(a.runs),
            Path(a.results),
            a.root,
            device,
            tuple(x for x in a.only.split(",") if x),
            commit(),
            argv=tuple(sys.argv[1:] if argv is None else argv),
            snapshot=bool(getattr(a, "snapshot", False)),
            options=values,
        )
        os.environ.setdefault("TQDM_DISABLE", "1")
        _log_progress()
        from landscape.executors import ExecutorSpecError, SweepIncomplete, open_executor

        with contextlib.ExitStack() as stack:
            try:
                ctx.executor = stack.enter_context(open_executor(a.executor))
                ds = compute(pre, ctx)
            except (SweepIncomplete, ExecutorSpecError) as e:  # runs busy in another process, or a bad --executor
                print(f"analyses.{name}: error: {e}", file=sys.stderr)
                return 1
            except UsageError as e:
                print(f"analyses.{name}: error: {e}", file=sys.stderr)
                return 2
            except KeyboardInterrupt:
                print(
                    f"analyses.{name}: interrupted; finished epochs and work units are kept: run the same "
                    "command again to resume",
                    file=sys.stderr,
                )
                return 130
        if a.preset in notes:  # what this preset changes against the paper's protocol, in the result
            ds.attrs["preset_note"] = notes[a.preset]
        save(ds, nc)
        plot(open_result(nc), png)
        print(f"wrote {nc} and {png}")
        return 0

    return main


# ----------------------------------------------------------------------------- shared settings
# The CPU-sized setting most scripts share (PAPER.md / results/README.md): a BN-free 4-layer ConvNet with a
# 4,096-way DINO head, AdamW lr 1e-3, batch 64, alpha 1e-10. ``bn=True`` gives its BN twin.
def small_net(width: int = 32, depth: int = 4, bn: bool = False, **changes: Any) -> dict[str, Any]:
    """DistillConfig fields of the small ConvNet (``changes`` win)."""
    return {
        "arch": "convnet",
        "arch_options": {"width": width, "depth": depth, "bn": bn},
        "out_dim": 4096,
        "hidden_dim": 512,
        "bottleneck_dim": 128,
        "lr": 1e-3,
        "batch_size": 64,
        "save_every": 0,
        "device": "cpu",
        **changes,
    }


SMOKE_NET = dict(
    arch="convnet",
    arch_options={"width": 8, "depth": 2, "bn": False},
    out_dim=64,
    hidden_dim=32,
    bottleneck_dim=16,
    lr=1e-3,
    batch_size=32,
    epochs=1,
    save_every=0,
    device="cpu",
)


def keep_classes(data: Any, classes: Sequence[int]) -> Any:
    """The images of ``classes`` only (both splits), relabelled 0..len(classes)-1 in the given order."""
    import torch

    from distill.data import Dataset, Split

    def split(s: Any) -> Any:
        lut = torch.full((int(s.labels.max()) + 1,), -1, dtype=torch.long)
        lut[torch.as_tensor(list(classes))] = torch.arange(len(classes))
        new = lut[s.labels]
        keep = new >= 0
        return Split(s.images[keep], new[keep])

    return Dataset(
        f"{data.name}[{','.join(map(str, classes))}]",
        split(data.train),
        split(data.test),
        [data.classes[c] for c in classes],
        data.mean,
        data.std,
    )


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

    device = resolve_device(cfg.device)
    teacher = store.teacher(device)
    e = store.epochs[-1] if epoch == -1 else epoch
    out = {
        "teacher": probe_backbone(cfg, teacher.backbone, data, ctx.store("probes", f"{tag}-teacher.json")),
        "student": probe_backbone(
            cfg, store.student(e, device).eval().backbone, data, ctx.store("probes", f"{tag}-student-e{e}.json")
        ),
        "input": probe_backbone(cfg, None, data, ctx.store("probes", f"input-{data.name}-{len(data.train)}.json")),
    }
    out["teacher_bn"] = (
        probe_backbone(
            cfg,
            recalibrated_teacher(teacher, data, cfg, device).backbone,
            data,
            ctx.store("probes", f"{tag}-teacher_bn.json"),
        )
        if has_batchnorm(teacher)
        else out["teacher"]
    )
    return out


MODELS = ["teacher", "teacher_bn", "student", "input"]


def probes_array(rows: dict[str, dict[str, float]], probes: Sequence[str]) -> xr.DataArray:
    """{model: {probe: acc}} -> DataArray (model, probe) over ``MODELS``."""
    vals = [[rows.get(m, {}).get(p, np.nan) for p in probes] for m in MODELS]
    return xr.DataArray(
        vals,
        dims=("model", "probe"),
        coords={"model": MODELS, "probe": list(probes)},
        attrs={"long_name": "probe accuracy", "units": "fraction"},
    )
