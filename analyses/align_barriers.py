"""Barriers between independently initialised networks before and after permutation alignment
(Git Re-Basin / REPAIR at CPU scale), across widths, on Fashion-MNIST.

For every width and seed, two classifiers are trained with labels from different random
initialisations (and data orders); the straight path between them is evaluated on the test split
(i) as is, (ii) after weight matching, (iii) after activation matching and (iv) after weight
matching with REPAIR. Networks: MLPs with two hidden layers of the given width (and, in the gpu
preset, ConvNets).

    python -m analyses.align_barriers --preset cpu     # writes results/align_barriers.nc + .png
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

PRESETS = {
    "smoke": dict(
        arch="mlp",
        widths=[8, 16],
        seeds=1,
        subset=500,
        test=300,
        alphas=5,
        sup=dict(epochs=1, milestones=[], lr=0.05, augment="none", batch_size=64, weight_decay=0.0),
    ),
    "cpu": dict(
        arch="mlp",
        widths=[16, 64, 256],
        seeds=3,
        subset=5_000,
        test=2_000,
        alphas=11,
        sup=dict(epochs=4, milestones=[], lr=0.05, augment="none", batch_size=128, weight_decay=5e-4),
    ),
    "gpu": dict(
        arch="convnet",
        widths=[16, 32, 64, 128, 256],
        seeds=3,
        subset=None,
        test=None,
        alphas=21,
        sup=dict(epochs=20, milestones=[10, 15], lr=0.05, augment="flip_crop", batch_size=128),
    ),
}
METHODS = ("none", "weights", "activations", "weights+repair")


def _build(arch: str, width: int, in_shape, num_classes: int, seed: int):
    from distill.models import build_model, seeded

    opts = {"widths": [width, width]} if arch == "mlp" else {"width": width, "depth": 3, "bn": False}
    with seeded(seed):
        return build_model(arch, in_shape, head="linear", num_classes=num_classes, **opts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=tuple(PRESETS), default="cpu")
    p.add_argument("--out", default=None, help="result file (default: results/align_barriers.nc; smoke: runs/)")
    a = p.parse_args(argv)
    import torch
    import xarray as xr

    import distill
    from analyses.common import save
    from distill.config import SupervisedConfig
    from distill.data import load_dataset
    from distill.supervised import train_supervised
    from landscape.paths import barrier, linear_path

    torch.set_num_threads(min(2, torch.get_num_threads()))
    pre = PRESETS[a.preset]
    out = Path(a.out or ("runs/align_barriers_smoke.nc" if a.preset == "smoke" else "results/align_barriers.nc"))
    data = load_dataset("fashion-mnist", subset=pre["subset"], seed=0)
    device = "cpu" if a.preset != "gpu" else "auto"
    widths, seeds, alphas = pre["widths"], list(range(pre["seeds"])), pre["alphas"]
    err = np.full((len(widths), len(seeds), len(METHODS), alphas), np.nan)
    loss = np.full_like(err, np.nan)
    acc = np.full((len(widths), len(seeds), 2), np.nan)
    seconds = np.zeros((len(widths), len(seeds)))
    for i, w in enumerate(widths):
        for j, s in enumerate(seeds):
            t0 = time.perf_counter()
            nets = []
            for k in range(2):  # independent init and data order: seeds 2s and 2s + 1
                cfg = SupervisedConfig(**pre["sup"], data_seed=2 * s + k, aug_seed=2 * s + k, device=device)
                net = _build(pre["arch"], w, data.in_shape, data.num_classes, 1000 * s + k)
                res = train_supervised(net, data, cfg, progress=False)
                acc[i, j, k] = res["test_accuracy"]
                nets.append(net.eval())
            for m, method in enumerate(METHODS):
                align = None if method == "none" else method.split("+")[0]
                ds = linear_path(
                    nets[0],
                    nets[1],
                    data,
                    alphas=alphas,
                    splits=("test",),
                    device=device,
                    max_examples=pre["test"],
                    align=align,
                    repair=method.endswith("repair"),
                )
                err[i, j, m], loss[i, j, m] = ds.error.values[:, 0], ds.loss.values[:, 0]
            seconds[i, j] = time.perf_counter() - t0
            b = 100 * (err[i, j].max(-1) - (err[i, j, :, 0] + err[i, j, :, -1]) / 2)
            print(
                f"width {w:5d} seed {s}: test acc {100 * acc[i, j, 0]:.2f} / {100 * acc[i, j, 1]:.2f} %; error "
                "barrier [pp] " + ", ".join(f"{n} {v:.2f}" for n, v in zip(METHODS, b)) + f"  ({seconds[i, j]:.0f} s)",
                flush=True,
            )

    alpha = np.linspace(0, 1, alphas)
    res = xr.Dataset(
        {
            "error": (("width", "seed", "alignment", "alpha"), err, {"long_name": "test error", "units": "fraction"}),
            "loss": (
                ("width", "seed", "alignment", "alpha"),
                loss,
                {"long_name": "test cross-entropy", "units": "nats"},
            ),
            "end_accuracy": (
                ("width", "seed", "end"),
                acc,
                {"long_name": "test accuracy of the trained end point", "units": "fraction"},
            ),
            "seconds": (("width", "seed"), seconds, {"long_name": "wall time of the pair", "units": "s"}),
        },
        coords={
            "width": ("width", np.asarray(widths), {"long_name": "hidden width", "units": "units"}),
            "seed": ("seed", np.asarray(seeds), {"long_name": "pair seed", "units": "1"}),
            "alignment": ("alignment", np.array(METHODS)),
            "alpha": ("alpha", alpha, {"long_name": "interpolation coefficient", "units": "1"}),
            "end": ("end", np.array(["a", "b"])),
        },
        attrs={
            "analysis": "align_barriers",
            "preset": a.preset,
            "dataset": "fashion-mnist",
            "train_subset": str(pre["subset"]),
            "test_examples": str(pre["test"] or "all"),
            "arch": pre["arch"],
            "arch_detail": "mlp: two hidden layers of the width; convnet: depth 3, no BN",
            "supervised_config": SupervisedConfig(**pre["sup"], device=device).to_json(),
            "pair": "net a: init seed 1000 s, data seed 2 s; net b: init seed 1000 s + 1, data seed 2 s + 1",
            "alignment_methods": "none; weights = weight matching; activations = activation matching on 8 x 256 "
            "training images; weights+repair = weight matching then REPAIR at every alpha",
            "bn_policy": "none (BN-free networks)",
            "device": device,
            "toolkit_version": distill.__version__,
            "torch_version": str(torch.__version__),
        },
    )
    heights = barrier(res)
    res["barrier_error"] = heights.barrier_error
    res["barrier_loss"] = heights.barrier_loss
    res.attrs.update({k: v for k, v in heights.attrs.items() if k.startswith("barrier")})
    save(res, out)
    figure(res, out.with_suffix(".png"))
    print("\nerror barrier [percentage points], mean +- std over seeds")
    print(f"{'width':>6}" + "".join(f"{m:>22}" for m in METHODS))
    for w in widths:
        b = 100 * res.barrier_error.sel(width=w)
        print(
            f"{w:>6}"
            + "".join(
                f"{float(b.sel(alignment=m).mean()):14.2f} +- {float(b.sel(alignment=m).std()):4.2f}" for m in METHODS
            )
        )
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


def figure(res, path: Path) -> None:
    """Left: error barrier vs width per alignment (mean +- std over seeds); right: the test error
    along the path at the largest width, seed 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for m in res.alignment.values:
        b = 100 * res.barrier_error.sel(alignment=m)
        ax1.errorbar(res.width, b.mean("seed"), yerr=b.std("seed"), marker="o", capsize=3, label=str(m))
        ax2.plot(res.alpha, 100 * res.error.sel(alignment=m).isel(width=-1, seed=0), marker=".", label=str(m))
    ax1.set(
        xscale="log",
        xlabel="hidden width",
        ylabel="error barrier [pp]",
        title=f"{res.attrs['arch']} on Fashion-MNIST, {res.sizes['seed']} seed(s)",
    )
    ax1.set_xticks(res.width.values, [str(int(w)) for w in res.width.values])
    ax1.minorticks_off()
    ax2.set(xlabel="alpha", ylabel="test error [%]", title=f"path at width {int(res.width[-1])}, seed 0")
    ax1.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
