"""Peak resident memory of a CIFAR-10 distillation at the paper's shapes, in a fresh child process.

The child loads the full CIFAR-10 (50,000 + 10,000 images, cached), builds VGG11 with the 65,536-way
DINO head, trains ``--steps`` AdamW steps at batch 256 (``distill.distill`` on the first
``steps x 256`` images, the full dataset staying in memory) and then runs the k-NN and linear
probes on features of the real probe shapes (50,000 x 512 train, 10,000 x 512 test). Peak memory
does not grow with the number of steps, so this bounds a full run's peak on the CPU; the
child's peak RSS is read with ``getrusage`` by the parent (target < 2 GB, decimal: 1,907 MiB).
``--size tiny``: a small ConvNet, 256 images, small probes (seconds).

    python -m bench.bench_memory [--size tiny|full]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import children_peak_rss_mb, peak_rss_mb

GOAL_MIB = 2e9 / 2**20  # "under 2 GB", decimal: 1,907.3 MiB
SIZES = {
    "tiny": dict(arch="convnet", out_dim=1024, steps=1, batch=64, probe_train=2000, probe_test=500, dim=64),
    "full": dict(arch="vgg11", out_dim=65536, steps=2, batch=256, probe_train=50_000, probe_test=10_000, dim=512),
}


def child(size: str, out: str) -> None:
    import torch

    import distill
    from bench.bench_data import SHARED_TARBALL
    from bench.bench_distill import synthetic_cifar
    from distill.data import Dataset, Split
    from distill.probe import knn_accuracy, linear_probe

    p = SIZES[size]
    t0 = time.perf_counter()
    if SHARED_TARBALL.exists() and size == "full":
        data, source = distill.load_dataset("cifar10", root=SHARED_TARBALL), "CIFAR-10"
    else:
        data, source = synthetic_cifar(60_000 if size == "full" else 1_000), "synthetic CIFAR-shaped"
    n = p["steps"] * p["batch"]
    small = Dataset(
        data.name, Split(data.train.images[:n], data.train.labels[:n]), data.test, data.classes, data.mean, data.std
    )
    cfg = distill.DistillConfig(
        dataset="cifar10",
        arch=p["arch"],
        out_dim=p["out_dim"],
        lr=1e-4,
        epochs=1,
        batch_size=p["batch"],
        probes=[],
        save_every=0,
        device="cpu",
        arch_options={"width": 16, "depth": 2} if p["arch"] == "convnet" else {},
    )
    with tempfile.TemporaryDirectory() as tmp:
        distill.distill(cfg, Path(tmp) / "m.rts", data=small, progress=False)
    g = torch.Generator().manual_seed(0)
    tr = torch.randn(p["probe_train"], p["dim"], generator=g)
    te = torch.randn(p["probe_test"], p["dim"], generator=g)
    ytr, yte = torch.randint(0, 10, (len(tr),), generator=g), torch.randint(0, 10, (len(te),), generator=g)
    knn_accuracy(tr, ytr, te, yte, k=20)
    linear_probe(tr, ytr, te, yte, epochs=1)
    Path(out).write_text(
        json.dumps(
            {
                "source": source,
                "images_in_memory": len(data.train) + len(data.test),
                "seconds": time.perf_counter() - t0,
            }
        )
    )


def run_bench(size: str = "full", device: str = "cpu", rounds: int | None = None, **_: Any) -> list[dict]:
    p = SIZES[size]
    if size == "tiny":  # a smoke test of the child's work, in this process (no second torch import)
        with tempfile.TemporaryDirectory() as tmp:
            child(size, str(Path(tmp) / "info.json"))
            info = json.loads((Path(tmp) / "info.json").read_text())
        return [_record(size, p, info, peak_rss_mb(), ["tiny: run in the benchmark's own process"])]
    with tempfile.TemporaryDirectory() as tmp:
        info_path = Path(tmp) / "info.json"
        env = {**os.environ, "TQDM_DISABLE": "1"}
        before = children_peak_rss_mb()
        proc = subprocess.run(
            [sys.executable, "-m", "bench.bench_memory", "--child", "--size", size, "--out", str(info_path)],
            env=env,
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parents[1],
            timeout=3600,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"bench_memory child failed: {proc.stderr.strip()[-500:]}")
        peak = children_peak_rss_mb()
        info = json.loads(info_path.read_text())
    note = [] if peak > before else [f"another child process had a larger peak ({before:.0f} MiB) before this one"]
    return [_record(size, p, info, peak, note)]


def _record(size: str, p: dict, info: dict, peak: float, note: list[str]) -> dict:
    return {
        "name": "distill_peak_rss",
        "size": size,
        "device": "cpu",
        "what": f"peak RSS of a {info['source']} distillation process: {info['images_in_memory']} images in "
        f"memory, {p['arch']} + DINO head {p['out_dim']}, batch {p['batch']}, probes on "
        f"{p['probe_train']} x {p['dim']} features",
        "ours": "distill.distill",
        "baseline": None,
        "rounds": 1,
        "seconds": {"child": [info["seconds"]]},
        "median_s": {"child": info["seconds"]},
        "ratio": None,
        "target": "< 1907 MiB (2 GB)",
        "met": bool(peak < GOAL_MIB),
        "peak_rss_mb": round(peak, 1),
        "peak_gpu_mb": None,
        "notes": note,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=list(SIZES), default="full")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        child(a.size, a.out)
        return []
    recs = run_bench(a.size)
    for r in recs:
        print(
            f"{r['name']}: {r['what']}\n  peak RSS {r['peak_rss_mb']:.0f} MiB (target {r['target']}), "
            f"{r['median_s']['child']:.1f} s"
        )
    return recs


if __name__ == "__main__":
    main()
