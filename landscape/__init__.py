"""Where distilled students sit in the loss landscape.

Every analysis takes modules or ``(store, epoch)`` references and returns a plain
``xarray.Dataset`` whose variables carry ``long_name`` and ``units`` and whose attrs
hold provenance (see each function's docstring).
"""
# Imported eagerly: three submodules share their name with their main function, and a lazy
# lookup would hand out the submodule once it had been imported by another path.
from landscape.paths import barrier, interpolate_state, linear_path
from landscape.instability import instability
from landscape.lottery import lottery
from landscape.locality import locality
from landscape.planes import plane

__all__ = ["barrier", "instability", "interpolate_state", "linear_path", "locality", "lottery", "plane"]
