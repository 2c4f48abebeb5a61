"""What loading accepts: bounded architecture specs, training-state metadata, state dicts that
match their model, and result files without links (one-line StoreError otherwise)."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import h5py
import torch
from torch import nn

from distill.store.errors import StoreError, first_line
from distill.store.info import check_hdf5_links

if TYPE_CHECKING:
    import xarray

MAX_SPEC_INT = 1 << 24  # no architecture field (width, classes, out_dim...) is larger


def decode_result(blob: bytes, where: str) -> xarray.Dataset:
    """An in-memory xarray Dataset from the bytes of a netCDF file (refused when it holds links
    or external storage, which would read data from outside the file)."""
    import xarray as xr

    try:
        with h5py.File(io.BytesIO(blob), "r", locking=False) as f:
            check_hdf5_links(f, where)
        with xr.open_dataset(io.BytesIO(blob), engine="h5netcdf") as ds:
            out = ds.load()
    except StoreError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure to parse means a damaged file
        raise StoreError(f"{where}: unreadable result ({first_line(e)}): damaged; run 'rtt verify'") from None
    out.attrs.pop("complete", None)
    return out


MAX_EPOCH = 10**7


def check_train_meta(meta: Any, where: str) -> None:
    """One-line StoreError unless ``meta`` is training-state metadata as training writes it: an
    ``epoch`` (int in [0, 10**7]) and, when present, ``param_groups`` (a list of objects whose
    numbers are finite, and whose ``lr`` is a number of at least 0)."""
    if not isinstance(meta, dict):
        raise StoreError(f"{where}: training-state metadata is a {type(meta).__name__}, not an object: damaged file")
    epoch = meta.get("epoch")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch <= MAX_EPOCH:
        raise StoreError(
            f"{where}: training-state epoch {epoch!r} is not an integer in [0, {MAX_EPOCH}]: damaged or crafted "
            "file; roll back to an earlier commit or start a new store"
        )
    if "param_groups" not in meta:  # a state saved through the API without an optimiser
        return
    groups = meta["param_groups"]
    if not isinstance(groups, list) or not groups or len(groups) > 10_000:
        raise StoreError(f"{where}: training-state param_groups is not a non-empty list: damaged or crafted file")
    for i, g in enumerate(groups):
        if not isinstance(g, dict):
            raise StoreError(f"{where}: training-state param_groups[{i}] is not an object: damaged or crafted file")
        lr = g.get("lr")
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr < 0:
            raise StoreError(
                f"{where}: training-state param_groups[{i}] has lr={lr!r}, not a finite number >= 0: "
                "damaged or crafted file"
            )
        for k, v in g.items():
            vals = v if isinstance(v, list) else [v]
            for x in vals:
                if isinstance(x, float) and not math.isfinite(x):
                    raise StoreError(
                        f"{where}: training-state param_groups[{i}] has {k}={v!r}, not finite: damaged or crafted file"
                    )


def _check_spec(v: Any, where: str, field: str = "spec", depth: int = 0) -> None:
    """Bound every value of an architecture spec, so a crafted file cannot ask for absurd memory."""
    if depth > 6:
        raise StoreError(f"{where}: architecture spec nests too deeply (crafted or damaged file)")
    if isinstance(v, bool) or v is None:
        return
    if isinstance(v, int):
        if not -MAX_SPEC_INT <= v <= MAX_SPEC_INT:
            raise StoreError(
                f"{where}: architecture field {field}={v} is out of bounds (|value| <= {MAX_SPEC_INT}): "
                "crafted or damaged file"
            )
    elif isinstance(v, float):
        if not math.isfinite(v) or abs(v) > MAX_SPEC_INT:
            raise StoreError(f"{where}: architecture field {field}={v} is out of bounds: crafted or damaged file")
    elif isinstance(v, str):
        if len(v) > 200:
            raise StoreError(f"{where}: architecture field {field} is a {len(v)}-character string: crafted file")
    elif isinstance(v, list):
        if len(v) > 1000:
            raise StoreError(f"{where}: architecture field {field} lists {len(v)} values: crafted file")
        for i, x in enumerate(v):
            _check_spec(x, where, f"{field}[{i}]", depth + 1)
    elif isinstance(v, dict):
        for k, x in v.items():
            _check_spec(x, where, f"{k}", depth + 1)
    else:
        raise StoreError(f"{where}: architecture field {field} has type {type(v).__name__}: damaged file")


def build_checked(spec_json: Any, state: Mapping[str, torch.Tensor], where: str, *, plugin: Any = None) -> nn.Module:
    """Build the architecture of ``spec_json`` after bounding its fields and checking, on the
    meta device (no memory), that its parameters are no more than the tensors actually stored.
    ``plugin``: the module recorded as registering the architecture (see
    `distill.plugins.require_model`; it is never imported unless installed or loaded by the user)."""
    from distill.models import build_model
    from distill.plugins import MODULE_NAME, require_model

    try:
        spec = json.loads(spec_json)
        if not isinstance(spec, dict):
            raise TypeError("not a JSON object")
    except (TypeError, ValueError) as e:
        raise StoreError(f"{where}: unusable architecture spec ({e}): damaged or foreign store") from None
    _check_spec(spec, where)
    if plugin is not None:
        if not isinstance(plugin, str) or len(plugin) > 200 or not MODULE_NAME.match(plugin):
            raise StoreError(f"{where}: its plugin attribute is not a module name (damaged or crafted file)")
        require_model(str(spec.get("arch", "")), plugin, where)
    try:
        with torch.device("meta"):
            meta = build_model(**spec)
    except (KeyError, ValueError, TypeError) as e:
        raise StoreError(f"{where}: unusable architecture spec ({first_line(e)})") from None
    except Exception:  # noqa: BLE001 - an architecture that cannot be built on meta is checked after building
        meta = None
    if meta is not None:  # keys, shapes and dtypes checked before any memory is allocated
        check_state(meta, state, where, allow_nonfinite=True)
    try:
        return build_model(**spec)
    except (KeyError, ValueError, TypeError) as e:
        raise StoreError(f"{where}: unusable architecture spec ({first_line(e)})") from None


def check_state(
    model: nn.Module, state: Mapping[str, torch.Tensor], where: str = "state", *, allow_nonfinite: bool = False
) -> None:
    """One-line StoreError unless ``state`` has exactly ``model``'s keys, shapes and dtypes (and, unless
    ``allow_nonfinite``, only finite floating values)."""
    own = model.state_dict()
    arch = getattr(model, "spec", {}).get("arch", type(model).__name__)
    for key, t in own.items():
        if key not in state:
            raise StoreError(f"{where}: missing key '{key}' (architecture mismatch: the saved model is not a {arch})")
        s = state[key]
        if tuple(s.shape) != tuple(t.shape):
            raise StoreError(
                f"{where}: key '{key}' has shape {tuple(s.shape)}, the model expects "
                f"{tuple(t.shape)} (architecture mismatch)"
            )
        if s.dtype != t.dtype:
            raise StoreError(
                f"{where}: key '{key}' is stored as {str(s.dtype).removeprefix('torch.')}, the model "
                f"expects {str(t.dtype).removeprefix('torch.')} (dtype mismatch)"
            )
        if not allow_nonfinite and s.is_floating_point() and not bool(torch.isfinite(s).all()):
            raise StoreError(
                f"{where}: key '{key}' holds NaN or infinite values: pass allow_nonfinite=True to load it anyway"
            )
    extra = sorted(set(state) - set(own))
    if extra:
        raise StoreError(f"{where}: unexpected key '{extra[0]}' (architecture mismatch)")


def load_into(
    model: nn.Module, state: Mapping[str, torch.Tensor], where: str = "state", *, allow_nonfinite: bool = False
) -> nn.Module:
    """Copy ``state`` into ``model`` after `check_state`; one-line StoreError otherwise."""
    check_state(model, state, where, allow_nonfinite=allow_nonfinite)
    model.load_state_dict(dict(state))
    return model
