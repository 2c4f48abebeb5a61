"""Where distilled students sit in the loss landscape.

Every analysis takes modules or ``(store, epoch)`` references and returns a plain
``xarray.Dataset`` whose variables carry ``long_name`` and ``units`` and whose attrs
hold provenance (see ``docs`` in each function).
"""
from importlib import import_module
from typing import Any

_EXPORTS = {
    "linear_path": "paths", "barrier": "paths", "interpolate_state": "paths",
    "instability": "instability",
    "lottery": "lottery",
    "locality": "locality",
    "plane": "planes",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f"landscape.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'landscape' has no attribute {name!r}")
