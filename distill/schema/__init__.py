"""The schema of every result: what each variable holds (`FIELDS`, `KIND_FIELDS`), what each kind
of result holds (`KINDS`), and `result_dataset`, which builds a result from plain arrays with the
``long_name`` and ``units`` of these tables. ``python -m distill.schema --markdown`` prints the
tables as the results section of ``docs/schemas.md``. Imports neither torch nor xarray until a
result is built."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from distill.schema.fields import FIELDS, KIND_FIELDS, Field
from distill.schema.kinds import KINDS, Kind

if TYPE_CHECKING:
    import xarray

__all__ = ["FIELDS", "KINDS", "KIND_FIELDS", "Field", "Kind", "field", "labels", "markdown", "plain", "result_dataset"]


def _kind(kind: str) -> Kind:
    if kind not in KINDS:
        raise KeyError(f"no result kind {kind!r}: add it to distill.schema.kinds.KINDS")
    return KINDS[kind]


def field(kind: str, name: str) -> Field:
    """What ``name`` holds in a result of ``kind``: the kind's own meaning, else the one of the kind
    it is ``like``, else the default; a KeyError naming the table to extend when there is none."""
    spec = _kind(kind)
    if name not in spec.variables + spec.coords:
        raise KeyError(f"{kind} results hold no {name!r}: add it to distill.schema.kinds.KINDS[{kind!r}]")
    for key in ((kind, name), (spec.like, name)):
        if key in KIND_FIELDS:
            return KIND_FIELDS[key]
    if name in FIELDS:
        return FIELDS[name]
    raise KeyError(f"{name!r} has no long_name and units: add it to distill.schema.fields.FIELDS")


def labels(kind: str, name: str, fill: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The attrs (``long_name``, and ``units`` unless a label) of ``name`` in ``kind``; ``{...}`` fields
    of the long_name are filled from ``fill``. Empty for a coordinate held without attrs."""
    f = field(kind, name)
    if not f.stored:
        return {}
    out = {"long_name": f.long_name.format(**fill) if fill else f.long_name}
    if f.units is not None:
        out["units"] = f.units
    return out


def plain(variables: Mapping[Any, Any]) -> dict[str, tuple[Any, Any]]:
    """``{name: (dims, values)}`` of a Dataset's ``data_vars`` or ``coords``, their attrs left out: to
    build a result from the variables of others."""
    return {str(k): (v.dims, v.data) for k, v in variables.items()}


def result_dataset(
    kind: str,
    data_vars: Mapping[str, Any],
    coords: Mapping[str, Any] | None = None,
    attrs: Mapping[str, Any] | None = None,
    *,
    fill: Mapping[str, Any] | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> xarray.Dataset:
    """A result of ``kind`` (a key of `KINDS`).

    Args:
        data_vars: ``{name: (dims, values)}``, ``(dims, values, attrs)`` or a DataArray, each
            labelled with the ``long_name`` and ``units`` of the tables. The attrs of a tuple come
            after the table's (an explicit label where it depends on the run, or any other attr); a
            DataArray keeps its other attrs, and the coordinates inside it keep theirs.
        coords: the coordinates, given and labelled as ``data_vars``.
        attrs: the result's attrs, as given.
        fill: values of the ``{...}`` fields of the long_names (e.g. ``trace_method``).
        provenance: keywords of `distill.provenance.stamp` (``recipe``, ``kind``, ``device``,
            ``precision``): the attrs are stamped when given.
    """
    import xarray as xr

    _kind(kind)

    def labelled(name: str, value: Any) -> Any:
        table = labels(kind, name)
        if isinstance(value, xr.DataArray):
            merged = {**value.attrs, **table}
        else:
            merged = {**table, **(value[2] if isinstance(value, tuple) and len(value) > 2 else {})}
        if "{" in str(merged.get("long_name", "")):
            merged["long_name"] = merged["long_name"].format(**(fill or {}))
        if isinstance(value, xr.DataArray):
            out = value.copy(deep=False)
            out.attrs = merged
            return out
        if isinstance(value, tuple):
            return (value[0], value[1], merged)
        return (name, value, merged) if merged else value

    ds = xr.Dataset(
        {k: labelled(k, v) for k, v in data_vars.items()},
        coords={k: labelled(k, v) for k, v in (coords or {}).items()},
        attrs=dict(attrs or {}),
    )
    if provenance is not None:
        from distill.provenance import stamp

        stamp(ds.attrs, **provenance)
    return ds


def markdown() -> str:
    """The results section of ``docs/schemas.md``: every kind of result, then every name's meaning."""
    from distill.schema.doc import render

    return render()
