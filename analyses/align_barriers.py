"""Barriers between independently initialised networks before and after permutation alignment
(Git Re-Basin / REPAIR at CPU scale), across widths, on Fashion-MNIST.

For every width and seed, two classifiers are trained with labels from different random
initialisations (and data orders); the straight path between them is evaluated on the test split
(i) as is, (ii) after weight matching, (iii) after activation matching and (iv) after weight
matching with REPAIR. Networks: MLPs with two hidden layers of the given width (and, in the gpu
preset, ConvNets).

    python -m analyses.align_barriers --preset smoke|cpu|gpu [--executor SPEC]
                                                       # writes results/align_barriers.nc + .png

Each (width, seed) pair is a work unit (:class:`PairUnit`): it trains its two networks, evaluates the
four paths and writes ``runs/align_barriers/<preset>/pair-w<width>-s<seed>.nc``; ``--executor`` runs
the pairs in parallel, and a rerun skips the pairs whose file holds the same settings.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from analyses import common
from analyses.units import Unit
from distill.schema import result_dataset

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


@dataclass(frozen=True)
class PairUnit(Unit):
    """One (width, seed) pair as a work unit (:mod:`landscape.executors`): plain data, picklable. It
    trains nets a (init seed 1000 seed, data seed 2 seed) and b (1000 seed + 1, 2 seed + 1) and writes
    the test error (fraction) and loss (nats) along the four paths, dims (alignment, alpha), and
    the end points' test accuracy, dim (end,), to ``out``. ``data``: the Fashion-MNIST subset (None:
    loaded here, e.g. on a worker)."""

    arch: str
    width: int
    seed: int
    subset: int | None
    test: int | None
    alphas: int
    sup: dict
    device: str
    out: str
    data: Any = None

    def run(self) -> xr.Dataset:
        """Train the pair, evaluate the four paths and return the result."""
        from distill.config import SupervisedConfig
        from distill.data import load_dataset
        from distill.supervised import train_supervised
        from landscape.paths import linear_path

        t0 = time.perf_counter()
        data = self.data if self.data is not None else load_dataset("fashion-mnist", subset=self.subset, seed=0)
        nets, acc = [], []
        for k in range(2):  # independent init and data order: seeds 2s and 2s + 1
            cfg = SupervisedConfig(
                **self.sup, data_seed=2 * self.seed + k, aug_seed=2 * self.seed + k, device=self.device
            )
            net = _build(self.arch, self.width, data.in_shape, data.num_classes, 1000 * self.seed + k)
            acc.append(train_supervised(net, data, cfg, progress=False)["test_accuracy"])
            nets.append(net.eval())
        err, loss = np.full((len(METHODS), self.alphas), np.nan), np.full((len(METHODS), self.alphas), np.nan)
        for m, method in enumerate(METHODS):
            ds = linear_path(
                nets[0], nets[1], data, alphas=self.alphas, splits=("test",), device=self.device,
                max_examples=self.test, align=None if method == "none" else method.split("+")[0],
                repair=method.endswith("repair"),
            )  # fmt: skip
            err[m], loss[m] = ds.error.values[:, 0], ds.loss.values[:, 0]
        seconds = time.perf_counter() - t0
        b = 100 * (err.max(-1) - (err[:, 0] + err[:, -1]) / 2)
        print(
            f"width {self.width:5d} seed {self.seed}: test acc {100 * acc[0]:.2f} / {100 * acc[1]:.2f} %; error "
            "barrier [pp] " + ", ".join(f"{n} {v:.2f}" for n, v in zip(METHODS, b)) + f"  ({seconds:.0f} s)",
            flush=True,
        )
        return xr.Dataset(
            {
                "error": (("alignment", "alpha"), err),
                "loss": (("alignment", "alpha"), loss),
                "end_accuracy": (("end",), np.asarray(acc, dtype=np.float64)),
                "seconds": ((), seconds),
            }
        )


def compute(pre: dict[str, Any], ctx: common.Context) -> xr.Dataset:
    from analyses.align_barriers import PairUnit  # the importable class (not __main__'s) travels to workers
    from distill.config import SupervisedConfig
    from landscape.paths import barrier

    widths, seeds, alphas = list(pre["widths"]), list(range(pre["seeds"])), pre["alphas"]
    # workers load the data themselves (the gpu preset's 60,000 images would travel with every pair)
    data = common.load("fashion-mnist", ctx, subset=pre["subset"]) if ctx.executor is None else None
    shared = dict(arch=pre["arch"], subset=pre["subset"], test=pre["test"], alphas=alphas, sup=dict(pre["sup"]))
    units = {
        (w, s): PairUnit(
            width=w, seed=s, device=ctx.device, out=str(ctx.store(f"pair-w{w}-s{s}.nc")), data=data, **shared
        )
        for w in widths
        for s in seeds
    }
    common.sweep(list(units.values()), ctx)
    rows = [common.stack_seeds([common.open_result(units[(w, s)].out) for s in seeds], seeds) for w in widths]
    grid = common.along("width", widths, rows)  # (width, seed, ...)
    data_vars = {v: (grid[v].dims, grid[v].values) for v in ("error", "loss", "end_accuracy", "seconds")}
    coords = {
        "width": ("width", np.asarray(widths)),
        "seed": ("seed", np.asarray(seeds)),
        "alignment": ("alignment", np.array(METHODS)),
        "alpha": ("alpha", np.linspace(0, 1, alphas)),
        "end": ("end", np.array(["a", "b"])),
    }
    scfg = SupervisedConfig(**pre["sup"], device=ctx.device)
    attrs = {
        "analysis": "align_barriers",
        "dataset": "fashion-mnist",
        "train_subset": str(pre["subset"]),
        "test_examples": str(pre["test"] or "all"),
        "arch": pre["arch"],
        "arch_detail": "mlp: two hidden layers of the width; convnet: depth 3, no BN",
        "supervised_config": scfg.to_json(),
        "pair": "net a: init seed 1000 s, data seed 2 s; net b: init seed 1000 s + 1, data seed 2 s + 1",
        "alignment_methods": "none; weights = weight matching; activations = activation matching on 8 x 256 "
        "training images; weights+repair = weight matching then REPAIR at every alpha",
        "bn_policy": "none (BN-free networks)",
        "device": ctx.device,
        "seconds_note": "wall time of the pair where it ran (a rerun keeps the first run's)",
        **common.provenance(ctx, {"supervised": scfg, "widths": widths, "arch": pre["arch"]}, seeds, "paper"),
    }
    res = result_dataset("analyses.align_barriers", data_vars, coords, attrs)
    heights = barrier(res)
    res["barrier_error"] = heights.barrier_error
    res["barrier_loss"] = heights.barrier_loss
    res.attrs.update({k: v for k, v in heights.attrs.items() if k.startswith("barrier")})
    print("\nerror barrier [percentage points], mean +- std over seeds")
    print(f"{'width':>6}" + "".join(f"{m:>22}" for m in METHODS))
    for w in widths:
        print(f"{w:>6}" + "".join(common.pm(res.barrier_error.sel(width=w, alignment=m), 14) for m in METHODS))
    return res


def plot(res: xr.Dataset, path: Any) -> None:
    """Left: error barrier vs width per alignment (mean +- std over seeds); right: the test error
    along the path at the largest width, seed 0; one legend for both, right of them."""
    fig, (ax1, ax2) = common.figure(2, 1, width=4.6, height=3.6)
    for i, m in enumerate(res.alignment.values):
        b = 100 * res.barrier_error.sel(alignment=m)
        style = dict(color=f"C{i}", marker="o")
        ax1.errorbar(res.width, b.mean("seed"), yerr=b.std("seed"), capsize=3, label=f"alignment: {m}", **style)
        ax2.plot(res.alpha, 100 * res.error.sel(alignment=m).isel(width=-1, seed=0), ms=3, **style)
    ax1.set(xscale="log", xlabel="hidden width", ylabel="error barrier [pp]", title="barrier against width")
    ax1.set_xticks(res.width.values, [str(int(w)) for w in res.width.values])
    ax1.minorticks_off()
    ax2.set(xlabel="α along the path", ylabel="test error [%]", title=f"path at width {int(res.width[-1])}, seed 0")
    common.legend(ax2, every_panel=True)  # the same colours name the alignments on both panels
    title = "Barriers between independently initialised networks, before and after permutation alignment"
    common.finish(fig, path, common.title(res, title, f"{res.sizes['seed']} seeds, error bars: std over seeds"))


main = common.script(__name__, PRESETS, compute, plot)
