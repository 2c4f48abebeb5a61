"""Durable file operations of the store: write-to-temporary, fsync, atomic rename, directory fsync,
and the single-writer lock.

Every operation that changes the file system goes through `op`, which counts it. A test
(or a curious user) can make the process kill itself right after operation ``k`` with
``RTT_STORE_CRASH_AFTER=k`` (or `crash_after`), to prove that a kill between any two
operations leaves a consistent store. ``RTT_STORE_OPLOG=1`` records the operations in `OPLOG`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import mmap
import os
import re
import shutil
import signal
import socket
import stat
import struct
import sys
import time
import uuid
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from distill.store.errors import StoreBusy, StoreError, link_error

_COUNT = 0
_CRASH_AFTER: int | None = int(os.environ["RTT_STORE_CRASH_AFTER"]) if os.environ.get("RTT_STORE_CRASH_AFTER") else None
OPLOG: list[str] | None = [] if os.environ.get("RTT_STORE_OPLOG") else None


def crash_after(k: int | None, log: bool = False) -> None:
    """Test hook: SIGKILL this process right after its ``k``-th file operation from now (None: never)."""
    global _COUNT, _CRASH_AFTER, OPLOG
    _COUNT, _CRASH_AFTER = 0, k
    OPLOG = [] if log else None


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

    The block-aligned interior of every range of at least `DIRECT_MIN` bytes is written
    with ``O_DIRECT`` through a page-aligned buffer: the data goes to the disk once, without
    first being copied into the page cache and then written back by the fsync that must
    follow (which then has only the metadata to flush). The rest, and everything on systems or
    file systems without ``O_DIRECT`` (tmpfs on older kernels, macOS), is written through the
    page cache, its writeback started at once. Not durable by itself: fsync afterwards."""
    fd = os.open(path, os.O_WRONLY | NOFOLLOW)
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
        return os.open(path, os.O_WRONLY | flag | NOFOLLOW)
    except OSError as e:
        if e.errno in (errno.EINVAL, errno.EOPNOTSUPP):
            return -1
        raise


def _write_direct(fd: int, buf: mmap.mmap, view: memoryview, offset: int) -> int:
    """Copy ``view`` (a multiple of `BLOCK` bytes) to ``offset`` by O_DIRECT through ``buf``;
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


# ---------------------------------------------------------------------------- modes and links
NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
FILE_MODE = 0o644  # files and folders get these modes whatever the umask (a stricter umask narrows them)
DIR_MODE = 0o755
_TMP = re.compile(r"^\.(?P<name>.+)\.[0-9a-f]{12}\.tmp$")


def create_file(path: Path | str) -> int:
    """A new file at ``path`` (never an existing one, never through a link), opened for writing with
    mode `FILE_MODE`; its descriptor."""
    return int(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW | os.O_CLOEXEC, FILE_MODE))


def makedirs(path: Path) -> None:
    """``mkdir -p`` with mode `DIR_MODE` for every folder it makes (Path.mkdir would use 0777
    minus the umask)."""
    path = Path(path)
    missing = []
    while not os.path.lexists(path):
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    for p in reversed(missing):
        try:
            os.mkdir(p, DIR_MODE)
        except FileExistsError:
            if not os.path.isdir(p):
                raise


def check_no_links(top: Path | str, path: Path | str, what: str = "object file") -> None:
    """One-line StoreError unless every component of ``path`` below ``top`` is a real folder and
    ``path`` itself a regular file (checked with lstat: no link is followed)."""
    rel = os.path.relpath(path, top)
    cur = os.fspath(top)
    parts = rel.split(os.sep)
    for i, part in enumerate(parts):
        cur = os.path.join(cur, part)
        st = os.lstat(cur)  # FileNotFoundError propagates: the caller knows what a missing file means
        if stat.S_ISLNK(st.st_mode):
            raise link_error(cur, what if i == len(parts) - 1 else "folder")
        if i == len(parts) - 1 and not stat.S_ISREG(st.st_mode):
            raise StoreError(f"{cur}: not a regular file (damaged or crafted store): remove it")


def find_links(top: Path | str) -> list[str]:
    """Every symbolic link inside the folder ``top`` (walked without following any)."""
    out = []
    for dirpath, dirs, files in os.walk(top, followlinks=False):
        for name in dirs + files:
            full = os.path.join(dirpath, name)
            if os.path.islink(full):
                out.append(full)
    return sorted(out)


_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", None)  # Linux: record locks owned by an open file, not a process
_OFD_GETLK = getattr(fcntl, "F_OFD_GETLK", None)


def _flock_struct(kind: int) -> bytes:
    return struct.pack("hhqqi4x", kind, os.SEEK_SET, 0, 0, 0)  # struct flock: the whole file


def mark_alive(fd: int) -> None:
    """Hold a write lock on the temporary ``fd`` until it is closed (an open-file-description
    lock: independent of HDF5's own flock, and dropped by the kernel when the writer dies)."""
    if _OFD_SETLK is not None:
        with _quiet():
            fcntl.fcntl(fd, _OFD_SETLK, _flock_struct(fcntl.F_WRLCK))


def is_orphan_tmp(path: Path | str) -> bool:
    """Whether the temporary file ``path`` belongs to no living writer (see `mark_alive`).
    Where the system lacks open-file-description locks, none is judged an orphan."""
    if _OFD_GETLK is None:
        return False
    try:
        fd = os.open(path, os.O_RDONLY | NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False  # a link or something unopenable: not ours to judge
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        got = fcntl.fcntl(fd, _OFD_GETLK, _flock_struct(fcntl.F_WRLCK))
        return bool(struct.unpack("hhqqi4x", got)[0] == fcntl.F_UNLCK)
    except OSError:
        return False
    finally:
        os.close(fd)


def orphan_temporaries(folder: Path | str, name: str | None = None) -> list[Path]:
    """The temporaries (``.NAME.<12 hex>.tmp``) in ``folder`` that no living writer holds; of the final
    name ``name`` only, when given."""
    try:
        entries = os.listdir(folder)
    except OSError:
        return []
    out = []
    for n in entries:
        m = _TMP.match(n)
        if m and (name is None or m["name"] == name) and is_orphan_tmp(os.path.join(folder, n)):
            out.append(Path(folder, n))
    return sorted(out)


def sweep_temporaries(final: Path) -> None:
    """Remove the temporaries of ``final`` that killed writers left beside it."""
    for p in orphan_temporaries(final.parent, final.name):
        with _quiet():
            op(f"unlink stale {p.name}", os.unlink, p)


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
    instant leaves either the old ``final`` (or none) or the complete new one, never a mix; the
    temporary a killed writer leaves is removed by the next write of ``final``. The file gets
    mode `FILE_MODE`."""
    final = Path(final)
    check_parents(final, f"write {final.name}")
    makedirs(final.parent)
    sweep_temporaries(final)
    tmp = tmp_name(final)
    fd = create_file(tmp)
    try:
        mark_alive(fd)  # until the rename (the descriptor stays open)
        if callable(data):
            op(f"write {final.name}", data, tmp)  # writers open it by name: the same file, truncated
        else:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            op(f"write {final.name}", lambda: None)
        op(f"fsync {final.name}", os.fsync, fd)
        if not replace and final.exists():
            raise FileExistsError(errno.EEXIST, "exists", str(final))
        op(f"rename {final.name}", os.replace, tmp, final)
    except BaseException:
        with _quiet():
            tmp.unlink()
        raise
    finally:
        os.close(fd)
    fsync_dir(final.parent)


def read_file(path: Path | str) -> bytes:
    """The bytes of the regular file ``path``, opened without following a link."""
    fd = os.open(path, os.O_RDONLY | NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise StoreError(f"{path}: not a regular file (damaged or crafted store): remove it")
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read()
    finally:
        os.close(fd)


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
            fd = os.open(path, os.O_RDWR | os.O_CREAT | NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, FILE_MODE)
        except OSError as e:
            if e.errno == errno.ELOOP or os.path.islink(path):
                raise link_error(path, "writer lock") from None
            raise io_error(e, path, "create the writer lock") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise StoreError(f"{path}: the writer lock is not a regular file: remove it (the next writer recreates it)")
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


@contextlib.contextmanager
def removed_on_failure(tmp: Path, final: Path, doing: str) -> Iterator[None]:
    """Remove the folder ``tmp`` (built aside, to be renamed to ``final``) if the block fails; an
    OSError becomes a one-line StoreError about ``final``."""
    try:
        yield
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise io_error(e, final, doing) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
