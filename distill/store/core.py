"""The checkpoint store: a folder of immutable HDF5 files, one per checkpoint, state or result.

Layout of a store (format_version 2; the path, e.g. ``runs/x.rts``, names a folder: ``.rts`` is the
convention, any folder path works, ``runs/x.h5`` folders included)::

    store.h5                       root attrs only: format, format_version, toolkit_version,
                                   torch_version, created_at, kind, config (JSON), seeds (JSON)
    lock                           the writer lock (flock); its text names the holder
    objects/<root>/<name>.h5       objects written on their own (teacher, children, lottery levels)
    commits/<epoch:06d>/<root>/<name>.h5
                                   the objects of one epoch's commit (student, training state,
                                   metrics snapshot), made visible together by one directory rename

``root`` is ``modules``, ``masks``, ``state`` or ``results``; ``name`` may contain ``/``
(``student/00010`` is ``modules/student/00010.h5``). Each file is written once under a temporary
name, fsynced and renamed into place (its folder fsynced), and never modified afterwards; what a
reader sees is derived from the files present (an epoch is committed iff its commit folder
exists; a name held by several commits resolves to the newest). Readers take no lock.
Single-file stores (format_version 1, and the packed files of ``rtt pack``) are read by
:mod:`distill.store.single`.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import shutil
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np
import torch
from torch import nn

from distill.store import fsio, objects
from distill.store.errors import StoreError
from distill.store.info import (
    COMMIT,
    FORMAT,
    FORMAT_VERSION,
    ROOTS,
    check_hdf5_links,
    commit_dirs,
    config_of,
    folder_index,
    read_attrs,
)
from distill.store.objects import now

if TYPE_CHECKING:
    import xarray

_NAME = re.compile(r"^[A-Za-z0-9_=+-][A-Za-z0-9_.=+-]*(/[A-Za-z0-9_=+-][A-Za-z0-9_.=+-]*)*$")
MAX_SPEC_INT = 1 << 24  # no architecture field (width, classes, out_dim...) is larger
_SUPERSEDED = ("modules", "masks", "state")  # older copies deleted after a commit; results keep history


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name) or len(name) > 200:
        raise StoreError(f"invalid object name {name!r}: use letters, digits, _ - + = . separated by '/'")
    return name


def _toolkit_version() -> str:
    from distill import __version__

    return __version__


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


class Store:
    """A run's checkpoints and results.

    ``Store(path)`` opens an existing store for reading (``mode="r"``, no lock, never blocks a
    writer) or for writing (``mode="a"``: takes the store's exclusive writer lock, held while
    any writing Store object of the process for that path lives, or until `close`);
    ``Store.create(path, config)`` makes a new one. ``store_dtype`` (``fp32``, ``fp16``,
    ``bf16``) casts floating tensors of saved modules on disk (the dtype is recorded and loading
    casts back); ``compression="gzip"`` compresses datasets. Single-file stores (``rtt pack``
    output, format_version 1) are read-only.
    """

    def __init__(self, path: str | Path, mode: str = "r", *, store_dtype: str = "fp32", compression: str | None = None):
        if mode not in ("r", "a"):
            raise ValueError(f"Store mode must be 'r' or 'a', got {mode!r}; use Store.create() for a new store")
        if store_dtype not in objects.STORE_DTYPES:
            raise ValueError(f"store_dtype={store_dtype!r}: choose one of {', '.join(objects.STORE_DTYPES)}")
        if compression not in (None, "gzip", "lzf"):
            raise ValueError(f"compression={compression!r}: choose gzip, lzf or None")
        self.path = Path(path)
        self.mode = mode
        self.store_dtype = store_dtype
        self.compression = compression
        self._txn: Path | None = None
        self._lock: Any = None
        self._single: Any = None
        self._attrs = self._open()
        if mode == "a":
            if self._single is not None:
                raise StoreError(
                    f"{self.path} is a single-file store (format {self._attrs.get('format_version')}), "
                    "read-only: open it with Store(path), or start a new store"
                )
            self._lock = fsio.acquire(self.path)
            try:
                self._tidy()
            except BaseException:
                self._lock = None
                raise

    # ------------------------------------------------------------------ opening
    @classmethod
    def create(
        cls,
        path: str | Path,
        config: Mapping[str, Any] | None = None,
        *,
        kind: str = "distill",
        seeds: Mapping[str, int] | None = None,
        overwrite: bool = False,
        provenance: Mapping[str, Any] | None = None,
        **kw: Any,
    ) -> Store:
        """Create a new (empty) store folder at ``path`` holding ``config`` (JSON-able) as provenance.

        Any folder path works; ``.rts`` (``runs/x.rts``) is the convention, since the store is a folder
        and not one HDF5 file (`distill.store.names`).

        ``provenance``: the keys of `distill.provenance.provenance` (default: computed here
        from ``config`` and ``kind``, on CPU in fp32)."""
        from distill.provenance import provenance as _provenance

        path = Path(path)
        if path.exists() or path.is_symlink():
            if not overwrite:
                raise StoreError(
                    f"{path} already exists: open it with Store(path, 'a'), choose another path, or pass overwrite=True"
                )
            cls._remove_existing(path)
        fsio.check_parents(path, "create the store")
        attrs = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "layout": "folder",
            "toolkit_version": _toolkit_version(),
            "torch_version": str(torch.__version__),
            "created_at": now(),
            "kind": kind,
            "config": json.dumps(dict(config or {}), sort_keys=True, default=str),
            "seeds": json.dumps(dict(seeds or {}), sort_keys=True),
            **(provenance or _provenance(dict(config or {}), kind=kind)),
        }
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
        try:
            fsio.makedirs(path.parent)
            fsio.op("mkdir store", os.mkdir, tmp, fsio.DIR_MODE)
            for sub in ("objects", "commits"):
                os.mkdir(tmp / sub, fsio.DIR_MODE)
            fd = fsio.create_file(tmp / "store.h5")
            try:
                with h5py.File(tmp / "store.h5", "w", locking=False) as f:
                    f.attrs.update(attrs)
                fsio.op("fsync store.h5", os.fsync, fd)
            finally:
                os.close(fd)
            fsio.fsync_dir(tmp)
            if path.exists():
                raise StoreError(f"{path} already exists (created meanwhile by another process): choose another path")
            fsio.op("rename store", os.rename, tmp, path)  # the store appears complete or not at all
            fsio.fsync_dir(path.parent)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise fsio.io_error(e, path, "create the store") from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return cls(path, "a", **kw)

    @staticmethod
    def _remove_existing(path: Path) -> None:
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError as e:
            raise fsio.io_error(e, path, "remove the old store") from None

    def _open(self) -> dict[str, Any]:
        attrs, single = read_attrs(self.path)
        if single:
            from distill.store.single import SingleFile

            self._single = SingleFile(self.path, attrs)
        return attrs

    def close(self) -> None:
        """Give up this object's hold on the writer lock (other writing objects may keep it)."""
        self._lock = None
        self.mode = "r"

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _tidy(self) -> None:
        """Remove what killed writers left: half-written temporaries, uncommitted epochs. A store
        holding a symbolic link is refused first (its writer would follow it out of the store)."""
        links = fsio.find_links(self.path)
        if links:
            raise fsio.link_error(links[0])
        for d in (self.path, self.path / "commits"):
            with contextlib.suppress(OSError):
                for entry in os.scandir(d):
                    if entry.name.startswith(".") and (".pending-" in entry.name or ".trash-" in entry.name):
                        shutil.rmtree(entry.path, ignore_errors=True)
        for dirpath, _, files in os.walk(self.path / "objects"):
            for fn in files:
                if fn.startswith(".") and fn.endswith(".tmp"):
                    with contextlib.suppress(OSError):
                        os.unlink(os.path.join(dirpath, fn))
        self._drop_superseded()

    def _writable(self) -> None:
        if self.mode != "a":
            raise StoreError(f"{self.path} is open read-only: use Store(path, 'a') to write")

    # ------------------------------------------------------------------ provenance
    @property
    def attrs(self) -> dict[str, Any]:
        """Root attributes (provenance) with JSON strings left as stored."""
        return dict(self._attrs)

    @property
    def config(self) -> dict[str, Any]:
        """The run's configuration, decoded from JSON."""
        return config_of(self._attrs, self.path)

    # ------------------------------------------------------------------ index
    def commits(self) -> list[int]:
        """Epochs committed with `commit`, ascending."""
        if self._single is not None:
            return []
        return [e for e, _ in self._commit_dirs()]

    def _commit_dirs(self) -> list[tuple[int, Path]]:
        return commit_dirs(self.path)

    def _index(self, root: str) -> dict[str, Path]:
        """Visible objects under ``root``: name -> file (the newest commit wins)."""
        return folder_index(self.path, root)

    def _locate(self, root: str, name: str) -> Path:
        """The file of ``root/name`` as `_index` resolves it (newest commit first, then
        ``objects``), found with one stat per commit instead of a walk of the whole store."""
        path = None
        if isinstance(name, str) and _NAME.match(name):
            rel = os.path.join(root, *name.split("/")) + ".h5"
            top = os.fspath(self.path)
            try:
                epochs = sorted((n for n in os.listdir(os.path.join(top, "commits")) if COMMIT.match(n)), key=int)
            except FileNotFoundError:
                epochs = []
            bases = [os.path.join(top, "commits", n) for n in reversed(epochs)] + [os.path.join(top, "objects")]
            path = next((Path(base, rel) for base in bases if os.path.lexists(os.path.join(base, rel))), None)
            if path is not None:
                try:
                    fsio.check_no_links(self.path, path)
                except FileNotFoundError:
                    path = None
        if path is None:
            have = ", ".join(sorted(self._index(root))) or "nothing"
            raise StoreError(
                f"{self.path} has no {root[:-1] if root != 'masks' else 'mask'} '{name}' (it holds: {have})"
            )
        return path

    def names(self, prefix: str = "", root: str = "modules") -> list[str]:
        """Names of the objects under ``root`` (modules by default), optionally starting with ``prefix``."""
        if root not in ROOTS:
            raise ValueError(f"root={root!r}: choose one of {', '.join(ROOTS)}")
        if self._single is not None:
            return [n for n in self._single.names(root) if n.startswith(prefix)]
        return sorted(n for n in self._index(root) if n.startswith(prefix))

    # ------------------------------------------------------------------ writing
    def _put(
        self,
        root: str,
        name: str,
        tensors: Mapping[str, torch.Tensor],
        attrs: Mapping[str, Any],
        cast: torch.dtype | None = None,
    ) -> None:
        self._writable()
        _check_name(name)

        def data(path: Path) -> None:
            objects.write_object(path, f"{root}/{name}", tensors, attrs, cast=cast, compression=self.compression)

        if self._txn is not None:
            self._stage(self._txn / root / f"{name}.h5", data)
            return
        final = self.path / "objects" / root / f"{name}.h5"
        try:
            fsio.write_atomic(final, data)
        except OSError as e:
            raise fsio.io_error(e, final, f"write {root}/{name}") from None

    def _stage(self, path: Path, data: bytes | Any) -> None:
        """Write a file inside an uncommitted epoch (invisible until the commit's rename)."""
        try:
            fsio.makedirs(path.parent)
            fd = fsio.create_file(path)
            try:
                if callable(data):
                    fsio.op(f"write {path.name}", data, path)  # writers open it by name: the same file
                else:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view) :]
                    fsio.op(f"write {path.name}", lambda: None)
                fsio.op(f"fsync {path.name}", os.fsync, fd)
            finally:
                os.close(fd)
        except OSError as e:
            raise fsio.io_error(e, path, "write the epoch's files") from None

    def save_module(
        self,
        name: str,
        module: nn.Module,
        attrs: Mapping[str, Any] | None = None,
        masks: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        """Save ``module.state_dict()`` under ``name`` with its architecture spec and ``attrs``
        (and, for a model registered by a plugin, the plugin's module as attr ``plugin``).

        ``masks`` (state_dict key -> 0/1 tensor) are stored as uint8 beside it; the caller
        saves the module with the masks already applied. Floating tensors are cast to the
        store's ``store_dtype`` on disk.
        """
        spec = getattr(module, "spec", None)
        if spec is None:
            raise StoreError(f"cannot save '{name}': the module has no .spec (build it with distill.build_model)")
        meta = {"spec": json.dumps(spec, sort_keys=True), "store_dtype": self.store_dtype, **dict(attrs or {})}
        from distill.models import model_plugin

        plugin = model_plugin(str(spec.get("arch", "")))
        if plugin is not None:  # the module that registered the architecture: needed to rebuild it
            meta["plugin"] = plugin
        if masks is not None:
            self._put("masks", name, {k: m.to(torch.uint8) for k, m in masks.items()}, {})
        self._put("modules", name, module.state_dict(), meta, cast=objects.STORE_DTYPES[self.store_dtype])

    def save_state(self, name: str, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
        """Save resumable state (e.g. optimiser moments, full precision) with JSON-able ``meta``."""
        self._put("state", name, tensors, {"meta": json.dumps(meta, default=str)})

    def write_result(self, name: str, ds: xarray.Dataset) -> None:
        """Store an xarray Dataset as the netCDF file ``results/<name>.h5`` (replacing an older one)."""
        self._writable()
        _check_name(name)

        def write(p: Path) -> None:
            ds.to_netcdf(p, engine="h5netcdf", invalid_netcdf=False)

        if self._txn is not None:
            self._stage(self._txn / "results" / f"{name}.h5", write)
            return
        final = self.path / "objects" / "results" / f"{name}.h5"
        try:
            fsio.write_atomic(final, write)
        except OSError as e:
            raise fsio.io_error(e, final, f"write result {name}") from None

    def delete(self, root: str, name: str) -> None:
        """Remove every copy of ``root/name`` (e.g. ``delete("state", "optimizer")``) if present."""
        self._writable()
        if root not in ROOTS:
            raise ValueError(f"root={root!r}: choose one of {', '.join(ROOTS)}")
        _check_name(name)
        for base in [self.path / "objects"] + [d for _, d in self._commit_dirs()]:
            try:
                fsio.remove(base / root / f"{name}.h5")
            except OSError as e:
                raise fsio.io_error(e, base / root, f"delete {root}/{name}") from None

    @contextlib.contextmanager
    def commit(self, epoch: int) -> Iterator[Store]:
        """Group the writes of one epoch: inside ``with store.commit(e):`` every save_module,
        save_state and write_result goes to a hidden folder that becomes visible in one atomic
        rename at the end (or never, if the block fails or the process dies). Afterwards, older
        copies of the modules, masks and states it holds are deleted (results keep their history)."""
        self._writable()
        if self._txn is not None:
            raise StoreError("commits do not nest")
        epoch = int(epoch)
        final = self.path / "commits" / f"{epoch:06d}"
        if final.exists():
            raise StoreError(f"{self.path} already has a commit for epoch {epoch}: roll back first")
        staging = self.path / "commits" / f".pending-{epoch:06d}-{uuid.uuid4().hex[:8]}"
        try:
            fsio.op("mkdir pending", os.mkdir, staging, fsio.DIR_MODE)
        except OSError as e:
            raise fsio.io_error(e, staging.parent, f"start the commit of epoch {epoch}") from None
        self._txn = staging
        try:
            yield self
            self._txn = None
            for dp, _, _ in sorted(os.walk(staging), key=lambda w: -len(w[0])):
                fsio.fsync_dir(Path(dp))
            fsio.op(f"rename commit {epoch}", os.rename, staging, final)
            fsio.fsync_dir(final.parent)
        except OSError as e:
            shutil.rmtree(staging, ignore_errors=True)
            raise fsio.io_error(e, final, f"commit epoch {epoch}") from None
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        finally:
            self._txn = None
        self._drop_superseded()

    def _drop_superseded(self) -> None:
        """Delete the copies of modules, masks and states that a newer commit holds (dead space
        once that commit exists; a kill between the commit and these deletions leaves them to the
        next writer). A commit holding a student checkpoint keeps all its files: it is a point
        that `rollback` can return to and training can resume from. Links are never followed."""
        seen: set[str] = set()
        for _, d in reversed(self._commit_dirs()):
            keep = _holds_student(d)
            for root in _SUPERSEDED:
                if os.path.islink(d) or os.path.islink(d / root):
                    continue
                for dirpath, _, files in os.walk(d / root, followlinks=False):
                    for fn in files:
                        if fn.startswith(".") or os.path.islink(os.path.join(dirpath, fn)):
                            continue
                        rel = os.path.relpath(os.path.join(dirpath, fn), d)
                        if rel in seen and not keep:
                            with contextlib.suppress(OSError):
                                fsio.remove(Path(dirpath) / fn)
                        seen.add(rel)
        for rel in seen:
            with contextlib.suppress(OSError, StoreError):
                fsio.check_no_links(self.path, self.path / "objects" / rel)
                fsio.remove(self.path / "objects" / rel)

    def rollback(self, epoch: int) -> None:
        """Drop the commits after ``epoch``, newest first (each removal is one atomic rename). The
        commits of saved students keep their training state, so a rolled-back run resumes from
        the newest saved student at or before ``epoch``."""
        self._writable()
        for e, d in reversed(self._commit_dirs()):
            if e <= epoch:
                break
            trash = d.with_name(f".trash-{e:06d}-{uuid.uuid4().hex[:8]}")
            try:
                fsio.op(f"rename rollback {e}", os.rename, d, trash)
                fsio.fsync_dir(d.parent)
            except OSError as e2:
                raise fsio.io_error(e2, d, f"roll back epoch {e}") from None
            if not os.path.islink(trash):
                shutil.rmtree(trash, ignore_errors=True)

    # ------------------------------------------------------------------ reading
    def _read_object(self, root: str, name: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        if self._single is not None:
            return self._single.read_group(root, name)
        for attempt in range(5):
            path = self._locate(root, name)
            try:
                return objects.decode(path, f"{self.path}:{root}/{name}")
            except FileNotFoundError:  # superseded between listing and opening: look again
                if attempt == 4:
                    raise StoreError(f"{self.path}: {root}/{name} keeps disappearing while being read") from None
        raise AssertionError("unreachable")

    def load_state(self, name: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The raw state_dict and attrs saved under ``name`` (CPU tensors, logical dtypes)."""
        return self._read_object("modules", name)

    def load_masks(self, name: str) -> dict[str, torch.Tensor]:
        """The uint8 masks saved with module ``name``."""
        return self._read_object("masks", name)[0]

    def load_module(self, name: str, device: str | torch.device = "cpu", *, allow_nonfinite: bool = False) -> nn.Module:
        """Rebuild the module saved under ``name`` from its spec and load its tensors (strictly:
        keys, shapes and dtypes must match the architecture; NaN/inf weights are refused unless
        ``allow_nonfinite``). A model of a plugin needs that plugin installed or loaded
        (`distill.plugins.load_plugin`); otherwise a one-line PluginError names it."""
        state, attrs = self.load_state(name)
        where = f"{self.path}:{name}"
        model = build_checked(attrs.get("spec"), state, where, plugin=attrs.get("plugin"))
        load_into(model, state, where=where, allow_nonfinite=allow_nonfinite)
        model.store_ref = (str(self.path), name)  # type: ignore[assignment]  # torch types attributes as tensors/modules
        return model.to(device)

    def teacher(self, device: str | torch.device = "cpu") -> nn.Module:
        """The frozen teacher, in eval mode."""
        model = self.load_module("teacher", device).eval()
        return model.requires_grad_(False)

    @property
    def epochs(self) -> list[int]:
        """Epochs at which a student checkpoint exists, ascending."""
        return sorted(int(n.split("/")[1]) for n in self.names("student/") if _is_epoch(n.split("/")[1]))

    def student(self, epoch: int = -1, device: str | torch.device = "cpu") -> nn.Module:
        """The student saved at ``epoch`` (-1: the last saved one), in eval mode."""
        epochs = self.epochs
        if not epochs:
            raise StoreError(f"{self.path} holds no student checkpoint yet")
        if epoch < 0:
            epoch = epochs[epoch] if -epoch <= len(epochs) else epochs[0] - 1
        if epoch not in epochs:
            raise StoreError(
                f"{self.path} has no student at epoch {epoch} (saved epochs: {', '.join(map(str, epochs))})"
            )
        return self.load_module(student_name(epoch), device).eval()

    def load_state_group(self, name: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """The state saved by `save_state`, or None when there is none."""
        if name not in self.names(root="state"):
            return None
        tensors, attrs = self._read_object("state", name)
        try:
            meta = json.loads(attrs.get("meta", "{}"))
        except ValueError:
            raise StoreError(f"{self.path}: state '{name}' has unreadable metadata (damaged)") from None
        if name == "train":
            check_train_meta(meta, f"{self.path}:state/train")
        return tensors, meta

    def results(self) -> list[str]:
        """Names of the stored results."""
        return self.names(root="results")

    def read_result(self, name: str) -> xarray.Dataset:
        """Load result ``name`` as a plain in-memory xarray Dataset."""
        if self._single is not None:
            return self._single.read_result(name)
        if name not in self.results():
            raise StoreError(f"{self.path} has no result '{name}' (it holds: {', '.join(self.results()) or 'none'})")
        for attempt in range(5):
            path = self._locate("results", name)
            try:
                blob = fsio.read_file(path)
                break
            except FileNotFoundError:
                if attempt == 4:
                    raise StoreError(f"{self.path}: result {name} keeps disappearing while being read") from None
        return decode_result(blob, f"{self.path}:results/{name}")

    @property
    def metrics(self) -> xarray.Dataset:
        """Probe accuracies and training curves: dims (epoch, model, probe), variable ``accuracy``."""
        return self.read_result("metrics")

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"


def decode_result(blob: bytes, where: str) -> xarray.Dataset:
    """An in-memory xarray Dataset from the bytes of a netCDF file (refused when it holds links
    or external storage, which would read data from outside the file)."""
    import xarray as xr

    try:
        with h5py.File(io.BytesIO(blob), "r", locking=False) as f:
            check_hdf5_links(f, where)
    except StoreError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure to parse means a damaged file
        raise StoreError(f"{where}: unreadable result ({_first_line(e)}): damaged; run 'rtt verify'") from None
    try:
        with xr.open_dataset(io.BytesIO(blob), engine="h5netcdf") as ds:
            out = ds.load()
    except Exception as e:  # noqa: BLE001 - any failure to parse means a damaged file
        raise StoreError(f"{where}: unreadable result ({_first_line(e)}): damaged; run 'rtt verify'") from None
    out.attrs.pop("complete", None)
    return out


def _is_epoch(text: str) -> bool:
    """Whether ``text`` is an epoch as the store writes it (ASCII digits)."""
    return text.isascii() and text.isdigit()


def _holds_student(commit: Path) -> bool:
    """Whether the commit folder ``commit`` holds a student checkpoint."""
    try:
        return any(n.endswith(".h5") and not n.startswith(".") for n in os.listdir(commit / "modules" / "student"))
    except OSError:
        return False


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


def student_name(epoch: int) -> str:
    """Module name of the student saved at ``epoch``."""
    return f"student/{epoch:05d}"


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
        raise StoreError(f"{where}: unusable architecture spec ({_first_line(e)})") from None
    except Exception:  # noqa: BLE001 - an architecture that cannot be built on meta is checked after building
        meta = None
    if meta is not None:  # keys, shapes and dtypes checked before any memory is allocated
        check_state(meta, state, where, allow_nonfinite=True)
    try:
        return build_model(**spec)
    except (KeyError, ValueError, TypeError) as e:
        raise StoreError(f"{where}: unusable architecture spec ({_first_line(e)})") from None


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
