"""The ``rtt`` command line. Flags come from the config dataclasses; errors are one line: exit 1 for
a run that cannot go on, exit 2 for a usage error (with the closest valid name or flag suggested).

Commands register themselves with `command` in the modules listed in
`COMMAND_MODULES` (today ``landscape.commands``); adding a command is one decorated class
with ``add_args(parser)`` and ``run(args) -> int``. Those modules must stay light: they import
argparse and `distill.config` only, and every heavy import (torch, xarray, the analyses)
happens inside ``run``, so that ``rtt -h``, ``rtt COMMAND -h``, ``rtt info`` and usage errors
answer at once. ``tests/test_cli_startup.py`` checks that torch stays unimported for those.

Only the chosen command's flags are built. Plugins (`distill.plugins`: the
``random_teachers.plugins`` entry points and ``--plugin MODULE``, which may be given anywhere on
the command line and repeated) are loaded before a command's flags are built, so that their
models and probes appear among the choices of ``rtt distill -h``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

COMMAND_MODULES: tuple[str, ...] = ("landscape.commands",)

# name -> (add_args, run, one-line help); filled by @command
COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int], str]] = {}

# commands whose flags do not depend on plugins (their -h and usage errors never load one)
_NO_PLUGINS = {"info", "plot"}


def command(name: str, help: str) -> Callable[[type], type]:
    """Register ``rtt <name>``: decorates a class with two static methods, ``add_args(parser)``
    (the flags) and ``run(args) -> int`` (the exit status; heavy imports belong inside it)."""

    def deco(cls: type) -> type:
        COMMANDS[name] = (cls.add_args, cls.run, help)  # type: ignore[attr-defined]
        return cls

    return deco


def declare(
    name: str,
    help: str,
    config: type | None,
    run: Callable[[Any, argparse.Namespace], int],
    args: Callable[[argparse.ArgumentParser], None] | None = None,
    skip: tuple[str, ...] = (),
) -> None:
    """Register ``rtt <name>`` from a config class (`distill.options.Config`): ``args(parser)`` adds what
    is not a setting (checkpoints, output files, the executor), then one flag per field of ``config``
    (minus ``skip``); ``run(config, namespace)`` runs the command and returns its exit status. Keep
    heavy imports inside ``run``."""
    from distill.options import add_arguments, from_args

    def add(p: argparse.ArgumentParser) -> None:
        if args is not None:
            args(p)
        if config is not None:
            add_arguments(p, config, skip=skip)

    def go(a: argparse.Namespace) -> int:
        return run(from_args(config, a) if config is not None else None, a)

    COMMANDS[name] = (add, go, help)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line usage errors (the message, the closest valid name, where to look; no
    usage dump) and no abbreviated flags (``--epoch`` is not taken for ``--epochs``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {_with_suggestion(message)} (see '{self.prog} -h')\n")

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:  # type: ignore[override]
        """As argparse, but flags a command does not know are reported by that command's parser,
        with the closest flag it has."""
        ns, extras = self.parse_known_args(args, namespace)
        if extras:
            target: ArgumentParser = self
            for action in self._actions:
                if isinstance(action, argparse._SubParsersAction):
                    chosen = action.choices.get(getattr(ns, action.dest, None) or "")
                    if isinstance(chosen, ArgumentParser):
                        target = chosen
            flags = [a for a in extras if a.startswith("-")]
            hint = ""
            if flags:
                from distill.registry import suggest

                hint = suggest(flags[0].split("=", 1)[0], list(target._option_string_actions))
            target.error(f"unrecognized arguments: {' '.join(extras)}{hint}")
        return ns


def _with_suggestion(message: str) -> str:
    """argparse's "invalid choice: 'x' (choose from ...)" with the closest choice named."""
    import re

    m = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
    if m is None:
        return message
    from distill.registry import suggest

    choices = re.findall(r"'([^']*)'", m.group(2)) or [c.strip() for c in m.group(2).split(",")]
    return message + suggest(m.group(1), choices)


class HelpFormatter(argparse.HelpFormatter):
    """Help with the metavar shown once (``-o, --out OUT``) and a little more room for the text."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32, width=110)


# ---------------------------------------------------------------------------- info
@command("info", "print what a store holds: provenance, modules, saved epochs, results")
class _Info:
    @staticmethod
    def add_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("store", help="path of a store (a .rts folder, or a packed .h5 file)")
        p.add_argument("--json", action="store_true", help="print the provenance as JSON (default: a table)")

    @staticmethod
    def run(a: argparse.Namespace) -> int:
        from distill.store.info import config_of, describe  # h5py only: answers without importing torch

        d = describe(a.store)
        attrs, names = d["attrs"], d["names"]
        if a.json:
            nested = {k: _json_value(v) for k, v in attrs.items()}
            print(
                json.dumps(
                    {**nested, "modules": names["modules"], "results": names["results"], "plugins": d["plugins"]},
                    indent=2,
                    default=str,
                )
            )
            return 0
        print(f"store     {d['path']}")
        for k in ("kind", "format_version", "toolkit_version", "torch_version", "created_at"):
            print(f"{k:<9} {attrs.get(k)}" if len(k) <= 9 else f"{k} {attrs.get(k)}")
        cfg = config_of(attrs, d["path"])
        if cfg:
            short = {
                k: cfg[k] for k in ("dataset", "subset", "arch", "init", "alpha", "lr", "epochs", "seed") if k in cfg
            }
            print("config    " + ", ".join(f"{k}={v}" for k, v in short.items()))
        others = [n for n in names["modules"] if not n.startswith("student/")]
        print(f"modules   {', '.join(others) or '-'}")
        print(f"students  epochs {', '.join(map(str, d['epochs'])) or '-'}")
        for line in _plugin_lines(d["plugins"]):
            print(line)
        for r, (data_vars, sizes) in d["results"].items():
            dims = ", ".join(f"{k}={n}" for k, n in sizes.items())
            print(f"result    {r}: {', '.join(data_vars)} over ({dims})")
        return 0


def _plugin_lines(plugins: dict[str, list[str]]) -> list[str]:
    """``rtt info``'s lines on the plugins a store's models need: installed or how to provide them
    (read from package metadata; no plugin is imported)."""
    if not plugins:
        return []
    from distill.plugins import how_to_provide, installed_plugins

    installed = installed_plugins()
    out = []
    for module, users in sorted(plugins.items()):
        state = (
            f"installed (entry point {installed[module]!r})"
            if module in installed
            else f"not installed: {how_to_provide(module)}"
        )
        out.append(f"plugin    {module} for {len(users)} module(s): {state}")
    return out


def _json_value(value: Any) -> Any:
    """A store attribute for ``rtt info --json``: attributes that hold JSON (config, seeds, ...)
    become nested objects; everything else stays as it is."""
    if isinstance(value, str) and value[:1] in ("{", "["):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


# ---------------------------------------------------------------------------- parser
def _plugin_modules(argv: Sequence[str]) -> list[str]:
    """The values of every ``--plugin MODULE`` / ``--plugin=MODULE`` in ``argv``."""
    out = []
    for i, arg in enumerate(argv):
        if arg == "--plugin" and i + 1 < len(argv):
            out.append(argv[i + 1])
        elif arg.startswith("--plugin="):
            out.append(arg.split("=", 1)[1])
    return out


def _chosen_command(argv: Sequence[str]) -> str | None:
    """The first argument that names a command (skipping ``--plugin MODULE``)."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--plugin":
            skip = True
        elif not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


def _add_plugin_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE first (it may register models and probes); repeatable. Installed "
        "packages are found through the 'random_teachers.plugins' entry-point group",
    )


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The ``rtt`` parser. Flags are built for the command named in ``argv`` only (all commands
    when ``argv`` is None), after loading the plugins that command may need."""
    _load_commands()
    chosen = None if argv is None else _chosen_command(argv)
    wanted = set(COMMANDS) if argv is None else {chosen} - {None}
    if wanted - _NO_PLUGINS:
        from distill.plugins import load_plugins

        load_plugins(_plugin_modules(argv or ()))
    parser = ArgumentParser(
        prog="rtt",
        formatter_class=HelpFormatter,
        description="random-teachers: distil students from random teachers and study where "
        "they land in the loss landscape. 'rtt COMMAND -h' lists a command's flags.",
    )
    _add_plugin_flag(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=ArgumentParser)
    for name, (add_args, run, help) in COMMANDS.items():
        p = sub.add_parser(name, help=help, description=help, formatter_class=HelpFormatter)
        if name in wanted:
            add_args(p)
            if name not in _NO_PLUGINS:
                _add_plugin_flag(p)
        p.set_defaults(_run=run)
    return parser


def _load_commands() -> None:
    """Import the modules that register commands (each must stay free of heavy imports)."""
    import importlib

    for mod in COMMAND_MODULES:
        importlib.import_module(mod)
    # run as ``python -m landscape.cli`` this module is __main__, and the commands registered
    # themselves with the imported ``landscape.cli``: take them from there
    registry = importlib.import_module("landscape.cli").COMMANDS
    for name, entry in registry.items():
        COMMANDS.setdefault(name, entry)


def _errors() -> tuple[type[BaseException], ...]:
    """Exceptions that are the user's to fix: printed as one line, exit 1."""
    from distill.config import RunError

    errors: list[type[BaseException]] = [
        ValueError,
        FileNotFoundError,
        NotADirectoryError,
        IsADirectoryError,
        PermissionError,
        OSError,
        RunError,
    ]
    store = sys.modules.get("distill.store")  # imported by whichever command used a store
    if store is not None:
        errors.append(store.StoreError)
    return tuple(errors)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``rtt``: returns the exit status (0 ok, 1 error, 2 usage, 130 interrupted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        try:
            args = build_parser(argv).parse_args(argv)
        except SystemExit as e:  # -h, or a usage error already printed on one line
            return int(e.code or 0) if not isinstance(e.code, str) else 2
    except _errors() as e:  # a plugin that cannot be imported
        print(f"rtt: error: {e}", file=sys.stderr)
        return 1
    import logging

    # per-epoch progress lines (distill.progress) and sweep notes reach stderr
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    try:
        return int(args._run(args) or 0)
    except _errors() as e:
        print(f"rtt {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"rtt {args.command}: interrupted (completed checkpoints are kept)", file=sys.stderr)
        return 130


def _run_module(*_: Any) -> None:  # pragma: no cover - ``python -m landscape.cli``
    sys.exit(main())


if __name__ == "__main__":
    _run_module()
