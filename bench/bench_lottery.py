"""Benchmark: the cost of masking during training, and of one global pruning step.

(a) One supervised epoch (``distill.supervised.train_supervised``, SGD, flip + crop) of a ConvNet
    4 x 64 with BN on 2,560 synthetic 3x32x32 images, batch 256, three ways, same model, data and
    seeds: dense; masked with :func:`landscape.pruning.apply_masks` (a parametrization: forward
    uses ``w * mask``); and the alternative of zeroing masked weights after every optimiser step
    (``on_step`` hook, no parametrization). Each variant runs ``--repeats`` times, interleaved;
    the overhead relative to dense uses the fastest run of each (least disturbed by other load;
    target <= 5 %). "mask arithmetic alone" times just the extra work of the parametrization
    (``w * mask`` forward and backward, once per step) for one epoch's steps.
(b) One global magnitude pruning step (20 % of the remaining weights) over the conv and linear
    weights of ResNet-18 (11.2 M weights), at level 0 and at a later level, on the CPU, beside a
    full ``torch.sort`` of the same magnitudes (the approach the kthvalue selection avoids) and
    random pruning. On a CUDA device the same pruning step runs there too.

    python -m bench.bench_lottery               # about 2 minutes on 2 CPU cores (2 epochs each)
    python -m bench.bench_lottery --threads 1   # see below

On a CPU shared with other busy processes, every small tensor operation can wait milliseconds
for its OpenMP threads, so the handful of tiny extra operations per step that masking adds
(about 10 for this network, microseconds each when the threads are free) is measured much larger
than it is; ``--threads 1`` removes that wait and shows the intrinsic cost.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch

import distill
from bench.common import interleaved, record, reset_gpu_peak, show, sync_for
from distill.config import SupervisedConfig
from distill.data import Dataset, Split
from distill.supervised import train_supervised
from landscape.pruning import apply_masks, full_masks, global_magnitude_prune, random_prune


def _synthetic(n_train: int, n_test: int) -> Dataset:
    g = torch.Generator().manual_seed(0)

    def split(n: int) -> Split:
        return Split(
            torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8),
            torch.randint(0, 10, (n,), generator=g),
        )

    return Dataset(
        "synthetic", split(n_train), split(n_test), [str(i) for i in range(10)], (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    )


def _timed(fn: Callable[[], object], sync: Callable[[], None] = lambda: None) -> float:
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def bench_training(repeats: int, n_train: int, device: str) -> list[tuple[str, float, float, float]]:
    """Rows (variant, min seconds, median seconds, overhead of the min vs dense in %)."""
    data = _synthetic(n_train, 256)
    cfg = SupervisedConfig(epochs=1, milestones=[], batch_size=256, device=device)
    torch.manual_seed(0)
    base = distill.build_model("convnet", (3, 32, 32), head="linear", num_classes=10).to(device)
    masks = global_magnitude_prune(base, full_masks(base), 0.8)  # 20 % of the weights left
    steps = -(-n_train // cfg.batch_size)

    def dense() -> None:
        train_supervised(copy.deepcopy(base), data, cfg, progress=False)

    def parametrized() -> None:
        train_supervised(apply_masks(copy.deepcopy(base), masks), data, cfg, progress=False)

    def hook() -> None:
        model = copy.deepcopy(base)
        pairs = [(model.get_parameter(k), m.to(model.get_parameter(k).dtype)) for k, m in masks.items()]
        with torch.no_grad():
            for p, m in pairs:
                p.mul_(m)

        @torch.no_grad()
        def zero(step: int, _model: torch.nn.Module) -> None:
            for p, m in pairs:
                p.mul_(m)

        train_supervised(model, data, cfg, progress=False, on_step=zero)

    masked = apply_masks(copy.deepcopy(base), masks)
    owners = [(masked.get_submodule(k.rpartition(".")[0]), k.rpartition(".")[2]) for k in masks]

    def mask_arithmetic() -> None:  # what the parametrization adds per epoch: w * mask and its backward
        for _ in range(steps):
            torch.stack([getattr(mod, name).sum() for mod, name in owners]).sum().backward()

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    variants = {
        "dense": dense,
        "masked (parametrization)": parametrized,
        "masked (zero after step hook)": hook,
        "mask arithmetic alone": mask_arithmetic,
    }
    dense()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            times[name].append(_timed(fn, sync))
    ref = min(times["dense"])
    rows = []
    for name, t in times.items():
        extra = min(t) if name == "mask arithmetic alone" else min(t) - ref
        rows.append((name, min(t), statistics.median(t), 100 * extra / ref))
    return rows


def bench_pruning(repeats: int, device: str) -> list[tuple[str, float]]:
    torch.manual_seed(0)
    model = distill.build_model("resnet18", (3, 32, 32), head="linear", num_classes=10).to(device)
    masks = full_masks(model)
    n = sum(m.numel() for m in masks.values())
    later = masks
    for _ in range(5):
        later = random_prune(later, 0.2, seed=1)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def full_sort() -> None:
        torch.sort(torch.cat([model.get_parameter(k).detach().abs().reshape(-1) for k in masks]))

    rows = []
    for name, fn in [
        (
            f"global magnitude prune, level 0 ({n / 1e6:.1f} M weights)",
            lambda: global_magnitude_prune(model, masks, 0.2),
        ),
        ("global magnitude prune, level 5 (32.8 % left)", lambda: global_magnitude_prune(model, later, 0.2)),
        ("random prune, level 0", lambda: random_prune(masks, 0.2, seed=0)),
        ("reference: full torch.sort of |w|", full_sort),
    ]:
        fn()  # warm-up
        rows.append((f"{name} [{device}]", statistics.median([_timed(fn, sync) for _ in range(repeats)])))
    return rows


SIZES = {"tiny": dict(n_train=128, rounds=1), "full": dict(n_train=1280, rounds=3)}


def run_bench(size: str = "full", device: str = "cpu", rounds: int | None = None, **over) -> list[dict]:
    """Dense vs masked (parametrization) supervised epoch, as a record; overhead = ratio - 1."""
    p = {**SIZES[size], **over}
    data = _synthetic(p["n_train"], 256)
    cfg = SupervisedConfig(epochs=1, milestones=[], batch_size=256 if size == "full" else 64, device=device)
    torch.manual_seed(0)
    options = {"width": 8, "depth": 2} if size == "tiny" else {}
    base = distill.build_model("convnet", (3, 32, 32), head="linear", num_classes=10, **options).to(device)
    masks = global_magnitude_prune(base, full_masks(base), 0.8)  # 20 % of the weights left
    reset_gpu_peak()
    times = interleaved(
        {
            "dense": lambda: train_supervised(copy.deepcopy(base), data, cfg, progress=False),
            "masked (parametrization)": lambda: train_supervised(
                apply_masks(copy.deepcopy(base), masks), data, cfg, progress=False
            ),
        },
        rounds or p["rounds"],
        sync=sync_for(device),
        warmup=size != "tiny",
    )
    rec = record(
        "imp_level_masked",
        f"one supervised epoch (SGD, flip + crop), ConvNet 4x64 + BN, "
        f"{p['n_train']} images 3x32x32, 20 % of the weights left",
        times,
        ours="masked (parametrization)",
        baseline="dense",
        target="overhead <= 5 % (ratio >= 0.952)",
        goal=lambda r: 1 / r - 1 <= 0.05,
        device=str(device),
        size=size,
    )
    rec["overhead_pct"] = 100 * (rec["median_s"]["masked (parametrization)"] / rec["median_s"]["dense"] - 1)
    rec["overhead_min_pct"] = 100 * (min(times["masked (parametrization)"]) / min(times["dense"]) - 1)
    return [rec]


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=2, help="timed epochs per variant (median reported)")
    p.add_argument("--n-train", type=int, default=2560, help="training images in the epoch")
    p.add_argument("--device", default="cpu", help="device of the training benchmark (default: cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument(
        "--all-variants",
        action="store_true",
        help="(a) with the hook variant and the mask arithmetic, and (b) the pruning step",
    )
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, CUDA: {torch.cuda.is_available()}")
    if not a.all_variants:
        recs = run_bench("full", a.device, a.repeats, n_train=a.n_train)
        for r in recs:
            print(show(r))
        return recs
    print(f"\n(a) one training epoch, ConvNet 4x64 + BN, {a.n_train} images 3x32x32, batch 256, {a.device}")
    print(f"{'variant':<34}{'min s':>9}{'median s':>10}{'overhead vs dense (min)':>25}")
    for name, low, med, over in bench_training(a.repeats, a.n_train, a.device):
        print(f"{name:<34}{low:9.3f}{med:10.3f}{over:24.1f}%")
    print("\n(b) one pruning step (20 % of the remaining), ResNet-18 conv + linear weights")
    print(f"{'operation':<62}{'ms':>10}")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        for name, sec in bench_pruning(max(a.repeats, 3), dev):
            print(f"{name:<62}{1000 * sec:10.1f}")
    return []


if __name__ == "__main__":
    main()
