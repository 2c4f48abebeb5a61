"""Figure 10: the DINO head's output dimension, 2^0 .. 2^16, and its bottleneck width: probe accuracy
of the distilled student (best over probed epochs), mean +- std over seeds, beside the teacher.

    python -m analyses.head_dim --preset smoke|cpu|gpu|gpu-quick
"""

from __future__ import annotations

from typing import Any

import xarray as xr

from analyses import common
from distill.schema import plain, result_dataset

PRESETS: dict[str, dict[str, Any]] = {
    "smoke": common.SMOKE(
        seeds=[0],
        out_dims=[1, 64],
        bottlenecks=[8, 16],
        bottleneck_out=64,
        cfg=dict(common.SMOKE_NET, probe_every=0, probe_subset=100, probes=["knn"]),
    ),
    # Fashion-MNIST, 1,000 images, BN-free 4x32 ConvNet, 2 epochs; probes on a 5k training subset
    "cpu": common.Scale(subset=1000, n_test=None)(
        seeds=[0, 1, 2],
        out_dims=[1, 16, 256, 4096, 65536],
        bottlenecks=[16, 256],
        bottleneck_out=4096,
        cfg=common.small_net(epochs=2, probe_every=0, probe_subset=5000),
    ),
    # the paper's Figure 10 on CIFAR-10 with VGG11: 100 epochs per point (the paper's ablation length), fp32
    "gpu": common.CIFAR10(
        seeds=[0],
        out_dims=[2**k for k in range(0, 17, 2)],
        bottlenecks=[16, 64, 256, 1024],
        bottleneck_out=65536,
        cfg=dict(arch="vgg11", epochs=100, probe_every=10, device="auto", save_every=0, resume_every=1),
    ),
}
PRESETS["gpu-quick"] = common.variant(PRESETS["gpu"], cfg=dict(epochs=10, probe_every=0, precision="bf16"))
PRESET_NOTES = {"gpu-quick": "10 epochs per point instead of the paper's 100, probes only at the end, bf16 autocast"}


def compute(pre: dict[str, Any], ctx: common.Context) -> xr.Dataset:
    data = common.load(pre["dataset"], ctx, subset=pre["subset"], n_test=pre["n_test"])
    seeds = list(pre["seeds"])
    points = [("out_dim", d) for d in pre["out_dims"]] + [("bottleneck_dim", b) for b in pre["bottlenecks"]]
    rows, configs = {"out_dim": [], "bottleneck_dim": []}, {}
    for field, value in points:
        for s in seeds:
            head = {field: value} if field == "out_dim" else {field: value, "out_dim": pre["bottleneck_out"]}
            fields = {**pre["cfg"], **head}
            configs[f"{field}{value}-s{s}"] = common.run_config(ctx, pre["dataset"], pre["subset"], s, **fields)
    runs = common.distil_all([(cfg, ctx.store(f"{tag}.rts")) for tag, cfg in configs.items()], ctx, data)
    stores = dict(zip(configs, runs))
    for field, value in points:
        per_seed = [common.best_over_epochs(stores[f"{field}{value}-s{s}"].metrics) for s in seeds]
        rows[field].append(common.stack_seeds(per_seed, seeds))
        student = rows[field][-1].sel(model="student").mean("seed")
        print(f"{field} {value}: student " + common.percents(student), flush=True)
    accuracy = {
        "accuracy_out_dim": common.along("out_dim", pre["out_dims"], rows["out_dim"]),
        "accuracy_bottleneck": common.along("bottleneck_dim", pre["bottlenecks"], rows["bottleneck_dim"]),
    }
    return result_dataset(
        "analyses.head_dim",
        {k: (v.dims, v.data, {"statistic": "best_after_epoch0"}) for k, v in accuracy.items()},
        {k: v for a in accuracy.values() for k, v in plain(a.coords).items()},
        {"bottleneck_out_dim": int(pre["bottleneck_out"]), **common.provenance(ctx, configs, seeds, "paper")},
        fill={"bottleneck_out": pre["bottleneck_out"]},
    )


def plot(ds: xr.Dataset, path: Any) -> None:
    probes = [str(p) for p in ds.probe.values]
    fig, axes = common.figure(len(probes), 2, width=3.8, height=3.0)
    for row, (var, dim, label) in enumerate(
        (
            ("accuracy_out_dim", "out_dim", "head output dimension"),
            ("accuracy_bottleneck", "bottleneck_dim", f"bottleneck width, output {ds.attrs.get('bottleneck_out_dim')}"),
        )
    ):
        for j, p in enumerate(probes):
            ax = axes[row * len(probes) + j]
            a = common.pct(ds[var].sel(probe=p))
            for m in common.MODELS:
                common.band(ax, ds[dim], a.sel(model=m), common.LABEL[m], **common.STYLE[m])
            common.log_ticks(ax, ds[dim].values.tolist(), base=2, powers=True)
            ax.set(title=common.PROBE_LABEL.get(p, p), xlabel=label, ylabel="test accuracy [%]")
    common.legend(axes[len(probes) - 1])
    title = "Figure 10: probe accuracy against the projection head's output and bottleneck dimensions"
    common.finish(fig, path, common.title(ds, title, "band: ±1 std over seeds"))


main = common.script(__name__, PRESETS, compute, plot)
