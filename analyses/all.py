"""Every experiment of the paper, one after the other: ``python -m analyses.all --preset cpu``.

Each script writes ``results/<name>.nc`` and ``.png``; their stores under ``runs/`` make a second call
resume where the first stopped (finished scripts only re-read their caches). A failing script is
reported and the others still run; the exit status is 1 when any failed. ``--preset full`` runs the
scripts that offer it (``tables``, ``probe_spread``: hours on 2 cores) and names the others it skips.

    python -m analyses.all --preset smoke|cpu|full|gpu [--only tables,locality] [--results DIR] [--runs DIR]
                           [--root DIR] [--executor SPEC]
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback

from analyses.common import PRESET_HELP, PRESET_NAMES
from landscape.cli.common import add_executor_arg

SCRIPTS = (
    "table1",
    "probing_curves",
    "locality",
    "data_dependence",
    "transfer",
    "planes",
    "lottery",
    "instability",
    "head_dim",
    "surface",
    "hessian",
    "align_barriers",
    "dynamics",
    "tables",
    "probe_spread",
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m analyses.all", description=" ".join(__doc__.split("\n\n")[0].split()), allow_abbrev=False
    )
    p.add_argument(
        "--preset", choices=PRESET_NAMES, default="cpu", help="; ".join(f"{n}: {h}" for n, h in PRESET_HELP.items())
    )
    p.add_argument("--only", default="", help=f"comma-separated subset of {', '.join(SCRIPTS)}")
    for flag, default in (("--results", "results"), ("--runs", "runs")):
        p.add_argument(flag, default=default)
    p.add_argument("--root", default=None, help="CIFAR-10 location (default: the standard places)")
    p.add_argument("--overwrite", action="store_true", help="passed to every script: replace committed results")
    add_executor_arg(p, "independent runs of every script")
    a = p.parse_args(argv)
    names = [n for n in a.only.split(",") if n] or list(SCRIPTS)
    unknown = [n for n in names if n not in SCRIPTS]
    if unknown:
        print(f"analyses.all: error: unknown script {unknown[0]!r}: choose from {', '.join(SCRIPTS)}", file=sys.stderr)
        return 2
    offering = [n for n in SCRIPTS if a.preset in importlib.import_module(f"analyses.{n}").PRESETS]
    if not set(names) & set(offering):
        print(
            f"analyses.all: error: no script of {', '.join(names)} has a {a.preset} preset: "
            f"it is offered by {', '.join(offering)}",
            file=sys.stderr,
        )
        return 2
    status = {}
    for name in names:
        if name not in offering:
            print(f"=== analyses.{name}: skipped (it has no {a.preset} preset)", flush=True)
            continue
        module = importlib.import_module(f"analyses.{name}")
        t0 = time.time()
        args = ["--preset", a.preset, "--results", a.results, "--runs", a.runs]
        args += (["--root", a.root] if a.root else []) + (["--executor", a.executor] if a.executor else [])
        args += ["--overwrite"] if a.overwrite else []
        print(f"=== analyses.{name} {' '.join(args)}", flush=True)
        try:
            rc = module.main(args)
        except KeyboardInterrupt:
            print("analyses.all: interrupted; run the same command again to resume", file=sys.stderr)
            return 130
        except Exception:  # noqa: BLE001 - report and go on with the other experiments
            traceback.print_exc()
            rc = 1
        status[name] = (rc, time.time() - t0)
        print(f"=== analyses.{name}: {'ok' if rc == 0 else 'FAILED'} in {time.time() - t0:.0f} s", flush=True)
    print("\n".join(f"{n:<16} {'ok' if rc == 0 else 'FAILED'} {s:8.0f} s" for n, (rc, s) in status.items()))
    return 0 if all(rc == 0 for rc, _ in status.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
