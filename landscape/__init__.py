"""Where distilled students sit in the loss landscape.

Every analysis takes modules or ``(store, epoch)`` references and returns a plain
``xarray.Dataset`` whose variables carry ``long_name`` and ``units`` and whose attrs
hold provenance (see each function's docstring).

The functions are imported on first use, so ``import landscape`` (and the ``rtt`` command
line) does not pay for torch and xarray until an analysis runs.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from distill._lazy import lazy_exports

_EXPORTS = {
    "barrier": "paths",
    "interpolate_state": "paths",
    "linear_path": "paths",
    "instability": "instability",
    "lottery": "lottery",
    "locality": "locality",
    "plane": "planes",
    "align": "align",
    "surface": "surface",
    "hessian": "hessian",
    "hessian_along_path": "hessian",
    "hessian_over_levels": "hessian",
}

__all__ = sorted(_EXPORTS)


class _Package(types.ModuleType):
    """``landscape`` itself. Six submodules share their name with their main function
    (``instability``, ``lottery``, ``locality``, ``align``, ``surface``, ``hessian``); importing such a
    submodule makes Python bind it
    as an attribute of the package, which would hide the function. The function wins."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _EXPORTS and isinstance(value, types.ModuleType) and hasattr(value, name):
            value = getattr(value, name)
        super().__setattr__(name, value)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
sys.modules[__name__].__class__ = _Package
