"""Benchmark: a 21-point linear path with BN reset on a CIFAR-size ConvNet, ours vs the naive way.

The naive way, per alpha: ``load_state_dict`` of the interpolated state,
``torch.optim.swa_utils.update_bn`` over a DataLoader of the BN batches, then evaluation over
a DataLoader (batch 256, ``torch.no_grad``). Ours: ``landscape.linear_path`` with the loop,
vmap and auto backends. Data are synthetic CIFAR-shaped uint8 images (2,048 training images
for the BN reset as 8 batches of 256, 2,000 test images). Images/s counts every image passed
through the network (BN-reset plus evaluation images, times the number of alphas).

    python -m bench.bench_paths                # full run (a few minutes on 2 CPU cores)
    python -m bench.bench_paths --size tiny    # seconds (what the test suite runs)
    python -m bench.bench_paths --arch resnet18 --test-images 10000 --device cuda   # the GPU figure

Each round, every method evaluates the whole path once, methods taking turns (interleaved); the
median per method and the ratio naive/ours are reported (target >= 1.5 for the 21-point path).
"""

from __future__ import annotations

import argparse
import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import update_bn
from torch.utils.data import DataLoader, TensorDataset

from bench.common import interleaved, record, reset_gpu_peak, show, sync_for
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


def _convnet(seed: int, arch: str = "convnet") -> nn.Module:
    torch.manual_seed(seed)
    if arch != "convnet":
        import distill

        return distill.build_model(arch, (3, 32, 32), head="linear", num_classes=10).eval()
    try:
        import distill

        return distill.build_model("convnet", (3, 32, 32), head="linear", num_classes=10).eval()
    except Exception:  # the model registry is optional for this benchmark
        layers: list[nn.Module] = []
        for i in range(4):
            layers += [
                nn.Conv2d(3 if i == 0 else 64, 64, 3, padding=1, bias=False),
                nn.BatchNorm2d(64),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
        return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)).eval()


def _data(n_train: int, n_test: int) -> _Data:
    g = torch.Generator().manual_seed(0)

    def split(n: int) -> _Split:
        return _Split(
            torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8),
            torch.randint(0, 10, (n,), generator=g),
        )

    return _Data("synthetic-cifar", split(n_train), split(n_test), (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))


def _normalise(images: torch.Tensor, data: _Data) -> torch.Tensor:
    mean = torch.tensor(data.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.std).view(1, -1, 1, 1)
    return (images.float() / 255 - mean) / std


def naive_path(
    a: nn.Module,
    b: nn.Module,
    data: _Data,
    alphas: np.ndarray,
    bn_images: int,
    bn_batch_size: int,
    seed: int,
    batch_size: int = 256,
    device: str = "cpu",
) -> np.ndarray:
    """Test loss per alpha, the straightforward way (same BN batches as linear_path)."""
    idx = torch.randperm(len(data.train.labels), generator=torch.Generator().manual_seed(seed))[:bn_images]
    bn_x = _normalise(data.train.images[idx], data).to(device)
    test_x, test_y = _normalise(data.test.images, data).to(device), data.test.labels.to(device)
    model = copy.deepcopy(a).to(device)
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


SIZES = {
    "tiny": dict(alphas=3, bn_batches=1, bn_batch_size=32, test_images=32, rounds=1),
    "full": dict(alphas=21, bn_batches=4, bn_batch_size=256, test_images=1000, rounds=2),
}


def run_bench(
    size: str = "full", device: str = "cpu", rounds: int | None = None, arch: str = "convnet", **over
) -> list[dict]:
    """naive loop vs ``linear_path(backend="auto")`` over the whole path, as records."""
    p = {**SIZES[size], **over}
    bn_images = p["bn_batches"] * p["bn_batch_size"]
    data = _data(bn_images, p["test_images"])
    a, b = _convnet(0, arch).to(device), _convnet(1, arch).to(device)
    grid = np.linspace(0, 1, p["alphas"])
    curves: dict[str, np.ndarray] = {}
    attrs: dict[str, str] = {}

    def naive() -> None:
        curves["naive"] = naive_path(a, b, data, grid, bn_images, p["bn_batch_size"], seed=0, device=device)

    def ours() -> None:
        ds = linear_path(
            a,
            b,
            data,
            alphas=list(grid),
            bn="reset",
            splits=("test",),
            bn_batches=p["bn_batches"],
            bn_batch_size=p["bn_batch_size"],
            bn_seed=0,
            backend="auto",
            device=device,
        )
        curves["ours"] = ds.loss.sel(split="test").values
        attrs.update(
            backend=ds.attrs["backend"], rule=ds.attrs.get("backend_rule", ""), memory_format=ds.attrs["memory_format"]
        )

    reset_gpu_peak()
    times = interleaved(
        {"naive (update_bn + DataLoader)": naive, "linear_path auto": ours},
        rounds or p["rounds"],
        sync=sync_for(device),
        warmup=torch.device(device).type == "cuda",
    )
    n_params = sum(t.numel() for t in a.parameters())
    what = (
        f"{p['alphas']}-point linear path with BN reset ({p['bn_batches']}x{p['bn_batch_size']} images), "
        f"{p['test_images']} test images, {arch} ({n_params:,} parameters)"
    )
    return [
        record(
            "path_bn_reset",
            what,
            times,
            ours="linear_path auto",
            baseline="naive (update_bn + DataLoader)",
            target=">= 1.5",
            goal=lambda r: r >= 1.5,
            device=str(device),
            size=size,
            max_abs_loss_difference=float(np.max(np.abs(curves["ours"] - curves["naive"]))),
            ours_backend=attrs.get("backend"),
            backend_rule=attrs.get("rule"),
            memory_format=attrs.get("memory_format"),
        )
    ]


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=list(SIZES), default="full")
    parser.add_argument("--alphas", type=int, default=None)
    parser.add_argument("--bn-batches", type=int, default=None)
    parser.add_argument("--bn-batch-size", type=int, default=None)
    parser.add_argument("--test-images", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--arch", default="convnet")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    over = {
        k: v
        for k, v in dict(
            alphas=args.alphas,
            bn_batches=args.bn_batches,
            bn_batch_size=args.bn_batch_size,
            test_images=args.test_images,
        ).items()
        if v is not None
    }
    recs = run_bench(args.size, args.device, args.rounds, args.arch, **over)
    for r in recs:
        print(show(r))
    return recs


if __name__ == "__main__":
    main()
