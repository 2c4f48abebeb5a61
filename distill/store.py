"""The HDF5 checkpoint store: one file per run, tensors by state_dict key, nothing pickled.

Layout of a store file::

    /                      attrs: format, format_version, toolkit_version, torch_version,
                                  created_at, kind, config (JSON), seeds (JSON)
    /modules/<name>/<key>  one dataset per state_dict entry; group attrs: spec (JSON, the
                           arguments of ``distill.build_model``), complete=1 (written last),
                           plus caller attrs (epoch, step, ...). Names: "teacher",
                           "student/00010", "children/0/00020", ...
    /masks/<name>/<key>    uint8 pruning masks belonging to /modules/<name>
    /state/<name>/...      resumable training state (optimiser tensors; JSON in attrs)
    /results/<name>        xarray Datasets as netCDF groups (h5netcdf)

Durability: every write reserves file space, opens the file, writes the group under a
temporary name, marks it complete, moves it into place and closes the file; readers open the file per access,
list only groups with a completion mark, and retry when they catch a writer mid-update.
A process killed mid-write loses the object in flight; HDF5 updates group tables in place,
so a kill that lands inside a metadata flush can, rarely, also damage a neighbouring link
(measured in the kill test; see the README's store section). Reading builds the model from the JSON spec and copies
arrays in: no code from the file is run.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

import h5py
import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    import xarray

FORMAT = "random-teachers-store"
FORMAT_VERSION = 1
_TMP = "_partial"


class StoreError(Exception):
    """A store is missing, corrupt, foreign or lacks what was asked of it."""


class _Missing(StoreError):
    """An object is absent or not complete; a reader racing a writer may see this briefly."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _to_numpy(t: torch.Tensor) -> tuple[np.ndarray, str]:
    t = t.detach().cpu()
    dtype = str(t.dtype).removeprefix("torch.")
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy(), dtype
    return t.numpy(), dtype


def _from_numpy(a: np.ndarray, dtype: str) -> torch.Tensor:
    t = torch.from_numpy(np.asarray(a, order="C"))  # ascontiguousarray would make 0-d arrays 1-d
    if dtype == "bfloat16":
        return t.view(torch.bfloat16)
    return t


def _plain(v: Any) -> Any:
    """Attr values HDF5/netCDF accept: str, int, float; everything else as JSON."""
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, (str, int, float, np.integer, np.floating)):
        return v
    return json.dumps(v)


def _attr_value(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.generic):
        return v.item()
    return v


class Store:
    """A run's checkpoints and results in one HDF5 file.

    ``Store(path)`` opens an existing store for reading (``mode="r"``) or for appending
    (``mode="a"``); ``Store.create(path, config)`` makes a new one. The file is opened
    per operation, so a Store object holds no file handle and may be shared freely.
    """

    def __init__(self, path: str | Path, mode: str = "r"):
        if mode not in ("r", "a"):
            raise ValueError(f"Store mode must be 'r' or 'a', got {mode!r}; use Store.create() for a new store")
        self.path = Path(path)
        self.mode = mode
        self._check()

    # ------------------------------------------------------------------ opening
    @classmethod
    def create(cls, path: str | Path, config: Mapping[str, Any] | None = None, *, kind: str = "distill",
               seeds: Mapping[str, int] | None = None, overwrite: bool = False) -> "Store":
        """Create a new store at ``path`` holding ``config`` (JSON-able) as provenance."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise StoreError(f"{path} already exists: open it with Store(path, 'a') or pass overwrite=True")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".{uuid.uuid4().hex[:8]}.tmp")
        # default free-space handling: a persisted free-space map that a killed writer left stale
        # could hand out space that live objects still use
        with h5py.File(tmp, "w", locking=False) as f:
            f.attrs.update({
                "format": FORMAT, "format_version": FORMAT_VERSION,
                "toolkit_version": _toolkit_version(), "torch_version": str(torch.__version__),
                "created_at": _now(), "kind": kind,
                "config": json.dumps(dict(config or {}), sort_keys=True, default=str),
                "seeds": json.dumps(dict(seeds or {}), sort_keys=True),
            })
            for g in ("modules", "masks", "state", "results"):
                f.create_group(g)
        tmp.replace(path)  # the store appears complete or not at all
        return cls(path, "a")

    def _check(self) -> None:
        if not self.path.exists():
            raise StoreError(f"no store at {self.path}: check the path, or create one (rtt distill ... --out {self.path})")
        self._read(self._check_format)

    def _check_format(self, f: h5py.File) -> None:
        fmt = _attr_value(f.attrs.get("format", ""))
        if fmt != FORMAT:
            raise StoreError(f"{self.path} is an HDF5 file but not a random-teachers store (no '{FORMAT}' format mark)")
        version = int(f.attrs.get("format_version", 0))
        if version > FORMAT_VERSION:
            raise StoreError(f"{self.path} has store format {version}, newer than this toolkit reads "
                             f"({FORMAT_VERSION}): upgrade random-teachers")

    @contextlib.contextmanager
    def _file(self, mode: str = "r") -> Iterator[h5py.File]:
        """The open file. Read errors propagate as OSError so that :meth:`_read` can retry."""
        if mode != "r" and self.mode != "a":
            raise StoreError(f"{self.path} is open read-only: use Store(path, 'a') to write")
        try:
            f = h5py.File(self.path, mode, locking=False)
        except FileNotFoundError:
            raise StoreError(f"no store at {self.path}") from None
        except OSError as e:
            if mode == "r":
                raise
            raise StoreError(f"{self.path} cannot be opened for writing (truncated or corrupt HDF5: "
                             f"{str(e).splitlines()[0]})") from None
        try:
            yield f
        finally:
            f.close()

    def _read(self, fn: Any, retries: int = 10) -> Any:
        """Run ``fn(file)`` on a freshly opened file; retried when a reader catches a writer
        mid-update (HDF5 then reports missing or half-written objects)."""
        for attempt in range(retries):
            try:
                with self._file("r") as f:
                    return fn(f)
            except _Missing:
                if attempt >= 2:  # looked three times: it is really not there
                    raise
                time.sleep(0.05)
            except StoreError:
                raise
            except (OSError, RuntimeError, KeyError) as e:
                if attempt == retries - 1:
                    raise StoreError(f"{self.path} is not readable (corrupt HDF5: {str(e).splitlines()[0]})") from None
                time.sleep(0.05)

    # ------------------------------------------------------------------ provenance
    @property
    def attrs(self) -> dict[str, Any]:
        """Root attributes (provenance) with JSON strings left as stored."""
        return self._read(lambda f: {k: _attr_value(v) for k, v in f.attrs.items()})

    @property
    def config(self) -> dict[str, Any]:
        """The run's configuration, decoded from JSON."""
        return json.loads(self.attrs.get("config", "{}"))

    # ------------------------------------------------------------------ tensors
    def _reserve(self, nbytes: int) -> None:
        """Extend the file (sparsely) past what the next write can allocate.

        HDF5 allocates at its logical end of file and records that end in the superblock before
        all new blocks reach the disk; a writer killed in between would leave a file shorter than
        its recorded end, which HDF5 refuses to open. With the file already long enough, a kill
        leaves only the half-written object unreadable. HDF5 trims the file back on close.
        """
        if self.mode != "a":
            raise StoreError(f"{self.path} is open read-only: use Store(path, 'a') to write")
        os.truncate(self.path, os.path.getsize(self.path) + int(nbytes) + (8 << 20))

    def _write_group(self, root: str, name: str, tensors: Mapping[str, torch.Tensor],
                     attrs: Mapping[str, Any]) -> None:
        final = f"{root}/{name}"
        # a fresh temporary name each time: a group a killed writer left half-written (possibly
        # unreadable) never stands in the way of the next write
        tmp = f"{root}/{_TMP}{uuid.uuid4().hex}"
        self._reserve(sum(t.numel() * t.element_size() for t in tensors.values()))
        with self._file("a") as f:
            with contextlib.suppress(Exception):  # best effort: leftovers of killed writers
                for key in [k for k in f[root].keys() if k.startswith(_TMP)]:
                    with contextlib.suppress(Exception):
                        del f[root][key]
            g = f.create_group(tmp)
            for key, t in tensors.items():
                arr, dtype = _to_numpy(t)
                d = g.create_dataset(key.replace("/", "|"), data=arr)
                d.attrs["dtype"] = dtype
            for k, v in attrs.items():
                g.attrs[k] = _plain(v)
            g.attrs["written_at"] = _now()
            g.attrs["complete"] = 1
            f.flush()
            if final in f:
                del f[final]
            parent = final.rsplit("/", 1)[0]
            f.require_group(parent)
            f.move(tmp, final)
            f.flush()

    def _read_group(self, root: str, name: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        path = f"{root}/{name}"

        def read(f: h5py.File) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
            g = f.get(path)
            if not isinstance(g, h5py.Group) or not g.attrs.get("complete", 0):
                have = ", ".join(self._names(f, root)) or "nothing"
                raise _Missing(f"{self.path} has no complete '{path}' (it holds: {have})")
            tensors = {k.replace("|", "/"): _from_numpy(d[()], _attr_value(d.attrs.get("dtype", "")))
                       for k, d in g.items()}
            return tensors, {k: _attr_value(v) for k, v in g.attrs.items()}

        return self._read(read)

    @staticmethod
    def _names(f: h5py.File, root: str) -> list[str]:
        """Complete groups below ``root``; a group that cannot be opened (the object a killed
        writer left half-written) is skipped, so it never hides the ones before it."""
        out: list[str] = []

        def walk(group: h5py.Group, prefix: str) -> None:
            for key in list(group.keys()):
                if not prefix and key.startswith(_TMP):
                    continue
                try:
                    obj = group[key]
                    if not isinstance(obj, h5py.Group):
                        continue
                    if obj.attrs.get("complete", 0):
                        out.append(prefix + key)
                    else:
                        walk(obj, f"{prefix}{key}/")
                except (KeyError, OSError, RuntimeError):
                    continue

        if root in f:
            walk(f[root], "")
        return sorted(out)

    def names(self, prefix: str = "", root: str = "modules") -> list[str]:
        """Names of the complete objects under ``root`` (modules by default), optionally under ``prefix``."""
        return self._read(lambda f: [n for n in self._names(f, root) if n.startswith(prefix)])

    def save_module(self, name: str, module: nn.Module, attrs: Mapping[str, Any] | None = None,
                    masks: Mapping[str, torch.Tensor] | None = None) -> None:
        """Save ``module.state_dict()`` under ``name`` with its architecture spec and ``attrs``.

        ``masks`` (state_dict key -> 0/1 tensor) are stored as uint8 beside it; the caller
        saves the module with the masks already applied.
        """
        spec = getattr(module, "spec", None)
        if spec is None:
            raise StoreError(f"cannot save '{name}': the module has no .spec (build it with distill.build_model)")
        meta = {"spec": json.dumps(spec, sort_keys=True), **dict(attrs or {})}
        if masks is not None:
            self._write_group("masks", name, {k: m.to(torch.uint8) for k, m in masks.items()}, {})
        self._write_group("modules", name, module.state_dict(), meta)

    def load_state(self, name: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The raw state_dict and attrs saved under ``name`` (CPU tensors)."""
        return self._read_group("modules", name)

    def load_masks(self, name: str) -> dict[str, torch.Tensor]:
        """The uint8 masks saved with module ``name``."""
        return self._read_group("masks", name)[0]

    def load_module(self, name: str, device: str | torch.device = "cpu") -> nn.Module:
        """Rebuild the module saved under ``name`` from its spec and load its tensors."""
        from distill.models import build_model

        state, attrs = self.load_state(name)
        try:
            spec = json.loads(attrs["spec"])
            model = build_model(**spec)
        except (KeyError, ValueError, TypeError) as e:
            raise StoreError(f"{self.path}: module '{name}' has an unusable architecture spec ({e})") from None
        load_into(model, state, where=f"{self.path}:{name}")
        model.store_ref = (str(self.path), name)
        return model.to(device)

    def teacher(self, device: str | torch.device = "cpu") -> nn.Module:
        """The frozen teacher, in eval mode."""
        model = self.load_module("teacher", device).eval()
        return model.requires_grad_(False)

    @property
    def epochs(self) -> list[int]:
        """Epochs at which a complete student checkpoint exists, ascending."""
        return sorted(int(n.split("/")[1]) for n in self.names("student/"))

    def student(self, epoch: int = -1, device: str | torch.device = "cpu") -> nn.Module:
        """The student saved at ``epoch`` (-1: the last saved one), in eval mode."""
        epochs = self.epochs
        if not epochs:
            raise StoreError(f"{self.path} holds no student checkpoint yet")
        if epoch < 0:
            epoch = epochs[epoch] if -epoch <= len(epochs) else epochs[0] - 1
        if epoch not in epochs:
            raise StoreError(f"{self.path} has no student at epoch {epoch} (saved epochs: "
                             f"{', '.join(map(str, epochs))})")
        return self.load_module(student_name(epoch), device).eval()

    # ------------------------------------------------------------------ training state
    def save_state(self, name: str, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
        """Save resumable state (e.g. optimiser moments) with JSON-able ``meta``."""
        self._write_group("state", name, tensors, {"meta": json.dumps(meta, default=str)})

    def load_state_group(self, name: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """The state saved by :meth:`save_state`, or None when there is none."""
        try:
            tensors, attrs = self._read_group("state", name)
        except StoreError:
            return None
        return tensors, json.loads(attrs.get("meta", "{}"))

    def delete(self, root: str, name: str) -> None:
        """Remove ``root/name`` (e.g. ``delete("state", "optimizer")``) if present."""
        with self._file("a") as f:
            if f"{root}/{name}" in f:
                del f[f"{root}/{name}"]

    # ------------------------------------------------------------------ results
    def write_result(self, name: str, ds: "xarray.Dataset") -> None:
        """Store an xarray Dataset as netCDF group ``results/<name>`` (replacing any older one)."""
        tmp = f"results/{_TMP}{uuid.uuid4().hex[:8]}"
        self._reserve(int(ds.nbytes))
        ds.to_netcdf(self.path, mode="a", group=tmp, engine="h5netcdf", invalid_netcdf=False)
        with self._file("a") as f:
            f[tmp].attrs["complete"] = 1
            if f"results/{name}" in f:
                del f[f"results/{name}"]
            f.move(tmp, f"results/{name}")

    def results(self) -> list[str]:
        """Names of the results stored in the file."""
        def read(f: h5py.File) -> list[str]:
            g = f.get("results")
            return sorted(k for k in (g or {}) if not k.startswith(_TMP) and g[k].attrs.get("complete", 0))

        return self._read(read)

    def read_result(self, name: str) -> "xarray.Dataset":
        """Load result ``name`` as a plain in-memory xarray Dataset."""
        import xarray as xr

        if name not in self.results():
            raise StoreError(f"{self.path} has no result '{name}' (it holds: {', '.join(self.results()) or 'none'})")
        with xr.open_dataset(self.path, group=f"results/{name}", engine="h5netcdf") as ds:
            out = ds.load()
        out.attrs.pop("complete", None)
        return out

    @property
    def metrics(self) -> "xarray.Dataset":
        """Probe accuracies and training curves: dims (epoch, model, probe), variable ``accuracy``."""
        return self.read_result("metrics")

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"


def student_name(epoch: int) -> str:
    """Module name of the student saved at ``epoch``."""
    return f"student/{epoch:05d}"


def load_into(model: nn.Module, state: Mapping[str, torch.Tensor], where: str = "state") -> nn.Module:
    """Copy ``state`` into ``model`` after checking keys and shapes; one-line StoreError otherwise."""
    own = model.state_dict()
    for key, t in own.items():
        if key not in state:
            raise StoreError(f"{where}: missing key '{key}' (architecture mismatch: the saved model is not "
                             f"a {getattr(model, 'spec', {}).get('arch', type(model).__name__)})")
        if tuple(state[key].shape) != tuple(t.shape):
            raise StoreError(f"{where}: key '{key}' has shape {tuple(state[key].shape)}, the model expects "
                             f"{tuple(t.shape)} (architecture mismatch)")
    extra = sorted(set(state) - set(own))
    if extra:
        raise StoreError(f"{where}: unexpected key '{extra[0]}' (architecture mismatch)")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})
    return model


def as_module(ref: Any, device: str | torch.device = "cpu") -> nn.Module:
    """Resolve a module reference: an ``nn.Module``, or ``(store_or_path, epoch)`` for a student,
    or ``(store_or_path, name)`` for any saved module (e.g. ``"teacher"``)."""
    if isinstance(ref, nn.Module):
        return ref.to(device)
    if isinstance(ref, (tuple, list)) and len(ref) == 2:
        store, which = ref
        store = store if isinstance(store, Store) else Store(store)
        if isinstance(which, (int, np.integer)):
            return store.student(int(which), device)
        if isinstance(which, str):
            return store.load_module(which, device).eval()
    raise TypeError(f"expected an nn.Module or a (store, epoch|name) pair, got {type(ref).__name__}")


def _toolkit_version() -> str:
    from distill import __version__

    return __version__
