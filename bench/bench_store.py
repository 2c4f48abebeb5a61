"""Store writes: ``Store.save_module`` of a ResNet-18 (11 M parameters) against plain h5py.

Ours writes one HDF5 file per checkpoint under a temporary name (h5py lays it out; the tensors'
bytes are copied into their places, the large ones with O_DIRECT, while a thread computes the
per-tensor checksums), fsyncs it, renames it into place and fsyncs the folder: a checkpoint
appears complete or not at all, and survives a power cut once save_module returned. The plain
baseline is ``h5py.File(path, "a")`` with one ``create_dataset`` per state_dict key and no
fsync (its data may still sit in the page cache when it returns). A third variant, "plain h5py +
fsync", writes each checkpoint to its own new file with the same h5py calls, then fsyncs the file
and its folder: the durability ours promises, without the temporary name, checksums and O_DIRECT,
so ``ratio_vs_fsync`` says what our code costs beyond the disk's flush. Each round writes a new
checkpoint, into one growing file for the baseline, as a training run does; the two take
turns within every round. Throughput is the checkpoint's bytes over the median time (MB/s);
the load average at the start is recorded, since a busy machine moves both figures.

    python -m bench.bench_store [--size tiny|full] [--rounds N]
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

import h5py
import torch

import distill
from bench.common import interleaved, record, show
from distill.store import Store

SIZES = {
    "tiny": dict(arch="convnet", options={"width": 8, "depth": 2}, rounds=1),
    "full": dict(arch="resnet18", options={}, rounds=15),
}


def run_bench(size: str = "full", device: str = "cpu", rounds: int | None = None, **_: Any) -> list[dict]:
    p = SIZES[size]
    torch.manual_seed(0)
    model = distill.build_model(p["arch"], (3, 32, 32), head="linear", num_classes=10, **p["options"])
    n_params = sum(t.numel() for t in model.state_dict().values())
    counter = itertools.count()
    load = [round(x, 1) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.create(Path(tmp) / "ours.rts", {"bench": True})
        plain_path = Path(tmp) / "plain.h5"

        def ours() -> None:
            store.save_module(f"m{next(counter)}", model, {"epoch": 0})

        def plain() -> None:
            with h5py.File(plain_path, "a") as f:
                g = f.create_group(f"m{next(counter)}")
                for k, v in model.state_dict().items():
                    g.create_dataset(k, data=v.detach().cpu().numpy())

        def plain_fsync() -> None:
            path = Path(tmp) / f"plain-{next(counter)}.h5"
            with h5py.File(path, "w") as f:
                for k, v in model.state_dict().items():
                    f.create_dataset(k, data=v.detach().cpu().numpy())
            for target, flags in ((path, os.O_RDONLY), (Path(tmp), os.O_RDONLY | os.O_DIRECTORY)):
                fd = os.open(target, flags)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)

        times = interleaved(
            {"Store.save_module": ours, "plain h5py": plain, "plain h5py + fsync": plain_fsync},
            rounds or p["rounds"],
            warmup=size != "tiny",
        )
    nbytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    mb_s = {k: round(nbytes / 1e6 / statistics.median(v), 1) for k, v in times.items()}
    return [
        record(
            "store_write",
            f"one checkpoint of {p['arch']} ({n_params:,} values, {nbytes / 1e6:.1f} MB)",
            times,
            ours="Store.save_module",
            baseline="plain h5py",
            target=">= 0.8",
            goal=lambda r: r >= 0.8,
            size=size,
            mb_per_s=mb_s,
            ratio_vs_fsync=statistics.median(times["plain h5py + fsync"])
            / statistics.median(times["Store.save_module"]),
            load_avg=load,
            notes=[f"throughput MB/s: {mb_s}", f"load average (1, 5, 15 min) at the start: {load}"],
        )
    ]


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=list(SIZES), default="full")
    ap.add_argument("--rounds", type=int, default=None)
    a = ap.parse_args(argv)
    recs = run_bench(a.size, rounds=a.rounds)
    for r in recs:
        print(show(r))
    return recs


if __name__ == "__main__":
    main()
