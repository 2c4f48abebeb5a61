"""Figure 8: lottery tickets by iterative magnitude pruning (IMP) with rewinding, against the
random-prune and random-reinit baselines. Rewind targets: the distilled student (no labels used),
the random initialisation it came from (epoch 0 of the same distillation run), and early steps of a
supervised run from that initialisation (Frankle et al.'s late rewinding). Every level retrains with
labels; best test accuracy per level, mean +- std over seeds, on a percent-remaining axis.

    python -m analyses.lottery --preset smoke|cpu|gpu|gpu-quick
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from analyses import common
from distill.config import SupervisedConfig
from distill.schema import result_dataset
from distill.store import Store

CURVES = ["student", "student random_prune", "student random_reinit", "init", "early steps"]
PRESETS: dict[str, dict[str, Any]] = {
    "smoke": common.SMOKE(
        **dict(seeds=[0], levels=2, fraction=0.5, step=1),  # step: the one step of 64 images at batch 64
        distill=dict(common.SMOKE_NET, probes=[]),
        sup=common.sgd(0.02, 64),
    ),
    # Fashion-MNIST, 2,000 images, BN-free 4x32 ConvNet distilled 2 epochs; 5 levels of 50 % pruning
    # (100, 50, 25, 12.5, 6.25 % of the weights left), 1 epoch of SGD per level; rewind step 10 (of 32)
    "cpu": common.Scale(subset=2000, n_test=2000)(
        **dict(seeds=[0, 1, 2], levels=5, fraction=0.5, step=10),
        distill=common.small_net(epochs=2, probes=[]),
        sup=common.sgd(0.02, 64),
    ),
    # Fashion-MNIST, all 60,000 training and 10,000 test images: BN-free 4x32 ConvNet students of 3 seeds
    # distilled 2 epochs (1,876 steps), probed at start and end to check that each passed its teacher; 5 levels
    # of 50 % pruning, each level 2 epochs of SGD lr 0.05 (x0.1 after epoch 1), batch 64, no augmentation;
    # rewinding to the student and to its init only (the claim's two curves; no baselines, no early steps)
    "cpu-long": common.Scale(subset=None, n_test=None)(
        **dict(seeds=[0, 1, 2], levels=5, fraction=0.5, step=10, curves=["student", "init"]),
        distill=common.small_net(epochs=2, probe_every=0, probe_subset=10000),
        sup=common.sgd(0.05, 64, "none", epochs=2) | {"milestones": [1]},
    ),
    # the paper's Figure 8: ResNet18 on CIFAR-10, students of 150 epochs, 20 % of the weights per level down to
    # 0.47 % (level 0 unpruned, then 24 prunings: 25 levels), each level retrained with the paper's recipe
    # (160 epochs SGD, x0.1 at 80 and 120), fp32
    "gpu": common.CIFAR10(
        **dict(seeds=[0], levels=25, fraction=0.2, step=400),
        distill=dict(arch="resnet18", epochs=150, probes=[], device="auto", save_every=0, resume_every=1),
        sup=dict(),
    ),
}
PRESETS["gpu-quick"] = common.variant(
    PRESETS["gpu"],
    levels=8,
    distill=dict(epochs=20, precision="bf16"),
    sup=common.QUICK_CHILDREN,
)
PRESET_NOTES = {
    "gpu-quick": "8 levels (to 21 % of the weights, not 0.5 %) of 4 epochs each instead of 160, students "
    "of 20 epochs instead of 150, bf16 autocast"
}


# --recipe reference: what the authors' finetune.py does that the paper's text does not say. It prunes
# every parameter (biases, norm parameters and the classifier too) and retrains with torch's AdamW at its
# defaults (lr 1e-3, weight decay 0.01), no schedule and no augmentation; the preset's epochs are kept.
# (Its optional linear-head pre-training, pre_epochs_clf, is SupervisedConfig.head_epochs, 0 by default
# as there.)
REFERENCE_SUPERVISED: dict[str, Any] = dict(
    optimizer="adamw", lr=1e-3, weight_decay=0.01, milestones=[], warmup_epochs=0.0, augment="none"
)
RECIPE_FLAG = {
    "--recipe": dict(
        choices=("paper", "reference"),
        default="paper",
        stem=True,
        help="paper: conv/linear weights pruned, SGD with the paper's schedule (default); reference: as the "
        "authors' finetune.py, every parameter pruned, AdamW (lr 1e-3, decay 0.01), no schedule, no "
        "augmentation (written to lottery_reference.nc)",
    )
}


def compute(pre: dict[str, Any], ctx: common.Context) -> xr.Dataset:
    from landscape.lottery_sweep import LotteryUnit

    recipe = ctx.options.get("recipe") or "paper"
    if recipe == "reference":
        pre = {**pre, "sup": {**pre["sup"], **REFERENCE_SUPERVISED}, "prunable": "all"}
    tag = "" if recipe == "paper" else f"{recipe}-"

    data = common.load(pre["dataset"], ctx, subset=pre["subset"], n_test=pre["n_test"])
    seeds = list(pre["seeds"])
    sparsity = None
    configs: dict[str, Any] = {}
    dcfgs = {
        s: common.run_config(ctx, pre["dataset"], pre["subset"], s, probe_seed=False, **pre["distill"]) for s in seeds
    }
    stores = common.distil_all([(dcfgs[s], ctx.store(f"distill-s{s}.rts")) for s in seeds], ctx, data)
    curves = list(pre.get("curves", CURVES))
    baselines = [b for b in ("random_prune", "random_reinit") if f"student {b}" in curves]
    units = []  # per seed: IMP rewinding to the student, and to its init / early steps (independent)
    for s, store in zip(seeds, stores):
        scfg = SupervisedConfig(**{**pre["sup"], "data_seed": s, "aug_seed": s, "device": ctx.device})
        configs[f"distill-s{s}"], configs[f"supervised-s{s}"] = dcfgs[s], scfg
        kw = dict(
            levels=pre["levels"],
            prune_fraction=pre["fraction"],
            cfg=scfg.to_dict(),
            seed=s,
            device=ctx.device,
            prunable=pre.get("prunable", "weights"),
        )
        init_kw: dict[str, Any] = {"rewind": "start"}
        if "early steps" in curves:
            init_kw = {"rewind": ["start", "step"], "rewind_step": pre["step"]}
        units += [
            LotteryUnit(
                (str(store.path), store.epochs[-1]),
                data,
                str(ctx.store(f"{tag}imp-student-s{s}.rts")),
                {**kw, "rewind": "start", "baselines": baselines},
            ),
            LotteryUnit((str(store.path), 0), data, str(ctx.store(f"{tag}imp-init-s{s}.rts")), {**kw, **init_kw}),
        ]
    common.sweep(units, ctx)
    best = np.full((len(curves), len(seeds), pre["levels"]), np.nan)
    for si in range(len(seeds)):
        a, b = (Store(u.out).read_result("lottery") for u in units[2 * si : 2 * si + 2])
        by_curve = {"student": a, "init": b, "early steps": b}
        for ci, c in enumerate(curves):
            r = by_curve.get(c, a).best_accuracy.sel(rewind="step" if c == "early steps" else "start")
            if "method" in r.dims:
                r = r.sel({"method": c.split(" ")[1] if c.startswith("student ") else "imp"})  # not sel(method=)
            best[ci, si] = r.values
        sparsity = a.sparsity.values
    probes = [common.last_probes(st) for st in stores]
    extra = {}
    if all(p is not None for p in probes):
        extra["student_probe_accuracy"] = (("seed", "model", "probe"), np.stack([p.values for p in probes]))
    ds = result_dataset(
        "analyses.lottery",
        {"best_accuracy": (("curve", "seed", "level"), best), **extra},
        {
            "curve": curves,
            "seed": seeds,
            **({"model": probes[0].model.values, "probe": probes[0].probe.values} if extra else {}),
            "level": np.arange(pre["levels"]),
            "sparsity": ("level", sparsity),
        },
        attrs={
            "curves": "student: IMP rewinding to the distilled student; random_prune / random_reinit: "
            "baselines at the student's masks' sparsity; init: IMP rewinding to epoch 0 of the "
            "distillation (the random init); early steps: rewinding to step "
            f"{pre['step']} of level 0's supervised training from that init",
            "prune_fraction": float(pre["fraction"]),
            "rewind_step": int(pre["step"]),
            "prunable": "weights (conv and linear weights, Frankle et al.)",
            **common.provenance(ctx, configs, seeds, recipe),
        },
    )
    m = ds.best_accuracy.mean("seed")
    print("\nremaining %  " + "  ".join(f"{c:>22}" for c in curves))
    for lvl in ds.level.values:
        print(
            f"{100 * float(ds.sparsity.sel(level=lvl)):10.2f}   "
            + "  ".join(f"{100 * float(m.sel(curve=c, level=lvl)):22.2f}" for c in curves)
        )
    return ds


def plot(ds: xr.Dataset, path: Any) -> None:
    fig, axes = common.figure(1, 1, width=6.0, height=3.8)
    ax = axes[0]
    styles = {
        "student": dict(color="C2", marker="o"),
        "student random_prune": dict(color="C2", marker="x", ls=":"),
        "student random_reinit": dict(color="C2", marker="+", ls="--"),
        "init": dict(color="C0", marker="s"),
        "early steps": dict(color="C1", marker="^"),
    }
    x = common.pct(ds.sparsity)
    for c in ds.curve.values:
        label = f"rewind: {c}".replace("_", " ")
        common.band(ax, x, common.pct(ds.best_accuracy.sel(curve=c)), label, **styles.get(str(c), {}))
    ax.set(xscale="log", xlabel="weights remaining [%] (log scale)", ylabel="best test accuracy [%]")
    ax.set_xticks(np.asarray(x), [f"{v:.3g}" for v in np.asarray(x)])
    ax.minorticks_off()
    ax.invert_xaxis()
    common.legend(ax)
    title = "Figure 8: iterative magnitude pruning, rewinding to the student, the init or early steps"
    common.finish(fig, path, common.title(ds, title, "band: ±1 std over seeds"))


main = common.script(__name__, PRESETS, compute, plot, options=RECIPE_FLAG)
