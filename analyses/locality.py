"""Figure 3: probe accuracy of the distilled student against its distance from the teacher at
initialisation, theta_s = ((1 - alpha) theta_t + alpha theta_noise) / sqrt(alpha^2 + (1 - alpha)^2)
(the formula on every parameter, BN scales included), alpha from 0 to 1, for a network with BN
(ResNet-style) and a BN-free one; mean +- std over seeds, beside the teacher, the BN-recalibrated
teacher and the input pixels.

    python -m analyses.locality --preset smoke|cpu|cpu-long|gpu|gpu-quick
"""

from __future__ import annotations

from typing import Any

import xarray as xr

from analyses import common
from distill.schema import labels

PRESETS: dict[str, dict[str, Any]] = {
    "smoke": common.SMOKE(
        alphas=[0.0, 1.0],
        seeds=[0],
        nets={
            "bn": dict(common.SMOKE_NET, arch_options={"width": 8, "depth": 2, "bn": True}),
            "no_bn": common.SMOKE_NET,
        },
        cfg=dict(probe_every=0, probe_subset=100, probes=["knn"]),
    ),
    # Fashion-MNIST, 1,000 images, 2 epochs, probes (start and end) on a 5k training subset
    "cpu": common.Scale(subset=1000, n_test=None)(
        alphas=[0.0, 0.5, 1.0],
        seeds=[0, 1, 2],
        nets={"bn": common.small_net(bn=True), "no_bn": common.small_net(bn=False)},
        cfg=dict(epochs=2, probe_every=0, probe_subset=5000),
    ),
    # the paper's Figure 3: alpha 0, 0.1, ..., 1 for ResNet18 and VGG11 on CIFAR-10 (50k), 3 seeds, 150 epochs, fp32
    "gpu": common.CIFAR10(
        alphas=[round(0.1 * i, 1) for i in range(11)],
        seeds=[0, 1, 2],
        nets={"bn": dict(arch="resnet18"), "no_bn": dict(arch="vgg11")},
        cfg=dict(epochs=150, probe_every=10, device="auto", save_every=0, resume_every=1),
    ),
}
# the cpu preset with its BN-free students trained to the plateau of their probes: 40 epochs (640 steps) on the
# 1,000 images, probed every 5 epochs (a seed-0 BN-free student at alpha 0.5, trained 60 epochs, moved by at most
# 1.3 points on any probe from epoch 15 on); the BN students as in cpu. The result's accuracy_by_epoch shows
# each student's own plateau.
PRESETS["cpu-long"] = common.variant(
    PRESETS["cpu"], nets={"no_bn": common.small_net(bn=False, epochs=40, probe_every=5)}
)
PRESETS["gpu-quick"] = common.variant(PRESETS["gpu"], cfg=dict(epochs=10, probe_every=0, precision="bf16"))
PRESET_NOTES = {"gpu-quick": "10 epochs instead of the paper's 150, probes only at the end, bf16 autocast"}


def compute(pre: dict[str, Any], ctx: common.Context) -> xr.Dataset:
    import landscape

    data = common.load(pre["dataset"], ctx, subset=pre["subset"], n_test=pre["n_test"])
    rows, configs = [], {}
    for net, kw in pre["nets"].items():
        cfg = common.run_config(ctx, pre["dataset"], pre["subset"], **{**pre["cfg"], **kw})  # the net's own win
        configs[net] = cfg
        ds = landscape.locality(
            cfg, alphas=pre["alphas"], seeds=pre["seeds"], out_dir=ctx.store(net, "x").parent, data=data,
            executor=ctx.executor, progress=False,
        )  # fmt: skip
        ds = ds.drop_vars("store", errors="ignore")
        curve = ds.accuracy.dropna("epoch", how="all")
        acc = curve.isel(epoch=-1, drop=True)
        rows.append(
            xr.Dataset(
                {
                    "accuracy": acc,
                    "accuracy_by_epoch": curve.assign_attrs(labels("analyses.locality", "accuracy_by_epoch")),
                    "final_kl": ds.final_kl,
                    "distance_teacher_init": ds.distance_teacher_init,
                }
            ).expand_dims(net=[net])
        )
    out = xr.concat(rows, "net", join="outer", combine_attrs="drop_conflicts")  # nets probed at other epochs
    out.attrs = {
        "nets": "bn: ConvNet/ResNet with BatchNorm; no_bn: BN-free ConvNet/VGG",
        "accuracy_at": "last epoch",
        **common.provenance(ctx, configs, pre["seeds"], "paper"),
    }
    acc = out.accuracy.mean("seed")
    for net in out.net.values:
        teacher = common.percents(acc.sel(net=net, model="teacher").isel(alpha=0))
        print(f"\n{net}: student accuracy (%) per alpha, mean over seeds; teacher {teacher}")
        for al in out.alpha.values:
            print(f"  alpha {float(al):4.2f}: " + common.percents(acc.sel(net=net, alpha=al, model="student"), "6.2f"))
    return out


def plot(ds: xr.Dataset, path: Any) -> None:
    acc = common.pct(ds.accuracy)
    probes = [str(p) for p in acc.probe.values]
    nets = [str(n) for n in acc.net.values]
    fig, axes = common.figure(len(probes), len(nets), width=3.8, height=3.0)
    for i, net in enumerate(nets):
        for j, p in enumerate(probes):
            ax = axes[i * len(probes) + j]
            a = acc.sel(net=net, probe=p)
            for m in common.MODELS:
                common.band(ax, a.alpha, a.sel(model=m), common.LABEL[m], **common.STYLE[m])
            bn = {"bn": "with BN", "no_bn": "without BN"}.get(net, net)
            ax.set(
                title=f"{bn}, {common.PROBE_LABEL.get(p, p)}",
                xlabel="α (init distance from the teacher)",
                ylabel="test accuracy [%]",
            )
    common.legend(axes[len(probes) - 1])
    title = "Figure 3: probe accuracy of students initialised at distance α from the teacher"
    common.finish(fig, path, common.title(ds, title, "band: ±1 std over seeds"))


main = common.script(__name__, PRESETS, compute, plot)
