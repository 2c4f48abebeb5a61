"""The ``rtt`` command line. Flags come from the config dataclasses; errors are one line: exit 1 for
a run that cannot go on, exit 2 for a usage error (with the closest valid name or flag suggested).

Commands register themselves in the modules listed in `COMMAND_MODULES`, one module per group
(``training``: distill, instability, lottery, locality; ``evaluation``: lmc, plane, align, surface,
hessian, plot; ``stores``: info, pack, verify; shared flags and output in ``common``). A command
is one `declare` call from its config class (`landscape.configs`), or a class decorated with
`command`. Those modules must stay light: they import argparse and the config classes only, and
every heavy import (torch, xarray, the analyses) happens inside ``run``, so that ``rtt -h``,
``rtt COMMAND -h``, ``rtt info`` and usage errors answer at once. ``tests/test_cli_startup.py``
checks that torch stays unimported for those.

Only the chosen command's flags are built. Plugins (`distill.plugins`: the
``random_teachers.plugins`` entry points and ``--plugin MODULE``, which may be given anywhere on
the command line and repeated) are loaded before a command's flags are built, so that their
models and probes appear among the choices of ``rtt distill -h``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

COMMAND_MODULES: tuple[str, ...] = ("landscape.cli.training", "landscape.cli.evaluation", "landscape.cli.stores")

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
    keep: tuple[str, ...] | None = None,
    defaults: dict[str, Any] | None = None,
    flags: dict[str, str] | None = None,
) -> None:
    """Register ``rtt <name>`` from a config class (`distill.options.Config`): ``args(parser)`` adds what
    is not a setting (checkpoints, output files, the executor), then one flag per field of ``config``
    (those in ``keep`` when given, minus ``skip``), defaulting to the command's ``defaults`` where
    they differ from the config's and named as in ``flags`` (field -> flag) where not ``--field``;
    ``run(config, namespace)`` runs the command and returns its exit status. Keep heavy imports
    inside ``run``."""
    from distill.options import from_args
    from landscape.cli.common import add_settings

    def add(p: argparse.ArgumentParser) -> None:
        if args is not None:
            args(p)
        if config is not None:
            add_settings(p, config, keep=keep, skip=skip, defaults=defaults, flags=flags)

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


def _errors() -> tuple[type[BaseException], ...]:
    """Exceptions that are the user's to fix: printed as one line, exit 1."""
    from distill.config import RunError

    errors: list[type[BaseException]] = [ValueError, OSError, RunError]  # OSError: missing files, permissions
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
