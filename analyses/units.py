"""The analyses' work units (:mod:`landscape.executors`), each identified by its settings (:class:`Unit`).

A unit writes one netCDF file ``out`` whose attrs record the settings it was made with (``unit``: their
JSON) and their :func:`distill.provenance.config_hash` (``config_hash``). It is done when that file records
the same hash; a file that records other settings is refused in one line naming the fields that differ
(:func:`landscape.units.refuse`); a file that records none (a surface still being written, or a
file of an older version that the unit does not :meth:`~Unit.adopt`) is computed again, or resumed where
the work resumes itself.
"""

from __future__ import annotations

import json
from dataclasses import fields
from typing import Any, ClassVar

import xarray as xr

from analyses.context import UsageError
from analyses.results import open_result, save
from distill.provenance import config_hash, recipe_json
from landscape.units import differing, refuse

ADVICE = "pass the same settings to resume, or another --runs folder"


class Unit:
    """What the analyses' work units share. A subclass is a frozen dataclass with a result file ``out``
    (a path string) and optionally ``data`` (None: loaded where the unit runs); its other fields are its
    settings (:meth:`settings`), and it defines :meth:`run`."""

    out: str
    IGNORED: ClassVar[tuple[str, ...]] = ("out", "data")  # fields that leave the result unchanged

    def settings(self) -> dict[str, Any]:
        """The settings the result depends on: every field but :attr:`IGNORED`."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in self.IGNORED}  # type: ignore[arg-type]

    def key(self) -> str:
        """:meth:`settings` as canonical JSON (the result's ``unit`` attr)."""
        return recipe_json(self.settings())

    def recorded(self) -> tuple[str, dict[str, Any]] | None:
        """(config hash, settings) that ``out`` records; None without a readable file that records them,
        unless :meth:`adopt` takes the file (then this unit's own)."""
        try:
            ds = open_result(self.out)
        except (OSError, ValueError):
            return None
        if "unit" in ds.attrs:
            return str(ds.attrs.get("config_hash") or config_hash(ds.attrs["unit"])), json.loads(ds.attrs["unit"])
        return (config_hash(self.key()), json.loads(self.key())) if self.adopt(ds) else None

    def adopt(self, ds: xr.Dataset) -> bool:
        """Whether ``ds``, a file that records no settings (written by a version that kept none), is taken
        as this unit's result; never, unless a subclass says."""
        return False

    def done(self) -> bool:
        """Whether ``out`` holds the result of the same settings (the same config hash)."""
        held = self.recorded()
        return held is not None and held[0] == config_hash(self.key())

    def check(self) -> bool:
        """Whether ``out`` holds the result of the same settings; a UsageError (one line naming the
        settings that differ) when it records other settings."""
        held, wanted = self.recorded(), json.loads(self.key())
        if held is None or held[0] == config_hash(wanted):
            return held is not None
        try:
            refuse(self.out, differing(held[1], wanted), held[1], wanted, ADVICE)
        except ValueError as e:  # a one-line error of the script, not a traceback
            raise UsageError(str(e)) from None
        return False  # the hashes differ, the values compare equal as JSON: computed again

    def __call__(self) -> str:
        if not self.check():
            save(self.run().assign_attrs(unit=self.key(), config_hash=config_hash(self.key())), self.out)
        return self.out

    def run(self) -> xr.Dataset:
        """Compute the unit's result (written to ``out`` with the settings by the caller)."""
        raise NotImplementedError
