"""One distillation epoch: ``distill.distill`` against a plain PyTorch loop doing the same work.

Both run on the same data, model and batch size: teacher forward without grad, student
forward/backward, AdamW step. Ours also keeps the epoch's loss, embedding norms and the NaN/Inf
guard on the device, and writes its store; the epoch time is what ``distill`` records for epoch 1
(its one teacher pass per run for the logged KL and the store writes are outside it, and are
reported separately as ``ours_whole_call``). Variants alternate over ``--rounds``; medians and the
ratio plain/ours of the epoch times (target >= 0.95) are reported.

    python -m bench.bench_distill [--arch convnet] [--n 5120] [--out-dim 65536] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import distill
from bench.common import interleaved, record, reset_gpu_peak, show, sync_for
from distill.data import Dataset, Split
from distill.device import resolve_device
from distill.train import build_teacher
from distill.train import distill as run

SIZES = {
    "tiny": dict(
        arch="convnet",
        arch_options={"width": 8, "depth": 2},
        n=128,
        out_dim=256,
        hidden_dim=32,
        bottleneck_dim=32,
        rounds=1,
    ),
    "full": dict(arch="convnet", arch_options={}, n=2560, out_dim=65536, hidden_dim=2048, bottleneck_dim=256, rounds=3),
}


def synthetic_cifar(n: int, seed: int = 0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    img = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    lab = torch.arange(n) % 10
    return Dataset(
        "synthetic",
        Split(img, lab),
        Split(img[:512], lab[:512]),
        [str(i) for i in range(10)],
        (0.5, 0.5, 0.5),
        (0.25, 0.25, 0.25),
    )


def plain_epoch(cfg: distill.DistillConfig, data: Dataset, device: torch.device) -> float:
    """The reference: the loop a researcher would write by hand. Returns seconds."""
    teacher = build_teacher(cfg, data.in_shape).to(device).eval().requires_grad_(False)
    student = distill.init_student(teacher, "alpha", alpha=cfg.alpha, seed=cfg.noise_seed).to(device).train()
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=0.0)
    mean = torch.tensor(data.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(data.std, device=device).view(1, -1, 1, 1)
    perm = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0)).to(data.train.images.device)
    sync = sync_for(device)
    sync()
    t0 = time.perf_counter()
    for i in range(len(perm) // cfg.batch_size):
        idx = perm[i * cfg.batch_size : (i + 1) * cfg.batch_size]
        x = (data.train.images[idx].to(device).float() / 255 - mean) / std
        with torch.no_grad():
            target = F.softmax(teacher(x), dim=-1)
        loss = torch.sum(-target * F.log_softmax(student(x), dim=-1), dim=-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    sync()
    return time.perf_counter() - t0


# dense tensor-core peaks (TFLOP/s) from the vendors' data sheets, by a substring of the device name
PEAK_TFLOPS = {
    "H200": {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "H100 PCIe": {"bf16": 756.0, "tf32": 378.0, "fp32": 51.2},
    "H100": {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "A100": {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5},
}


def peak_tflops(device: torch.device) -> dict[str, float] | None:
    """The card's data-sheet peaks (bf16, tf32, fp32 TFLOP/s), None when unknown or on the CPU."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peaks in PEAK_TFLOPS.items():
        if key in name:
            return peaks
    return None


def step_flops(cfg: distill.DistillConfig, data: Dataset, device: torch.device) -> float:
    """Model FLOPs of one distillation step (teacher forward, student forward and backward, loss), counted
    by ``torch.utils.flop_counter`` on one batch (matmuls and convolutions; elementwise work not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    teacher = build_teacher(cfg, data.in_shape).to(device).eval().requires_grad_(False)
    student = distill.init_student(teacher, "alpha", alpha=cfg.alpha, seed=cfg.noise_seed).to(device).train()
    x = data.train.images[: cfg.batch_size].to(device).float()
    with FlopCounterMode(display=False) as counter:
        with torch.no_grad():
            target = F.softmax(teacher(x), dim=-1)
        torch.sum(-target * F.log_softmax(student(x), dim=-1), dim=-1).mean().backward()
    return float(counter.get_total_flops())


def ours_epoch(cfg: distill.DistillConfig, data: Dataset, tmp: Path) -> tuple[float, float]:
    """(epoch seconds as recorded by distill, seconds of the whole call)."""
    out = tmp / f"bench-{time.perf_counter_ns()}.rts"
    t0 = time.perf_counter()
    store = run(cfg, out, data=data, progress=False)
    whole = time.perf_counter() - t0
    seconds = float(store.metrics.seconds.sel(epoch=1))
    shutil.rmtree(out) if out.is_dir() else out.unlink()  # a store is a folder (older versions: one file)
    return seconds, whole


def run_bench(size: str = "full", device: str = "auto", rounds: int | None = None, **over: Any) -> list[dict]:
    """The benchmark as records (see bench.common.record)."""
    p = {**SIZES[size], **over}
    dev = resolve_device(device)
    data = synthetic_cifar(p["n"]).to(dev)
    cfg = distill.DistillConfig(
        dataset="synthetic",
        arch=p["arch"],
        arch_options=p["arch_options"],
        out_dim=p["out_dim"],
        hidden_dim=p["hidden_dim"],
        bottleneck_dim=p["bottleneck_dim"],
        lr=1e-4,
        epochs=1,
        batch_size=p.get("batch_size", 256 if size == "full" else 64),
        probes=[],
        save_every=0,
        device=str(dev),
        precision=p.get("precision", "fp32"),
        compile=p.get("compile", False),
    )
    whole: list[float] = []
    reset_gpu_peak()
    with tempfile.TemporaryDirectory() as tmp:

        def ours() -> float:
            sec, w = ours_epoch(cfg, data, Path(tmp))
            whole.append(w)
            return sec

        times = interleaved(
            {"plain loop": lambda: plain_epoch(cfg, data, dev), "distill.distill": ours},
            rounds or p["rounds"],
            sync=sync_for(dev),
            warmup=dev.type == "cuda",
            timer={"plain loop": lambda r: r, "distill.distill": lambda r: r},
        )
    n = (p["n"] // cfg.batch_size) * cfg.batch_size
    what = (
        f"one distillation epoch, {cfg.arch} {cfg.arch_options or ''} + DINO head {cfg.out_dim}, {n} images "
        f"3x32x32, batch {cfg.batch_size}, {cfg.precision}{' compiled' if cfg.compile else ''}"
    )
    rec = record(
        "distill_epoch",
        what,
        times,
        ours="distill.distill",
        baseline="plain loop",
        target=">= 0.95",
        goal=lambda r: r >= 0.95,
        device=str(dev),
        size=size,
        ours_whole_call_s=whole[1:] if len(whole) > 1 else whole,
        arch=cfg.arch,
        precision=cfg.precision,
        notes=[
            "epoch time as distill records it; whole call adds model build, the one teacher "
            "entropy pass per run and the store writes"
        ],
    )
    rec["images_per_s"] = {k: n / v for k, v in rec["median_s"].items()}
    flops = step_flops(cfg, data, dev) * (n // cfg.batch_size)
    rec["model_flops_per_epoch"] = flops
    rec["achieved_tflops"] = {k: flops / v / 1e12 for k, v in rec["median_s"].items()}
    peaks = peak_tflops(dev)
    if peaks is not None:
        ref = "bf16" if cfg.precision == "bf16" else "tf32" if torch.backends.cudnn.allow_tf32 else "fp32"
        rec["peak_tflops"], rec["peak_reference"] = peaks[ref], ref
        rec["fraction_of_peak"] = rec["achieved_tflops"]["distill.distill"] / peaks[ref]
    return [rec]


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=list(SIZES), default="full")
    p.add_argument("--arch", default=None)
    p.add_argument("--n", type=int, default=None, help="training images")
    p.add_argument("--out-dim", type=int, default=None)
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--compile", action="store_true")
    p.add_argument("--device", default="auto")
    a = p.parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")
    over = {k: v for k, v in dict(arch=a.arch, n=a.n, out_dim=a.out_dim).items() if v is not None}
    if a.arch and a.arch != "convnet":
        over["arch_options"] = {}
    recs = run_bench(a.size, a.device, a.rounds, precision=a.precision, compile=a.compile, **over)
    for r in recs:
        print(show(r))
        print(
            "  model FLOP/s achieved: "
            + ", ".join(f"{k} {v:.2f} TFLOP/s" for k, v in r["achieved_tflops"].items())
            + (
                f"; card peak {r['peak_tflops']} TFLOP/s ({r['peak_reference']}): {100 * r['fraction_of_peak']:.1f} %"
                if "peak_tflops" in r
                else ""
            )
        )
    return recs


if __name__ == "__main__":
    main()
