"""One distillation epoch: ``distill.distill`` against a plain PyTorch loop doing the same work.

Both run on the same data, model and batch size: teacher forward without grad, student
forward/backward, AdamW step. Ours also tracks the KL, embedding norms and NaN checks.
Reported: images per second and the ratio ours / plain, best of ``--repeats`` alternating runs.

    python -m bench.bench_distill [--arch convnet] [--n 5120] [--out-dim 65536] [--device cpu]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import distill
from distill.data import Dataset, Split
from distill.device import resolve_device
from distill.train import build_teacher, distill as run


def synthetic_cifar(n: int, seed: int = 0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    img = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    lab = torch.arange(n) % 10
    return Dataset("synthetic", Split(img, lab), Split(img[:512], lab[:512]), [str(i) for i in range(10)],
                   (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def plain_epoch(cfg: distill.DistillConfig, data: Dataset, device: torch.device) -> float:
    """The reference: the loop a researcher would write by hand. Returns seconds."""
    teacher = build_teacher(cfg, data.in_shape).to(device).eval().requires_grad_(False)
    student = distill.init_student(teacher, "alpha", alpha=cfg.alpha, seed=cfg.noise_seed).to(device).train()
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=0.0)
    mean = torch.tensor(data.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(data.std, device=device).view(1, -1, 1, 1)
    perm = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for i in range(len(perm) // cfg.batch_size):
        idx = perm[i * cfg.batch_size:(i + 1) * cfg.batch_size]
        x = (data.train.images[idx].to(device).float() / 255 - mean) / std
        with torch.no_grad():
            target = F.softmax(teacher(x), dim=-1)
        loss = torch.sum(-target * F.log_softmax(student(x), dim=-1), dim=-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    sync()
    return time.perf_counter() - t0


def ours_epoch(cfg: distill.DistillConfig, data: Dataset, tmp: Path) -> float:
    out = tmp / f"bench-{time.perf_counter_ns()}.h5"
    store = run(cfg, out, data=data, progress=False)
    seconds = float(store.metrics.seconds.sel(epoch=1))
    out.unlink()
    return seconds


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="convnet")
    p.add_argument("--n", type=int, default=5120, help="training images")
    p.add_argument("--out-dim", type=int, default=65536)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--device", default="auto")
    a = p.parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")
    device = resolve_device(a.device)
    data = synthetic_cifar(a.n).to(device)
    cfg = distill.DistillConfig(dataset="synthetic", arch=a.arch, out_dim=a.out_dim, lr=1e-4, epochs=1,
                                batch_size=a.batch_size, probes=[], save_every=0, device=str(device))
    plain, ours = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(a.repeats):
            plain.append(plain_epoch(cfg, data, device))
            ours.append(ours_epoch(cfg, data, Path(tmp)))
    n = (a.n // a.batch_size) * a.batch_size
    best_plain, best_ours = min(plain), min(ours)
    print(f"device {device}, threads {torch.get_num_threads()}, arch {a.arch}, head out {a.out_dim}, "
          f"{n} images/epoch, batch {a.batch_size}")
    print(f"{'loop':<10}{'seconds':>10}{'images/s':>12}")
    print(f"{'plain':<10}{best_plain:10.2f}{n / best_plain:12.1f}")
    print(f"{'ours':<10}{best_ours:10.2f}{n / best_ours:12.1f}")
    print(f"ratio ours/plain (images/s): {best_plain / best_ours:.3f}   (target >= 0.9)")


if __name__ == "__main__":
    main()
