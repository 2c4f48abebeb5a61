"""Dataset loading: CIFAR-10 from the shared JPEG tarball, cold (decode) and cached (the .npz beside it).

Cold: the tarball is copied into a fresh folder, so ``load_dataset`` decodes all 60,000 JPEGs and
writes its cache there. Cached: the same call again, which reads the cache (target < 1 s). The
plain baseline for the cached load is ``numpy.load`` of the same cache file (the bytes alone,
without the checks and the per-channel statistics ``load_dataset`` adds). ``--size tiny`` uses a
generated tarball of a few dozen PNGs instead.

    python -m bench.bench_data [--size tiny|full] [--tarball PATH]
"""

from __future__ import annotations

import argparse
import io
import shutil
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import interleaved, record, show
from distill.data import cache_path, load_dataset

SHARED_TARBALL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-jpg.tar.gz"
SIZES = {"tiny": dict(rounds=1), "full": dict(rounds=3)}


def tiny_tarball(folder: Path, per_class: int = 6) -> Path:
    """A CIFAR-shaped image-tree tarball (train/ and test/, 10 classes, 32x32 RGB PNGs)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    path = folder / "tiny-cifar.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        for split in ("train", "test"):
            for c in range(10):
                for i in range(per_class):
                    buf = io.BytesIO()
                    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, format="PNG")
                    info = tarfile.TarInfo(f"{split}/class{c}/{i}.png")
                    info.size = buf.tell()
                    buf.seek(0)
                    tf.addfile(info, buf)
    return path


def run_bench(
    size: str = "full", device: str = "cpu", rounds: int | None = None, tarball: str | Path | None = None, **_: Any
) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if size == "tiny" or (tarball is None and not SHARED_TARBALL.exists()):
            source, label = tiny_tarball(folder), "generated 120-image PNG tarball"
        else:
            src = Path(tarball or SHARED_TARBALL)
            source, label = folder / src.name, f"{src.name} (CIFAR-10 JPEGs)"
            shutil.copyfile(src, source)
        t0 = time.perf_counter()
        data = load_dataset("cifar10", root=source)
        cold = time.perf_counter() - t0
        cache = cache_path(source)
        n = len(data.train) + len(data.test)

        def plain() -> None:
            with np.load(cache, allow_pickle=False) as z:
                for k in z.files:
                    z[k]

        times = interleaved(
            {"load_dataset (cached)": lambda: load_dataset("cifar10", root=source), "numpy.load of the cache": plain},
            rounds or SIZES[size]["rounds"],
            warmup=False,
        )
    rec = record(
        "data_load",
        f"load_dataset('cifar10') from {label}, {n} images",
        times,
        ours="load_dataset (cached)",
        baseline="numpy.load of the cache",
        target="cached < 1 s",
        size=size,
        cold_s=cold,
        cold_over_cached=cold / float(np.median(times["load_dataset (cached)"])),
    )
    rec["met"] = bool(rec["median_s"]["load_dataset (cached)"] < 1.0)
    return [rec]


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=list(SIZES), default="full")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--tarball", default=None)
    a = ap.parse_args(argv)
    recs = run_bench(a.size, rounds=a.rounds, tarball=a.tarball)
    for r in recs:
        print(show(r) + f"\n  cold (decode + cache write) {r['cold_s']:.2f} s")
    return recs


if __name__ == "__main__":
    main()
