"""`Store`: opening, writing, committing and reading a folder store (layout and promises in
:mod:`distill.store`). What a reader sees is derived from the files present: an epoch is committed
iff its commit folder exists, and a name held by several commits resolves to the newest. Readers
take no lock. Single-file stores (format_version 1, ``rtt pack`` output) are read by
:mod:`distill.store.single`."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np
import torch
from torch import nn

from distill.store import commits, fsio, objects
from distill.store.checks import build_checked, check_train_meta, decode_result, load_into
from distill.store.errors import StoreError
from distill.store.info import (
    COMMIT,
    FORMAT,
    FORMAT_VERSION,
    OBJECT_NAME,
    ROOTS,
    commit_dirs,
    config_of,
    folder_index,
    read_attrs,
)

if TYPE_CHECKING:
    import xarray


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not OBJECT_NAME.match(name) or len(name) > 200:
        raise StoreError(f"invalid object name {name!r}: use letters, digits, _ - + = . separated by '/'")
    return name


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
                commits.tidy(self.path)
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
        from distill import __version__
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
            "toolkit_version": __version__,
            "torch_version": str(torch.__version__),
            "created_at": objects.now(),
            "kind": kind,
            "config": json.dumps(dict(config or {}), sort_keys=True, default=str),
            "seeds": json.dumps(dict(seeds or {}), sort_keys=True),
            **(provenance or _provenance(dict(config or {}), kind=kind)),
        }
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
        with fsio.removed_on_failure(tmp, path, "create the store"):
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
        return [e for e, _ in commit_dirs(self.path)]

    def _index(self, root: str) -> dict[str, Path]:
        """Visible objects under ``root``: name -> file (the newest commit wins)."""
        return folder_index(self.path, root)

    def _locate(self, root: str, name: str) -> Path:
        """The file of ``root/name`` as `_index` resolves it (newest commit first, then
        ``objects``), found with one stat per commit instead of a walk of the whole store."""
        path = None
        if isinstance(name, str) and OBJECT_NAME.match(name):
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

        self._write(f"{root}/{name}.h5", data, f"write {root}/{name}")

    def _write(self, rel: str, data: Callable[[Path], None], doing: str) -> None:
        """Write the file ``rel`` (``<root>/<name>.h5``) into the open commit, else under ``objects``."""
        if self._txn is not None:
            commits.stage(self._txn / rel, data)
            return
        final = self.path / "objects" / rel
        try:
            fsio.write_atomic(final, data)
        except OSError as e:
            raise fsio.io_error(e, final, doing) from None

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

        self._write(f"results/{name}.h5", write, f"write result {name}")

    def delete(self, root: str, name: str) -> None:
        """Remove every copy of ``root/name`` (e.g. ``delete("state", "optimizer")``) if present."""
        self._writable()
        if root not in ROOTS:
            raise ValueError(f"root={root!r}: choose one of {', '.join(ROOTS)}")
        _check_name(name)
        for base in [self.path / "objects"] + [d for _, d in commit_dirs(self.path)]:
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
            with fsio.removed_on_failure(staging, final, f"commit epoch {epoch}"):
                yield self
                self._txn = None
                for dp, _, _ in sorted(os.walk(staging), key=lambda w: -len(w[0])):
                    fsio.fsync_dir(Path(dp))
                fsio.op(f"rename commit {epoch}", os.rename, staging, final)
                fsio.fsync_dir(final.parent)
        finally:
            self._txn = None
        commits.drop_superseded(self.path)

    def rollback(self, epoch: int) -> None:
        """Drop the commits after ``epoch``, newest first (each removal is one atomic rename). The
        commits of saved students keep their training state, so a rolled-back run resumes from
        the newest saved student at or before ``epoch``."""
        self._writable()
        commits.rollback(self.path, epoch)

    # ------------------------------------------------------------------ reading
    def _read_object(self, root: str, name: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        if self._single is not None:
            return self._single.read_group(root, name)
        return self._read_located(root, name, lambda path: objects.decode(path, f"{self.path}:{root}/{name}"))

    def _read_located(self, root: str, name: str, read: Callable[[Path], Any]) -> Any:
        """``read`` of the file of ``root/name``, located again when a newer commit superseded it
        between locating and opening."""
        for attempt in range(5):
            try:
                return read(self._locate(root, name))
            except FileNotFoundError:
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
        blob = self._read_located("results", name, fsio.read_file)
        return decode_result(blob, f"{self.path}:results/{name}")

    @property
    def metrics(self) -> xarray.Dataset:
        """Probe accuracies and training curves: dims (epoch, model, probe), variable ``accuracy``."""
        return self.read_result("metrics")

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"


def _is_epoch(text: str) -> bool:
    """Whether ``text`` is an epoch as the store writes it (ASCII digits)."""
    return text.isascii() and text.isdigit()


def student_name(epoch: int) -> str:
    """Module name of the student saved at ``epoch``."""
    return f"student/{epoch:05d}"


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
