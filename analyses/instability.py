"""Figure 9: linear mode connectivity of supervised children. From several checkpoints of one
distillation run (epoch 0 = the random initialisation, alpha = 1e-10 from the teacher, then distilled
students) and from an independent random initialisation, N children are trained with labels that
differ only in data order (and augmentation); the test error along the straight line between every pair
(BN reset) gives the error barrier. Distributions over pairs; the grid is recorded in ``n_alphas``.

    python -m analyses.instability --preset smoke|cpu|cpu-long|gpu|gpu-quick
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import xarray as xr

from analyses import common
from distill.schema import labels

PRESETS: dict[str, dict[str, Any]] = {
    "smoke": common.SMOKE(
        seeds=[0],
        children=2,
        alphas=3,
        epochs=[0, 1],
        distill=dict(common.SMOKE_NET, probes=[], save_epochs=[1]),
        sup=common.sgd(0.05, 64, "flip_crop"),
    ),
    # Fashion-MNIST, 2,000 images, BN-free 4x32 ConvNet distilled 3 epochs; 3 children (3 pairs) per start,
    # 1 epoch of SGD lr 0.08 with flip + crop; 11 points per path on 2,000 test images
    "cpu": common.Scale(subset=2000, n_test=2000)(
        children=3,
        alphas=11,
        epochs=[0, 1, 3],
        distill=common.small_net(epochs=3, probes=[], save_epochs=[1]),
        sup=common.sgd(0.08, 64, "flip_crop"),
    ),
    # Fashion-MNIST, all 60,000 training and 10,000 test images: BN-free 4x32 ConvNet students of 3 seeds
    # distilled 2 epochs (1,876 steps) and probed at start and end (k-NN, linear, linear_std on 10,000 training
    # images) to check that each passed its teacher; 3 children per start and seed, each 2 epochs of SGD lr 0.05
    # (x0.1 after epoch 1), batch 64, no augmentation (data order alone differs); 11 points per path
    "cpu-long": common.Scale(subset=None, n_test=None)(
        seeds=[0, 1, 2],
        children=3,
        alphas=11,
        epochs=[0, 2],
        distill=common.small_net(epochs=2, probe_every=0, probe_subset=10000, save_epochs=[]),
        sup=common.sgd(0.05, 64, "none", epochs=2) | {"milestones": [1]},
    ),
    # the paper's Figure 9: ResNet18 / CIFAR-10, a student of 150 epochs, 5 children of each start trained with
    # the paper's recipe (160 epochs SGD, x0.1 at 80 and 120), 50 points per path, fp32
    "gpu": common.CIFAR10(
        children=5,
        alphas=50,
        epochs=[0, 10, 150],
        distill=dict(arch="resnet18", epochs=150, probes=[], device="auto", save_epochs=[10], resume_every=1),
        sup=dict(),
    ),
}
PRESETS["gpu-quick"] = common.variant(
    PRESETS["gpu"],
    alphas=30,
    epochs=[0, 10, 20],
    distill=dict(epochs=20, precision="bf16"),
    sup=common.QUICK_CHILDREN,
)
PRESET_NOTES = {
    "gpu-quick": "children of 4 epochs instead of 160, a student of 20 epochs instead of 150 (starts 0, 10, "
    "20), 30 points per path instead of 50, bf16 autocast"
}


def _students(pre: dict[str, Any], ctx: common.Context, data: Any) -> list[tuple[int, Any, Any, Any]]:
    """Per seed of the preset: (seed, the student's DistillConfig, its store, the store of an independent
    random init). A preset without ``seeds`` has one student of the config's default seeds."""
    seeds = pre.get("seeds")
    jobs, out = [], []
    for s in seeds or [None]:
        fields = {"save_every": 0, **pre["distill"]}
        dcfg = common.run_config(ctx, pre["dataset"], pre["subset"], s, **fields)
        tag = "" if s is None else f"-s{s}"
        indep = dcfg.replace(init="independent", epochs=1, save_epochs=[])
        if seeds is not None:  # only its epoch 0 (the init) is used: its one epoch on a few images, unprobed
            indep = indep.replace(probes=[], subset=256)
        # (without seeds: the settings of the presets' earlier stores, unchanged)
        jobs += [(dcfg, ctx.store(f"distill{tag}.rts")), (indep, ctx.store(f"independent{tag}.rts"))]
        out.append((dcfg.seed, dcfg))
    stores = common.distil_all(jobs, ctx, data)
    return [(seed, cfg, stores[2 * i], stores[2 * i + 1]) for i, (seed, cfg) in enumerate(out)]


def compute(pre: dict[str, Any], ctx: common.Context) -> xr.Dataset:
    import landscape

    data = common.load(pre["dataset"], ctx, subset=pre["subset"], n_test=pre["n_test"])
    _, scfg = common.child_settings(pre, ctx)
    per_seed, probes, configs = [], [], {}
    for seed, dcfg, store, indep in _students(pre, ctx, data):
        tag = "" if "seeds" not in pre else f"s{seed}-"
        configs["distill" if "seeds" not in pre else f"distill-s{seed}"] = dcfg
        starts = {f"student epoch {e}" if e else "student epoch 0 (random init)": (store, e) for e in pre["epochs"]}
        starts["independent random init"] = (indep, 0)
        rows = []
        for name, ref in starts.items():
            ds = landscape.instability(
                ref,
                data,
                children=pre["children"],
                cfg=scfg,
                alphas=pre["alphas"],
                store=ctx.store(f"children-{tag}{name.replace(' ', '_')}.rts"),
                splits=("test",),
                device=ctx.device,
                executor=ctx.executor,
                progress=False,
            )
            rows.append(
                ds[["error", "loss", "barrier_error", "barrier_loss", "child_test_accuracy"]]
                .sel(split="test", drop=True)
                .expand_dims(start=[name])
            )
            b = 100 * ds.barrier_error.sel(split="test").values
            acc = 100 * ds.child_test_accuracy.values
            print(
                f"seed {seed} {name:<32} error barrier {np.mean(b):6.2f} +- {np.std(b):5.2f} (pairs "
                f"{np.round(b, 2).tolist()}; children at {np.round(acc, 1).tolist()} % test accuracy)",
                flush=True,
            )
        per_seed.append(xr.concat(rows, "start", combine_attrs="drop_conflicts").expand_dims(seed=[seed]))
        probes.append(common.last_probes(store))
    out = xr.concat(per_seed, "seed", combine_attrs="drop_conflicts")
    if all(p is not None for p in probes):
        out["student_probe_accuracy"] = xr.concat(probes, "seed").assign_coords(seed=out.seed)
        out["student_probe_accuracy"].attrs.update(labels("analyses.instability", "student_probe_accuracy"))
    out.attrs.update(
        {
            "n_alphas": int(out.sizes["alpha"]),
            "bn_policy": "reset",
            "split": "test",
            **common.provenance(ctx, {**configs, "supervised": scfg}, [int(s) for s in out.seed.values], "paper"),
            "children": json.dumps(list(range(pre["children"]))),
        }
    )
    return out


def plot(ds: xr.Dataset, path: Any) -> None:
    fig, axes = common.figure(2, 1, width=5.6, height=3.6)
    if "seed" in ds.dims:  # every pair of every seed's children
        ds = ds.stack(pairs=("seed", "pair")).drop_vars(["seed", "pair", "pairs"]).rename(pairs="pair")
    starts = [str(s) for s in ds.start.values]
    for i, s in enumerate(starts):
        err = common.pct(ds.error.sel(start=s))
        common.band(axes[0], ds.alpha, err, s, dim="pair", color=f"C{i}", marker="")
        b = common.pct(ds.barrier_error.sel(start=s).values)
        axes[1].scatter(np.full(len(b), i) + np.linspace(-0.1, 0.1, len(b)), b, color=f"C{i}", zorder=3)
        axes[1].errorbar(i + 0.25, b.mean(), yerr=b.std(), color=f"C{i}", marker="_", ms=12, capsize=3)
    axes[0].set(xlabel="α between two children", ylabel="test error [%]", title="error along the path")
    axes[1].axhline(2.0, color="0.5", ls=":", label="2 % (Frankle et al.'s stability threshold)")
    axes[1].set_xticks(
        range(len(starts)), [s.replace(" (", "\n(") for s in starts], rotation=30, ha="right", fontsize=7
    )
    axes[1].set(
        ylabel="error barrier [%] per pair",
        title=f"{int(ds.attrs.get('n_alphas', ds.sizes['alpha']))} points per path, BN reset",
    )
    # one legend, right of the last panel: between the panels it sat over the barriers' tick labels
    common.legend(axes[1], every_panel=True)
    title = "Figure 9: instability of children trained from the student, from its init and from independent inits"
    common.finish(fig, path, common.title(ds, title, "band: ±1 std over pairs"))


main = common.script(__name__, PRESETS, compute, plot)
