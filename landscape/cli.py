"""The ``rtt`` command line. Flags come from the config dataclasses; errors are one line, exit 1.

Subcommands: distill, info, lmc, instability, plane, lottery, locality, plot.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Callable, Sequence

COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int], str]] = {}


def command(name: str, help: str):
    """Register ``rtt <name>``: decorates a pair (add_args, run) given as a class with two static methods."""
    def deco(cls):
        COMMANDS[name] = (cls.add_args, cls.run, help)
        return cls
    return deco


# ---------------------------------------------------------------------------- info
@command("info", "print what a store holds")
class _Info:
    @staticmethod
    def add_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("store", help="path of an HDF5 store")
        p.add_argument("--json", action="store_true", help="print the provenance as JSON")

    @staticmethod
    def run(a: argparse.Namespace) -> int:
        from distill.store import Store

        s = Store(a.store)
        attrs = s.attrs
        if a.json:
            print(json.dumps({**attrs, "modules": s.names(), "results": s.results()}, indent=2, default=str))
            return 0
        print(f"store     {s.path}")
        for k in ("kind", "format_version", "toolkit_version", "torch_version", "created_at"):
            print(f"{k:<9} {attrs.get(k)}" if len(k) <= 9 else f"{k} {attrs.get(k)}")
        cfg = s.config
        if cfg:
            short = {k: cfg[k] for k in ("dataset", "subset", "arch", "init", "alpha", "lr", "epochs", "seed")
                     if k in cfg}
            print("config    " + ", ".join(f"{k}={v}" for k, v in short.items()))
        names = s.names()
        others = [n for n in names if not n.startswith("student/")]
        print(f"modules   {', '.join(others) or '-'}")
        print(f"students  epochs {', '.join(map(str, s.epochs)) or '-'}")
        for r in s.results():
            ds = s.read_result(r)
            dims = ", ".join(f"{d}={n}" for d, n in ds.sizes.items())
            print(f"result    {r}: {', '.join(ds.data_vars)} over ({dims})")
        return 0


def build_parser() -> argparse.ArgumentParser:
    _load_commands()
    parser = argparse.ArgumentParser(prog="rtt", description="random-teachers: distil students from random "
                                     "teachers and study where they land in the loss landscape.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (add_args, run, help) in COMMANDS.items():
        p = sub.add_parser(name, help=help, description=help)
        add_args(p)
        p.set_defaults(_run=run)
    return parser


def _load_commands() -> None:
    """Import the modules that register further subcommands (kept out of ``rtt info``'s path)."""
    import importlib

    for mod in ("landscape.commands",):
        importlib.import_module(mod)
    # run as ``python -m landscape.cli`` this module is __main__, and the commands registered
    # themselves with the imported ``landscape.cli``: take them from there
    registry = importlib.import_module("landscape.cli").COMMANDS
    for name, entry in registry.items():
        COMMANDS.setdefault(name, entry)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``rtt``: returns the exit status (0 ok, 1 error, 2 usage)."""
    from distill.config import RunError
    from distill.store import StoreError

    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except (StoreError, ValueError, FileNotFoundError, RunError) as e:
        print(f"rtt {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"rtt {args.command}: interrupted (completed checkpoints are kept)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
