"""The command line every analysis script shares (:func:`script`): presets, result files, executors.

A script defines ``PRESETS`` (``smoke``, ``cpu``, ``gpu`` and optionally ``full`` or ``cpu-long``:
dicts of its own settings), a ``compute(pre, ctx) -> xr.Dataset`` and a ``plot(ds, path)`` drawn from the Dataset
alone, and ends with ``main = script(__name__, PRESETS, compute, plot)`` (which, run as ``python -m``,
runs the script at once); an optional ``PRESET_NOTES`` says what a preset changes against the paper's
protocol (shown in its ``--preset`` help and recorded in the result's attrs). Then

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
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import xarray as xr

from analyses.context import Context, UsageError, commit
from analyses.results import committed, open_result, result_stem, save
from landscape.cli.common import add_executor_arg

PRESET_NAMES = ("smoke", "cpu", "full", "cpu-long", "gpu", "gpu-quick")
# What each preset is for (the --preset help). ``cpu`` keeps to about 20 minutes on 2 cores; ``full`` is
# offered only by the scripts whose paper-scale work is forward passes over the full CIFAR-10 split
# (hours on 2 cores, resumable), which a cpu preset cannot hold.
PRESET_HELP = {
    "smoke": "seconds (tests)",
    "cpu": "at most about 20 minutes on 2 cores",
    "full": "the cpu preset's experiment over the whole of it on a CPU (hours on 2 cores, resumable)",
    "cpu-long": "more than the cpu preset holds (hours to days on 2 cores): a background job over several "
    "sittings, resumable (scripts/long-job.sh); --snapshot, where offered, writes the result so far",
    "gpu": "the paper's protocol on one GPU: fp32, the paper's epochs, pruning depth and retraining recipe "
    "(hours; resumable, in calls of any length: scripts/gpu-analyses.sh)",
    "gpu-quick": "a shortened or bf16 variant of the gpu preset (the script's PRESET_NOTES say what it changes; "
    "the result's attrs record it)",
}


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
    add_executor_arg(p, "independent distillations and sweep points")
    return p


def _compute(compute: Compute, pre: dict[str, Any], ctx: Context, executor: str | None) -> xr.Dataset | int:
    """``compute(pre, ctx)`` with ``ctx.executor`` opened from the ``--executor`` spec; an exit status
    (with a one-line error) where it stops: runs busy elsewhere, a bad spec or argument, an interrupt."""
    os.environ.setdefault("TQDM_DISABLE", "1")
    _log_progress()
    from landscape.executors import ExecutorSpecError, SweepIncomplete, open_executor

    with contextlib.ExitStack() as stack:
        try:
            ctx.executor = stack.enter_context(open_executor(executor))
            return compute(pre, ctx)
        except (SweepIncomplete, ExecutorSpecError) as e:  # runs busy in another process, or a bad --executor
            print(f"analyses.{ctx.name}: error: {e}", file=sys.stderr)
            return 1
        except UsageError as e:
            print(f"analyses.{ctx.name}: error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(
                f"analyses.{ctx.name}: interrupted; finished epochs and work units are kept: run the same "
                "command again to resume",
                file=sys.stderr,
            )
            return 130


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
        stem = Path(a.results) / (result_stem(name, a.preset, presets) + suffix)
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
            name, a.preset, Path(a.runs), Path(a.results), a.root, device, tuple(x for x in a.only.split(",") if x),
            commit(), argv=tuple(sys.argv[1:] if argv is None else argv), snapshot=bool(getattr(a, "snapshot", False)),
            options=values,
        )  # fmt: skip
        ds = _compute(compute, pre, ctx, a.executor)
        if isinstance(ds, int):
            return ds
        if a.preset in notes:  # what this preset changes against the paper's protocol, in the result
            ds.attrs["preset_note"] = notes[a.preset]
        save(ds, nc)
        plot(open_result(nc), png)
        print(f"wrote {nc} and {png}")
        return 0

    if module == "__main__":  # python -m analyses.<name>: the script's module is complete here
        sys.exit(main())
    return main
