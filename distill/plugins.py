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

Stores record, beside every saved module, the plugin module that registered its architecture
(`distill.models.model_plugin`). Loading a store never imports a module because the file names
it: `require_model` imports only the installed entry points; a recorded module that is not one
of them must be named by the user (``--plugin MODULE``, or `load_plugin` in Python), or loading
stops with a one-line PluginError that names it and the fix.
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Iterable
from importlib import metadata

ENTRY_POINT_GROUP = "random_teachers.plugins"

_loaded: set[str] = set()
_entry_points_loaded = False


# a dotted module name as a store may record it (anything else is a damaged or crafted attribute)
MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


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


def installed_plugins() -> dict[str, str]:
    """Modules of the installed ``random_teachers.plugins`` entry points: module -> entry-point
    name (read from the package metadata; nothing is imported)."""
    return {ep.value.split(":", 1)[0].strip(): ep.name for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def how_to_provide(module: str) -> str:
    """The fix for a missing plugin ``module``, as the end of a one-line message."""
    return (
        f"pass --plugin {module} to rtt (in Python: distill.plugins.load_plugin({module!r})) or install "
        f"the package that provides it as a {ENTRY_POINT_GROUP} entry point"
    )


def require_model(arch: str, module: str, where: str = "") -> None:
    """Make sure model ``arch``, recorded as registered by plugin ``module``, is registered.

    When it is not yet: the installed entry points are loaded if ``module`` is one of them; a
    module the user did not name (`load_plugin`, ``--plugin``) and no installed package provides
    is never imported: a one-line PluginError names it and the fix."""
    models = importlib.import_module("distill.models")
    prefix = f"{where}: " if where else ""
    if arch in models.list_models():
        return
    if not isinstance(module, str) or len(module) > 200 or not MODULE_NAME.match(module):
        raise PluginError(f"{prefix}model {arch!r} records an invalid plugin module name {str(module)[:80]!r}")
    if module == "__main__":
        raise PluginError(
            f"{prefix}model {arch!r} was registered by a script (__main__), which cannot be imported: "
            "register it again before loading, or move it into a module and load that as a plugin"
        )
    if module in installed_plugins():
        load_entry_points()
    elif module not in _loaded and module not in sys.modules:
        raise PluginError(
            f"{prefix}model {arch!r} needs plugin module {module!r}, which is not loaded: " + how_to_provide(module)
        )
    if arch not in models.list_models():
        raise PluginError(
            f"{prefix}model {arch!r} needs plugin module {module!r}, which is loaded but registers no "
            f"model {arch!r}: check its version, or " + how_to_provide(module)
        )
