"""The commit folders of a store: files staged inside an uncommitted epoch, what killed writers
leave (tidied by the next writer), copies superseded by a newer commit, and rollbacks."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from distill.store import fsio
from distill.store.errors import StoreError, link_error
from distill.store.info import commit_dirs

_SUPERSEDED = ("modules", "masks", "state")  # older copies deleted after a commit; results keep history


def stage(path: Path, data: bytes | Any) -> None:
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


def tidy(store: Path) -> None:
    """Remove what killed writers left: half-written temporaries, uncommitted epochs. A store
    holding a symbolic link is refused first (its writer would follow it out of the store)."""
    links = fsio.find_links(store)
    if links:
        raise link_error(links[0])
    for d in (store, store / "commits"):
        with contextlib.suppress(OSError):
            for entry in os.scandir(d):
                if entry.name.startswith(".") and (".pending-" in entry.name or ".trash-" in entry.name):
                    shutil.rmtree(entry.path, ignore_errors=True)
    for dirpath, _, files in os.walk(store / "objects"):
        for fn in files:
            if fn.startswith(".") and fn.endswith(".tmp"):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(dirpath, fn))
    drop_superseded(store)


def drop_superseded(store: Path) -> None:
    """Delete the copies of modules, masks and states that a newer commit holds (dead space
    once that commit exists; a kill between the commit and these deletions leaves them to the
    next writer). A commit holding a student checkpoint keeps all its files: it is a point
    that `rollback` can return to and training can resume from. Links are never followed."""
    seen: set[str] = set()
    for _, d in reversed(commit_dirs(store)):
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
            fsio.check_no_links(store, store / "objects" / rel)
            fsio.remove(store / "objects" / rel)


def _holds_student(commit: Path) -> bool:
    """Whether the commit folder ``commit`` holds a student checkpoint."""
    try:
        return any(n.endswith(".h5") and not n.startswith(".") for n in os.listdir(commit / "modules" / "student"))
    except OSError:
        return False


def rollback(store: Path, epoch: int) -> None:
    """Drop the commits of ``store`` after ``epoch``, newest first (see `Store.rollback`)."""
    for e, d in reversed(commit_dirs(store)):
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
