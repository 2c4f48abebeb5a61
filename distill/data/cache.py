"""The cache of decoded image trees: an uncompressed ``.npz`` of uint8 arrays (nothing pickled,
read with ``allow_pickle=False``), stamped with its source's path, size and mtime."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np

_CACHE_VERSION = "rtt-cache-v1"


def cache_path(source: str | os.PathLike) -> Path:
    """Where the decoded copy of an image-tree folder or tarball ``source`` is written.

    ``$RTT_CACHE/<name>-<hash of the path>.npz`` when ``RTT_CACHE`` is set; otherwise beside the
    source as ``<source>.rtt-cache.npz`` when its folder is writable (a folder without any write
    permission bit counts as read-only, even for root), else
    ``${XDG_CACHE_HOME:-~/.cache}/random-teachers/<name>-<hash of the path>.npz``. The file holds
    the decoded uint8 arrays uncompressed (CIFAR-10: about 185 MB) and the source's path, size and
    mtime; a changed source makes it stale and it is rebuilt.
    """
    source = Path(source).resolve()
    if os.environ.get("RTT_CACHE"):
        return _user_cache(source)
    return _beside(source) if _writable(source.parent) else _user_cache(source)


def _source_stamp(source: Path) -> str:
    """Identity of a source: resolved path, total size and latest mtime (over all files of a folder)."""
    source = source.resolve()
    if source.is_dir():
        size = mtime = count = 0
        for dirpath, _, files in os.walk(source):
            for f in files:
                st = os.stat(os.path.join(dirpath, f))
                size, mtime, count = size + st.st_size, max(mtime, st.st_mtime_ns), count + 1
        return f"{_CACHE_VERSION}|{source}|{size}|{mtime}|{count}"
    st = source.stat()
    return f"{_CACHE_VERSION}|{source}|{st.st_size}|{st.st_mtime_ns}"


def _writable(folder: Path) -> bool:
    try:
        return os.access(folder, os.W_OK) and bool(folder.stat().st_mode & 0o222)
    except OSError:
        return False


def _beside(source: Path) -> Path:
    source = source.resolve()
    return source.with_name(source.name + ".rtt-cache.npz")


def _user_cache(source: Path) -> Path:
    source = source.resolve()
    env = os.environ.get("RTT_CACHE")
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "random-teachers"
    digest = hashlib.sha1(str(source).encode()).hexdigest()[:12]
    return base / f"{source.name}-{digest}.npz"


def _read_cache(path: Path, stamp: str) -> dict[str, np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["stamp"]) != stamp:
                return None
            return {k: z[k] for k in z.files if k != "stamp"}
    except Exception:  # noqa: BLE001 - a damaged cache is simply rebuilt
        return None


def _write_cache(source: Path, stamp: str, arrays: dict[str, np.ndarray]) -> Path | None:
    targets = [cache_path(source)]
    if targets[0] != _user_cache(source):
        targets.append(_user_cache(source))
    for target in targets:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        except OSError:
            continue
        try:
            with os.fdopen(fd, "wb") as f:
                # numpy's stub reads a str-keyed ** mapping as possibly its allow_pickle flag
                np.savez(f, stamp=np.array(stamp), **arrays)  # type: ignore[arg-type]
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
            return target
        except BaseException as err:
            Path(tmp).unlink(missing_ok=True)
            if not isinstance(err, OSError):
                raise
    return None  # no writable place: the data is still returned, just decoded again next time
