"""Durable file operations of the store: write-to-temporary, fsync, atomic rename, directory fsync,
and the single-writer lock.

Every operation that changes the file system goes through :func:`op`, which counts it. A test
(or a curious user) can make the process kill itself right after operation ``k`` with
``RTT_STORE_CRASH_AFTER=k`` (or :func:`crash_after`), to prove that a kill between any two
operations leaves a consistent store. ``RTT_STORE_OPLOG=1`` records the operations in :data:`OPLOG`.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import signal
import socket
import sys
import time
import uuid
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from distill.store.errors import StoreBusy, StoreError

_COUNT = 0
_CRASH_AFTER: int | None = int(os.environ["RTT_STORE_CRASH_AFTER"]) if os.environ.get("RTT_STORE_CRASH_AFTER") else None
OPLOG: list[str] | None = [] if os.environ.get("RTT_STORE_OPLOG") else None


def crash_after(k: int | None, log: bool = False) -> None:
    """Test hook: SIGKILL this process right after its ``k``-th file operation from now (None: never)."""
    global _COUNT, _CRASH_AFTER, OPLOG
    _COUNT, _CRASH_AFTER = 0, k
    OPLOG = [] if log else None


def op_count() -> int:
    """File operations done by this process since start (or the last :func:`crash_after`)."""
    return _COUNT


def op(label: str, fn: Callable[..., Any], *args: Any) -> Any:
    """Run one file-system operation ``fn(*args)``, counting it (and dying after it on request)."""
    global _COUNT
    out = fn(*args)
    _COUNT += 1
    if OPLOG is not None:
        OPLOG.append(label)
    if _CRASH_AFTER is not None and _COUNT >= _CRASH_AFTER:
        os.kill(os.getpid(), signal.SIGKILL)
    return out


def io_error(e: OSError, path: Path | str, doing: str) -> StoreError:
    """A one-line StoreError for an OSError met while ``doing`` something to ``path``, with the fix."""
    fixes = {
        errno.ENOSPC: "the disk is full: free space (committed checkpoints are intact) and rerun to resume",
        errno.EDQUOT: "the disk quota is exhausted: free space and rerun to resume",
        errno.EROFS: "the file system is read-only: write the store elsewhere (--out) or remount it read-write",
        errno.EACCES: "permission denied: choose a writable location or fix the permissions",
        errno.EPERM: "operation not permitted: choose a writable location or fix the permissions",
        errno.ENOTDIR: "a parent of this path is a file, not a folder: choose another path",
        errno.EISDIR: "a folder stands where a file was expected: choose another path",
        errno.ENAMETOOLONG: "the path is too long: choose a shorter one",
        errno.EIO: "the device reported an I/O error: check the disk",
    }
    code = e.errno
    if not code:  # HDF5 errors carry the errno only in their text
        text = str(e)
        code = next((c for c in fixes if os.strerror(c) in text or f"errno = {c}," in text), 0)
    fix = fixes.get(code, os.strerror(code) if code else (str(e).splitlines()[0] if str(e) else type(e).__name__))
    return StoreError(f"{path}: cannot {doing} ({fix})")


def _sync_file_range() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_SYNC_FILE_RANGE = _sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Ask the kernel to start writing ``nbytes`` bytes at ``offset`` of ``fd`` to the disk now
    (Linux ``sync_file_range``; elsewhere nothing), so that the fsync that must follow finds
    less to wait for. It promises nothing and its failures are ignored: durability, and the
    report of write errors, come from that fsync."""
    if _SYNC_FILE_RANGE is not None and nbytes > 0:
        _SYNC_FILE_RANGE(fd, offset, nbytes, _SYNC_FILE_RANGE_WRITE)


BLOCK = 4096  # O_DIRECT wants buffers, offsets and lengths in multiples of the device's block
DIRECT_MIN = 1 << 18  # ranges from 256 KiB on go straight to the disk (smaller ones through the page cache)


def fill(path: Path | str, ranges: list[tuple[int, memoryview]]) -> None:
    """Write each ``(offset, bytes)`` of ``ranges`` into the existing file ``path``.

    The block-aligned interior of every range of at least :data:`DIRECT_MIN` bytes is written
    with ``O_DIRECT`` through a page-aligned buffer: the data goes to the disk once, without
    first being copied into the page cache and then written back by the fsync that must
    follow (which then has only the metadata to flush). The rest, and everything on systems or
    file systems without ``O_DIRECT`` (tmpfs on older kernels, macOS), is written through the
    page cache, its writeback started at once. Not durable by itself: fsync afterwards."""
    fd = os.open(path, os.O_WRONLY)
    direct, buf = -1, None
    try:
        if any(len(v) >= DIRECT_MIN for _, v in ranges):
            direct = _open_direct(path)
            buf = mmap.mmap(-1, 1 << 22) if direct >= 0 else None  # page-aligned
        for offset, view in ranges:
            lo = -(-offset // BLOCK) * BLOCK
            hi = (offset + len(view)) // BLOCK * BLOCK
            if buf is not None and len(view) >= DIRECT_MIN and hi - lo >= BLOCK:
                done = _write_direct(direct, buf, view[lo - offset : hi - offset], lo)
                if done < hi - lo:
                    buf.close()
                    buf = None  # refused or cut short: the page cache from now on (it reports why)
                _pwrite(fd, view[: lo - offset], offset)
                _pwrite(fd, view[lo - offset + done :], lo + done)
            else:
                _pwrite(fd, view, offset)
            if len(view) >= DIRECT_MIN and buf is None:
                start_writeback(fd, offset, len(view))
    finally:
        if buf is not None:
            buf.close()
        if direct >= 0:
            os.close(direct)
        os.close(fd)


def _open_direct(path: Path | str) -> int:
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return -1
    try:
        return os.open(path, os.O_WRONLY | flag)
    except OSError as e:
        if e.errno in (errno.EINVAL, errno.EOPNOTSUPP):
            return -1
        raise


def _write_direct(fd: int, buf: mmap.mmap, view: memoryview, offset: int) -> int:
    """Copy ``view`` (a multiple of :data:`BLOCK` bytes) to ``offset`` by O_DIRECT through ``buf``;
    the bytes written, fewer than asked when the file system refuses O_DIRECT (EINVAL) or a
    write comes back short."""
    staged = memoryview(buf)
    done = 0
    try:
        while done < len(view):
            n = min(len(buf), len(view) - done)
            staged[:n] = view[done : done + n]
            try:
                wrote = os.pwrite(fd, staged[:n], offset + done)
            except OSError as e:
                if e.errno == errno.EINVAL:
                    break
                raise
            done += wrote
            if wrote != n:
                break
    finally:
        staged.release()
    return done


def _pwrite(fd: int, view: memoryview, offset: int) -> None:
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        op(f"fsync-dir {path.name}", os.fsync, fd)
    finally:
        os.close(fd)


def tmp_name(final: Path) -> Path:
    """A fresh temporary name beside ``final`` (same folder, so the rename is atomic)."""
    return final.with_name(f".{final.name}.{uuid.uuid4().hex[:12]}.tmp")


def check_parents(path: Path, doing: str) -> None:
    """A one-line StoreError when a parent of ``path`` is a file (mkdir would say only "File exists")."""
    blocker = next((q for q in Path(path).parents if q.exists() and not q.is_dir()), None)
    if blocker is not None:
        raise StoreError(f"{path}: cannot {doing} ({blocker} is a file, not a folder: choose another path)")


def write_atomic(final: Path, data: bytes | Callable[[Path], None], *, replace: bool = True) -> None:
    """Put ``data`` (bytes, or a function writing a file at the path it is given) at ``final``:
    written under a temporary name, fsynced, renamed into place, folder fsynced. A kill at any
    instant leaves either the old ``final`` (or none) or the complete new one, never a mix."""
    check_parents(final, f"write {final.name}")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(final)
    try:
        if callable(data):
            op(f"write {final.name}", data, tmp)
            fd = os.open(tmp, os.O_RDONLY)
        else:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            op(f"write {final.name}", lambda: None)
        try:
            op(f"fsync {final.name}", os.fsync, fd)
        finally:
            os.close(fd)
        if not replace and final.exists():
            raise FileExistsError(errno.EEXIST, "exists", str(final))
        op(f"rename {final.name}", os.replace, tmp, final)
    except BaseException:
        with _quiet():
            tmp.unlink()
        raise
    fsync_dir(final.parent)


def remove(path: Path) -> None:
    """Delete one committed file (missing is fine) and make the deletion durable."""
    try:
        op(f"unlink {path.name}", os.unlink, path)
    except FileNotFoundError:
        return
    fsync_dir(path.parent)


class _quiet:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> bool:
        return exc[0] is not None and issubclass(exc[0], OSError)


# ---------------------------------------------------------------------------- the writer lock
class _Lock:
    """An exclusive ``flock`` on ``<store>/lock``, held while any writing Store object of this
    process lives. The kernel drops it when the process dies, so a killed writer's lock is stale
    at once: the next writer takes it over (and says whose it was)."""

    def __init__(self, path: Path):
        self.path = path
        self.previous = ""
        self.fd = -1
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise io_error(e, path, "create the writer lock") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise StoreBusy(str(path.parent), holder or "another process") from None
        except OSError as e:
            os.close(fd)
            raise io_error(e, path, "lock the store") from None
        self.fd = fd
        self.previous = _read_holder(self.fd)
        me = f"pid {os.getpid()} on host {socket.gethostname()} since {time.strftime('%Y-%m-%dT%H:%M:%S%z')}"
        try:
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, me.encode(), 0)
        except OSError:
            pass  # the lock itself holds; the note naming the holder is a courtesy

    def release(self) -> None:
        if self.fd >= 0:
            with _quiet():
                os.ftruncate(self.fd, 0)
            os.close(self.fd)  # closing drops the flock
            self.fd = -1

    def __del__(self) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        return os.pread(fd, 512, 0).decode(errors="replace").strip()
    except OSError:
        return ""


_LOCKS: weakref.WeakValueDictionary[str, _Lock] = weakref.WeakValueDictionary()


def acquire(store_dir: Path) -> _Lock:
    """The writer lock of ``store_dir``, shared by the writing Store objects of this process."""
    key = os.path.realpath(store_dir)
    lock = _LOCKS.get(key)
    if lock is None or lock.fd < 0:
        lock = _Lock(store_dir / "lock")
        _LOCKS[key] = lock
    return lock
