"""Benchmark: a 21-point linear path with BN reset on a CIFAR-size ConvNet, ours vs the naive way.

The naive way, per alpha: ``load_state_dict`` of the interpolated state,
``torch.optim.swa_utils.update_bn`` over a DataLoader of the BN batches, then evaluation over
a DataLoader (batch 256, ``torch.no_grad``). Ours: ``landscape.linear_path`` with the loop,
vmap and auto backends. Data are synthetic CIFAR-shaped uint8 images (2,048 training images
for the BN reset as 8 batches of 256, 2,000 test images). Images/s counts every image passed
through the network (BN-reset plus evaluation images, times the number of alphas).

    python -m bench.bench_paths                # full run (a few minutes on 2 CPU cores)
    python -m bench.bench_paths --bn-batches 4 --test-images 1000 --short vmap,auto   # ~3 minutes
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import update_bn
from torch.utils.data import DataLoader, TensorDataset

from landscape.paths import interpolate_state, linear_path


@dataclass
class _Split:
    images: torch.Tensor
    labels: torch.Tensor


@dataclass
class _Data:
    name: str
    train: _Split
    test: _Split
    mean: tuple
    std: tuple


def _convnet(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    try:
        import distill

        return distill.build_model("convnet", (3, 32, 32), head="linear", num_classes=10).eval()
    except Exception:  # the model registry is optional for this benchmark
        layers: list[nn.Module] = []
        for i in range(4):
            layers += [nn.Conv2d(3 if i == 0 else 64, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)).eval()


def _data(n_train: int, n_test: int) -> _Data:
    g = torch.Generator().manual_seed(0)

    def split(n: int) -> _Split:
        return _Split(torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8),
                      torch.randint(0, 10, (n,), generator=g))

    return _Data("synthetic-cifar", split(n_train), split(n_test), (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))


def _normalise(images: torch.Tensor, data: _Data) -> torch.Tensor:
    mean = torch.tensor(data.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.std).view(1, -1, 1, 1)
    return (images.float() / 255 - mean) / std


def naive_path(a: nn.Module, b: nn.Module, data: _Data, alphas: np.ndarray, bn_images: int,
               bn_batch_size: int, seed: int, batch_size: int = 256) -> np.ndarray:
    """Test loss per alpha, the straightforward way (same BN batches as linear_path)."""
    idx = torch.randperm(len(data.train.labels), generator=torch.Generator().manual_seed(seed))[:bn_images]
    bn_x = _normalise(data.train.images[idx], data)
    test_x, test_y = _normalise(data.test.images, data), data.test.labels
    model = _convnet(0)
    sa, sb = a.state_dict(), b.state_dict()
    losses = []
    for alpha in alphas:
        model.load_state_dict(interpolate_state(sa, sb, float(alpha)))
        update_bn(DataLoader(TensorDataset(bn_x), batch_size=bn_batch_size), model)
        model.eval()
        total = 0.0
        with torch.no_grad():
            for x, y in DataLoader(TensorDataset(test_x, test_y), batch_size=batch_size):
                total += F.cross_entropy(model(x), y, reduction="sum").item()
        losses.append(total / len(test_y))
    return np.array(losses)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alphas", type=int, default=21)
    parser.add_argument("--bn-batches", type=int, default=8)
    parser.add_argument("--bn-batch-size", type=int, default=256)
    parser.add_argument("--test-images", type=int, default=2000)
    parser.add_argument("--backends", default="naive,loop,vmap,auto",
                        help="comma-separated subset of naive,loop,vmap,auto")
    parser.add_argument("--short", default="",
                        help="methods run on every 5th alpha only (images/s stays comparable), e.g. vmap,auto")
    parser.add_argument("--rounds", type=int, default=3,
                        help="methods take turns on interleaved alpha subsets, so load drift hits all alike")
    parser.add_argument("--alpha-chunk", type=int, default=None)
    args = parser.parse_args(argv)

    bn_images = args.bn_batches * args.bn_batch_size
    data = _data(bn_images, args.test_images)
    a, b = _convnet(0), _convnet(1)
    per_alpha = bn_images + args.test_images
    grid = np.linspace(0, 1, args.alphas)
    methods = args.backends.split(",")
    short = set(filter(None, args.short.split(",")))
    own = {m: (grid[::5] if m in short else grid) for m in methods}
    print(f"ConvNet 4x64 + BN ({sum(p.numel() for p in a.parameters()):,} parameters), 3x32x32, "
          f"{args.alphas}-point path, BN reset {args.bn_batches}x{args.bn_batch_size}, "
          f"{args.test_images} test images; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.rounds} interleaved rounds")

    for m in methods:  # warm-up (kernel selection, allocator), not timed
        if m == "naive":
            naive_path(a, b, data, grid[:1], args.bn_batch_size, args.bn_batch_size, seed=0)
        else:
            linear_path(a, b, data, alphas=[0.0], splits=("test",), bn_batches=1, backend=m, device="cpu",
                        max_examples=64)
    seconds = {m: 0.0 for m in methods}
    cpu = {m: 0.0 for m in methods}
    losses: dict[str, dict[float, float]] = {m: {} for m in methods}
    ran = {}
    for r in range(args.rounds):
        for m in methods:
            alphas = own[m][r::args.rounds]
            if len(alphas) == 0:
                continue
            start, start_cpu = time.perf_counter(), time.process_time()
            if m == "naive":
                curve = naive_path(a, b, data, alphas, bn_images, args.bn_batch_size, seed=0)
            else:
                ds = linear_path(a, b, data, alphas=list(alphas), bn="reset", splits=("test",),
                                 bn_batches=args.bn_batches, bn_batch_size=args.bn_batch_size, bn_seed=0,
                                 backend=m, device="cpu", alpha_chunk=args.alpha_chunk)
                curve = ds.loss.sel(split="test").values
                ran[m] = f"{ds.attrs['backend']}, {ds.attrs['memory_format']}"
            seconds[m] += time.perf_counter() - start
            cpu[m] += time.process_time() - start_cpu
            losses[m].update({round(float(x), 9): float(v) for x, v in zip(alphas, curve)})

    rate = {m: len(own[m]) * per_alpha / seconds[m] for m in methods}
    cpu_rate = {m: len(own[m]) * per_alpha / cpu[m] for m in methods}
    print(f"\n{'method':<48} {'alphas':>6} {'wall s':>7} {'images/s':>9} {'x naive':>8} "
          f"{'img/cpu-s':>9} {'x naive':>8} {'max|dloss|':>11}")
    for m in methods:
        label = "naive (update_bn + DataLoader)" if m == "naive" else f"ours backend={m} (ran {ran[m]})"
        ratio = f"{rate[m] / rate['naive']:.2f}" if "naive" in rate else "-"
        cpu_ratio = f"{cpu_rate[m] / cpu_rate['naive']:.2f}" if "naive" in rate else "-"
        diff = "-"
        if "naive" in losses and m != "naive":
            common = [x for x in losses[m] if x in losses["naive"]]
            if common:
                diff = f"{max(abs(losses[m][x] - losses['naive'][x]) for x in common):.1e}"
        print(f"{label:<48} {len(own[m]):>6} {seconds[m]:>7.1f} {rate[m]:>9.0f} {ratio:>8} "
              f"{cpu_rate[m]:>9.0f} {cpu_ratio:>8} {diff:>11}")
    print("images/s: (BN-reset + test images) x alphas / wall seconds; img/cpu-s uses this process's CPU time "
          "(less sensitive to other processes on the machine); max|dloss|: test loss vs naive at shared alphas")


if __name__ == "__main__":
    main()
