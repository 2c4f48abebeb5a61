"""Curvature of the supervised loss (``landscape.hessian``): top Hessian eigenvalues (Lanczos) and trace
(Hutch++) along the straight line between two supervised children, for children of a distilled student
and of the random initialisation; the same across the levels of lottery-ticket pruning of the student;
and the spectral density (stochastic Lanczos quadrature) at one child of each start.

One distillation run gives the student (last epoch) and the random initialisation (epoch 0); each gets
``children`` children trained with labels that differ only in data order (``landscape.instability``),
so every pair of children is one path. The Hessian is that of the mean training cross-entropy over
``batches`` fixed mini-batches (BN-free networks: no BN policy needed).

    python -m analyses.hessian --preset smoke|cpu|gpu
"""

from __future__ import annotations

import itertools
import sys
from typing import Any

import numpy as np
import xarray as xr

from analyses import common
from distill.config import DistillConfig, SupervisedConfig

PRESETS: dict[str, dict[str, Any]] = {
    "smoke": dict(
        dataset="fashion-mnist",
        subset=100,
        n_test=50,
        children=2,
        alphas=2,
        k=1,
        batches=1,
        batch_size=50,
        probes=3,
        tol=1e-2,
        levels=2,
        slq_runs=1,
        slq_steps=4,
        distill=dict(common.SMOKE_NET, probes=[]),
        sup=dict(epochs=1, milestones=[], lr=0.05, augment="none", batch_size=50),
    ),
    # Fashion-MNIST, 1,000 images, BN-free 4x16 ConvNet distilled 2 epochs; 3 children per start (3 pairs), 1
    # epoch of SGD (lr 0.05); 3 points per path, top 2 eigenvalues (tol 1e-3) and 12 Hutch++ probes on 256
    # training images; 3 IMP levels of 50 %, 1 epoch each; SLQ 2 runs x 20 steps
    "cpu": dict(
        dataset="fashion-mnist",
        subset=1000,
        n_test=500,
        children=3,
        alphas=3,
        k=2,
        batches=1,
        batch_size=256,
        probes=12,
        tol=1e-3,
        levels=3,
        slq_runs=2,
        slq_steps=20,
        distill=common.small_net(width=16, epochs=2, probes=[]),
        sup=dict(epochs=1, milestones=[], lr=0.05, augment="none", batch_size=64),
    ),
    # VGG11 (BN-free) on CIFAR-10: students of 10 epochs, children of 4 epochs, 8 x 256 images per Hessian
    "gpu": dict(
        dataset="cifar10",
        subset=None,
        n_test=None,
        children=3,
        alphas=7,
        k=5,
        batches=8,
        batch_size=256,
        probes=60,
        tol=1e-3,
        levels=6,
        slq_runs=5,
        slq_steps=60,
        distill=dict(arch="vgg11", epochs=10, probes=[], device="auto", save_every=0),
        sup=dict(epochs=4, milestones=[2, 3], lr=0.05),
    ),
}
STARTS = ("student", "init")


def compute(pre: dict[str, Any], ctx: common.Context) -> xr.Dataset:
    import landscape
    from landscape.hessian import hessian, hessian_along_path, hessian_over_levels, smoothed_density

    data = common.load(pre["dataset"], ctx, subset=pre["subset"], n_test=pre["n_test"])
    dcfg = DistillConfig(
        dataset=pre["dataset"],
        subset=pre["subset"],
        data_root=ctx.root if "cifar" in pre["dataset"] else None,
        **{"save_every": 0, **pre["distill"], "device": ctx.device},
    )
    scfg = SupervisedConfig(**{**pre["sup"], "device": ctx.device})
    store = common.distil(dcfg, ctx.store("distill.h5"), data=data)
    hkw = dict(
        batches=pre["batches"], batch_size=pre["batch_size"], trace_probes=pre["probes"], tol=pre["tol"],
        device=ctx.device,
    )  # fmt: skip
    pairs = [f"{i}-{j}" for i, j in itertools.combinations(range(pre["children"]), 2)]
    paths, densities, accuracy = [], [], []
    for start, ref in zip(STARTS, ((store, store.epochs[-1]), (store, 0))):
        path = ctx.store(f"children-{start}.h5")
        kids = landscape.instability(
            ref, data, children=pre["children"], cfg=scfg, alphas=2, store=path, device=ctx.device
        )
        accuracy.append(kids.child_test_accuracy.values)
        rows = []
        for pair in pairs:
            i, j = pair.split("-")
            ds = hessian_along_path(
                (path, f"children/{i}"), (path, f"children/{j}"), data, pre["alphas"], pre["k"], **hkw
            )
            rows.append(ds[["eigenvalue", "trace", "trace_stderr", "loss", "hvps"]])
            print(
                f"{start} children {pair}: top eigenvalue along the path "
                + " ".join(f"{v:.3f}" for v in ds.eigenvalue.isel(eigen=0).values)
                + ", trace "
                + " ".join(f"{v:.2f}" for v in ds.trace.values),
                flush=True,
            )
        paths.append(xr.concat(rows, xr.DataArray(pairs, dims="pair", name="pair"), combine_attrs="drop"))
        d = hessian(
            (path, "children/0"), data, k=0, slq_runs=pre["slq_runs"], slq_steps=pre["slq_steps"],
            **{**hkw, "trace_probes": 0},
        )  # fmt: skip
        densities.append(d[["slq_node", "slq_weight"]])
    ds = xr.concat(paths, xr.DataArray(list(STARTS), dims="start", name="start"), combine_attrs="drop")
    ds = ds.rename({v: f"path_{v}" for v in ds.data_vars})
    slq = xr.concat(densities, xr.DataArray(list(STARTS), dims="start", name="start"), combine_attrs="drop")
    nodes, weights = slq.slq_node.values, slq.slq_weight.values
    lo, hi = np.nanmin(nodes), np.nanmax(nodes)
    grid = np.linspace(lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo), 201)
    sigma = max((hi - lo) / 100, 1e-12)
    ds["slq_node"], ds["slq_weight"] = slq.slq_node, slq.slq_weight
    ds["density"] = xr.DataArray(
        np.stack([smoothed_density(nodes[s], weights[s], grid, sigma) for s in range(len(STARTS))]),
        dims=("start", "lambda"),
        coords={"lambda": ("lambda", grid, {"long_name": "Hessian eigenvalue", "units": "nats"})},
        attrs={"long_name": "spectral density (SLQ, Gaussian-smoothed)", "units": "1/nats", "sigma": sigma},
    )
    imp = ctx.store("imp.h5")
    landscape.lottery(
        (store, store.epochs[-1]), data, levels=pre["levels"], prune_fraction=0.5, cfg=scfg, rewind="start",
        baselines=[], store=imp, seed=0, device=ctx.device, progress=False,
    )  # fmt: skip
    lv = hessian_over_levels(imp, data, "start", pre["k"], **hkw)
    ds["level_eigenvalue"] = lv.eigenvalue
    ds["level_trace"], ds["level_loss"], ds["remaining"] = lv.trace, lv.loss, lv.remaining
    ds["child_test_accuracy"] = xr.DataArray(
        np.stack(accuracy),
        dims=("start", "child"),
        attrs={"long_name": "test accuracy of each child after training", "units": "fraction"},
    )
    for v in ("path_eigenvalue", "path_trace", "path_loss", "level_eigenvalue", "level_trace", "level_loss"):
        src = lv if v.startswith("level") else paths[0]
        ds[v].attrs = dict(src[v.split("_", 1)[1]].attrs)
    ds.attrs = {
        "hessian_of": "mean training cross-entropy over the batches, all parameters (torch.func jvp of grad)",
        "hessian_batches": int(pre["batches"]),
        "hessian_batch_size": int(pre["batch_size"]),
        "eigen_method": "scipy.sparse.linalg.eigsh (Lanczos), which=LA",
        "eigsh_tol": float(pre["tol"]),
        "trace_method": "hutch++",
        "trace_probes": int(pre["probes"]),
        "path_bn_policy": "none (BN-free networks)",
        "slq_runs": int(pre["slq_runs"]),
        "slq_steps": int(pre["slq_steps"]),
        "slq_at": "child 0 of each start",
        "levels": "IMP of the student (rewind to the student, 50 % of the remaining weights per level), "
        "Hessian restricted to the unpruned weights",
        "children": f"{pre['children']} per start, supervised, data_seed = aug_seed = 0..{pre['children'] - 1}",
        **common.provenance(ctx, {"distill": dcfg, "supervised": scfg}, list(range(pre["children"])), "paper"),
    }
    for lvl in ds.level.values:
        print(
            f"IMP level {int(lvl)} ({100 * float(ds.remaining.sel(level=lvl)):.1f} % left): top eigenvalue "
            f"{float(ds.level_eigenvalue.sel(level=lvl, eigen=0)):.3f}, "
            f"trace {float(ds.level_trace.sel(level=lvl)):.2f}",
            flush=True,
        )
    return ds


def plot(ds: xr.Dataset, path: Any) -> None:
    fig, axes = common.figure(4, 1, width=3.9, height=3.3)
    for i, s in enumerate(ds.start.values):
        style = dict(color=f"C{i}", marker="o")
        label = f"children of the {s}"
        common.band(axes[0], ds.alpha, ds.path_eigenvalue.sel(start=s).isel(eigen=0), label, dim="pair", **style)
        common.band(axes[1], ds.alpha, ds.path_trace.sel(start=s), label, dim="pair", **style)
        axes[3].plot(ds["lambda"], ds.density.sel(start=s), color=f"C{i}", label=label)
    axes[0].set(xlabel="alpha between two children", ylabel="top Hessian eigenvalue [nats]", title="along the path")
    axes[1].set(xlabel="alpha between two children", ylabel="Hessian trace [nats]", title="along the path")
    rem = common.pct(ds.remaining.values)
    for e in ds.eigen.values:
        axes[2].plot(rem, ds.level_eigenvalue.sel(eigen=e), marker="o", label=f"eigenvalue {int(e) + 1}")
    ax2 = axes[2].twinx()
    ax2.plot(rem, ds.level_trace, "k--", marker="s", ms=4, label="trace")
    ax2.set_ylabel("Hessian trace [nats] (dashed)")
    axes[2].set_xscale("log")
    axes[2].invert_xaxis()
    axes[2].set(xlabel="weights remaining [%]", ylabel="top eigenvalues [nats]", title="IMP levels of the student")
    axes[2].legend(fontsize=7)
    axes[3].set_yscale("log")
    axes[3].set(xlabel="Hessian eigenvalue [nats]", ylabel="density (SLQ)", title="spectral density at child 0")
    axes[3].set_ylim(bottom=max(1e-6, float(ds.density.max()) * 1e-6))
    common.legend(axes[1])
    common.finish(fig, path, f"Curvature: {common.subtitle(ds)} (band: +-1 std over child pairs)")


main = common.script(__name__, PRESETS, compute, plot)

if __name__ == "__main__":
    sys.exit(main())
