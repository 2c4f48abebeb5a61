"""Helpers of the store tests: the fork-server client, reporting counts, tiny datasets on disk."""

import atexit
import gzip
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
SERVER = Path(__file__).with_name("store_forkserver.py")


class ForkServer:
    """Client of ``store_forkserver.py``: one job at a time, replies as dicts."""

    def __init__(self, lean: bool = False):
        self.p = subprocess.Popen(
            [sys.executable, str(SERVER), *(["--lean"] if lean else [])],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert "ready" in self.line()

    def line(self) -> dict:
        line = self.p.stdout.readline()
        assert line, f"fork server died (exit {self.p.poll()})"
        return json.loads(line)

    def send(self, **req) -> None:
        self.p.stdin.write(json.dumps(req) + "\n")
        self.p.stdin.flush()

    def replies(self) -> list[dict]:
        """Replies of the current job, up to and including its 'done' line."""
        out = []
        while True:
            r = self.line()
            out.append(r)
            if "done" in r:
                return out

    def run(self, **req) -> tuple[list[dict], dict]:
        self.send(**req)
        out = self.replies()
        return out[:-1], out[-1]

    def close(self) -> None:
        self.p.stdin.close()
        self.p.wait()


_SHARED: list[ForkServer] = []


def shared_server() -> ForkServer:
    """The one full fork server of all store test modules (its start-up, imports and a warm-up
    distillation, is paid once); closed when the test process exits."""
    if not _SHARED or _SHARED[0].p.poll() is not None:
        _SHARED[:] = [ForkServer()]
        atexit.register(_SHARED[0].close)
    return _SHARED[0]


def report(capsys, text: str) -> None:
    """Print a count into the test output (shown with -q too)."""
    with capsys.disabled():
        print(f"\n[store] {text}", flush=True)


def write_mnist(root: Path, n: int = 128, seed: int = 0) -> Path:
    """A tiny MNIST in IDX format (gzip) under ``root``: n training and n test images of 28x28."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix in ("train", "t10k"):
        labels = (np.arange(n) % 10).astype(np.uint8)
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        with gzip.open(root / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write(struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes())
        with gzip.open(root / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(struct.pack(">II", 2049, n) + labels.tobytes())
    return root


def checksums(*dirs: Path) -> dict[str, str]:
    """sha256 of every file under ``dirs`` (the lock file's holder note excepted)."""
    out = {}
    for d in dirs:
        d = Path(d)
        files = [d] if d.is_file() else sorted(p for p in d.rglob("*") if p.is_file() and p.name != "lock")
        for p in files:
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@contextmanager
def memory_dir(fallback: Path) -> Iterator[Path]:
    """A fresh folder on the memory file system (/dev/shm) where there is a writable one, else
    ``fallback``. For the kill tests: a SIGKILL leaves the kernel's page cache intact, so what
    they prove does not depend on fsync reaching a disk, and without a disk the hundreds of
    fsyncs of their writers cost nothing."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield fallback
        return
    d = Path(tempfile.mkdtemp(prefix="rtt-store-test-", dir=shm))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)
