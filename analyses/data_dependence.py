"""Figure 4: how the student depends on the data it is distilled on. Distillation-set size n from 500
upward, real images against Gaussian noise of the same shape and statistics, probes always on the full
CIFAR-10 training split (50k) and test split (10k). The paper does not say whether small n ran the 150
epochs or a fixed step budget, so the smallest n runs both: ``regime`` "epochs" (every n the same number
of epochs) and "steps" (every n the same number of optimiser steps, that of the largest n).

    python -m analyses.data_dependence --preset smoke|cpu|gpu|gpu-quick
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import xarray as xr

from analyses import common
from distill.config import DistillConfig
from distill.schema import result_dataset

PRESETS: dict[str, dict[str, Any]] = {
    "smoke": dict(ns=[32, 64], seeds=[0], epochs=1, n_test=50, probe_subset=100, cfg=common.SMOKE_NET),
    # BN-free 4x32 ConvNet (no BN: the teacher needs no recalibrated control), 2 epochs at the largest n
    "cpu": dict(
        ns=[500, 2000], seeds=[0, 1, 2], epochs=2, n_test=None, probe_subset=None, cfg=common.small_net(bn=False)
    ),
    # the paper's Figure 4 at CIFAR-10's sizes: VGG11, n up to 50k, the step budget of 150 epochs of 50k, fp32
    "gpu": dict(
        ns=[500, 1000, 5000, 10_000, 50_000],
        seeds=[0, 1, 2],
        epochs=150,
        n_test=None,
        probe_subset=None,
        cfg=dict(arch="vgg11", device="auto", save_every=0, resume_every=1),
    ),
}
PRESETS["gpu-quick"] = common.variant(PRESETS["gpu"], epochs=20, cfg=dict(precision="bf16"))
PRESET_NOTES = {"gpu-quick": "a budget of 20 epochs of 50k instead of 150, bf16 autocast"}


def compute(pre: dict[str, Any], ctx: common.Context) -> xr.Dataset:
    ns, seeds, probes = list(pre["ns"]), list(pre["seeds"]), ["knn", "linear", "linear_std"]
    full = common.load("cifar10", ctx, n_test=pre["n_test"])  # the probe set: always the full training split
    probe_data = full if pre["probe_subset"] is None else full.subset(pre["probe_subset"], 0)
    batch = pre["cfg"].get("batch_size", 256)
    budget = pre["epochs"] * math.ceil(max(ns) / batch)  # steps of the largest n
    acc = np.full((2, 2, len(ns), len(seeds), len(common.MODELS), len(probes)), np.nan)
    steps = np.zeros((2, 2, len(ns)), dtype=np.int64)
    configs: dict[str, DistillConfig] = {}
    runs: list[tuple[tuple[int, int, int, int], str, DistillConfig]] = []
    for di, kind in enumerate(("real", "gaussian")):
        for ri, regime in enumerate(("epochs", "steps")):
            for ni, n in enumerate(ns):
                if regime == "steps" and n != min(ns):
                    continue  # only the smallest n differs between the regimes (largest n: identical)
                epochs = pre["epochs"] if regime == "epochs" else max(1, round(budget / math.ceil(n / batch)))
                steps[di, ri, ni] = epochs * math.ceil(n / batch)
                for si, s in enumerate(seeds):
                    dataset = "cifar10" if kind == "real" else "gaussian:cifar10"
                    cfg = common.run_config(ctx, dataset, n, s, probes=[], **{**pre["cfg"], "epochs": epochs})
                    tag = f"{kind}-n{n}-e{epochs}-s{s}"
                    configs[tag] = cfg
                    runs.append(((di, ri, ni, si), tag, cfg))
    # the distillations are independent: through --executor when given; then the probes, here
    stores = common.distil_all([(cfg, ctx.store(f"{tag}.rts")) for _, tag, cfg in runs], ctx)
    for (index, tag, cfg), store in zip(runs, stores):
        r = common.probe_run(cfg.replace(probes=probes), store, probe_data, ctx, tag)
        acc[index] = common.probes_array(r, probes).values
        print(f"{tag}: student " + ", ".join(f"{p} {100 * r['student'][p]:.2f}" for p in probes), flush=True)
    return result_dataset(
        "analyses.data_dependence",
        {
            "accuracy": (("data", "regime", "n", "seed", "model", "probe"), acc),
            "steps": (("data", "regime", "n"), steps),
            "paper_real": ("paper_n", [41.76, 45.94, 46.18, 47.66, 48.43, 51.36]),
            "paper_gaussian": ("paper_n_noise", [16.47, 16.35, 16.27]),
        },
        coords={
            "data": ["real", "gaussian"],
            "regime": ["epochs", "steps"],
            "n": ns,
            "seed": seeds,
            "model": common.MODELS,
            "probe": probes,
            "paper_n": [500, 1000, 2000, 5000, 10_000, 50_000],
            "paper_n_noise": [500, 5000, 50_000],
        },
        attrs={
            "probe_train_images": int(len(probe_data.train)),
            "probe_test_images": int(len(probe_data.test)),
            "step_budget": int(budget),
            "regimes": "epochs: every n runs the preset's epochs; steps: the "
            "smallest n runs as many steps as the largest n",
            **common.provenance(ctx, configs, seeds, "paper"),
        },
    )


def plot(ds: xr.Dataset, path: Any) -> None:
    probes = [str(p) for p in ds.probe.values]
    fig, axes = common.figure(len(probes), 1, width=4.0, height=3.3)
    acc = common.pct(ds.accuracy)
    for ax, p in zip(axes, probes):
        a = acc.sel(probe=p, regime="epochs")
        for kind, color in (("real", "C2"), ("gaussian", "C3")):
            steps = {r: int(ds.steps.sel(data=kind, regime=r).max()) for r in ("epochs", "steps")}
            label = f"student, {kind} images ({steps['epochs']} steps at max n)"
            common.band(ax, ds.n, a.sel(data=kind, model="student"), label, color=color, marker="o")
            st = acc.sel(probe=p, regime="steps", data=kind, model="student").dropna("n", how="all")
            if st.sizes["n"]:
                label = f"student, {kind}, smallest n at the step budget ({steps['steps']} steps)"
                style = dict(color=color, marker="D", ls="none", ms=6, mfc="none")
                ax.errorbar(st.n, st.mean("seed"), yerr=st.std("seed"), label=label, **style)
        t = a.sel(data="real", model="teacher")
        ax.axhline(float(t.mean()), **{**common.STYLE["teacher"], "marker": ""}, label="teacher")
        ax.axhline(float(a.sel(data="real", model="input").mean()), **common.STYLE["input"], label="input pixels")
        if p == "linear":
            ax.plot(ds.paper_n, ds.paper_real, "k*--", ms=5, lw=0.8, label="paper, real (VGG11, 150 epochs)")
            ax.plot(ds.paper_n_noise, ds.paper_gaussian, "kx:", ms=5, lw=0.8, label="paper, Gaussian noise")
        common.log_ticks(
            ax, sorted(set(ds.n.values.tolist()) | (set(ds.paper_n.values.tolist()) if p == "linear" else set()))
        )
        ax.tick_params(axis="x", labelrotation=45)
        ax.set(title=common.PROBE_LABEL.get(p, p), xlabel="distillation images n", ylabel="test accuracy [%]")
    common.legend(axes[-1], every_panel=True)  # the paper's points are on the linear panel only
    title = "Figure 4: students distilled on n real or Gaussian-noise images"
    images = int(ds.attrs.get("probe_train_images", 0))
    note = f"probes fit on {images:,} CIFAR-10 training images; band: ±1 std over seeds"
    common.finish(fig, path, common.title(ds, title, note))


main = common.script(__name__, PRESETS, compute, plot)
