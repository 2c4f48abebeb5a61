"""Plugins: user code that registers models (`distill.register_model`) and probes
(`distill.register_probe`) so that ``rtt`` and the library can use them by name.

A plugin is an importable module. Two ways to reach ``rtt``:

- ``rtt --plugin my_package.models distill --arch my_net ...`` imports the module first;
- an installed distribution declares an entry point in the ``random_teachers.plugins`` group,
  e.g. in its ``pyproject.toml``:

  ```toml
  [project.entry-points."random_teachers.plugins"]
  my_models = "my_package.models"
  ```

  Every such entry point is imported before a command's flags are built, and by
  `distill.build_model` / the probes when they meet a name they do not know. An entry
  point may also name a callable (``"my_package:register"``); it is called once, without
  arguments.

Loading is idempotent: each module or entry point is imported once per process.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from importlib import metadata

ENTRY_POINT_GROUP = "random_teachers.plugins"

_loaded: set[str] = set()
_entry_points_loaded = False


class PluginError(ValueError):
    """A plugin module or entry point could not be imported."""


def load_plugin(module: str) -> None:
    """Import plugin ``module`` (a dotted module name) once; a failure is a one-line PluginError."""
    if module in _loaded:
        return
    try:
        importlib.import_module(module)
    except Exception as e:  # noqa: BLE001 - any failure inside the plugin is reported on one line
        raise PluginError(
            f"plugin {module!r} could not be imported ({type(e).__name__}: {e}): check the "
            "module name and that it is on the Python path (PYTHONPATH or pip install)"
        ) from None
    _loaded.add(module)


def load_entry_points() -> list[str]:
    """Import every ``random_teachers.plugins`` entry point once; returns their names."""
    global _entry_points_loaded
    eps = list(metadata.entry_points(group=ENTRY_POINT_GROUP))
    if _entry_points_loaded:
        return [ep.name for ep in eps]
    _entry_points_loaded = True
    for ep in eps:
        key = f"entry-point:{ep.value}"
        if key in _loaded:
            continue
        try:
            obj = ep.load()
            if callable(obj):  # a module is not callable
                obj()
        except Exception as e:  # noqa: BLE001
            raise PluginError(
                f"plugin entry point {ep.name!r} = {ep.value!r} (group {ENTRY_POINT_GROUP}) failed "
                f"({type(e).__name__}: {e}): fix or uninstall the package that declares it"
            ) from None
        _loaded.add(key)
    return [ep.name for ep in eps]


def load_plugins(modules: Iterable[str] = (), entry_points: bool = True) -> None:
    """Load the installed entry-point plugins (when ``entry_points``) and then ``modules``."""
    if entry_points:
        load_entry_points()
    for m in modules:
        load_plugin(m)
