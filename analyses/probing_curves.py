"""Figure 1: probe accuracy over the epochs of distillation, for the teacher, the BN-recalibrated
teacher (the control beyond the paper), the student and the input pixels, mean +- std over seeds.

The networks have BatchNorm (the paper's ResNet18 has), so the recalibrated teacher differs from
the teacher. ``--recipe``-style choice: the preset's ``recipe`` (paper: alpha = 1e-10; reference: an
exact copy, weight decay 0.01 on biases and norm parameters, a fresh probe seed every epoch).

    python -m analyses.probing_curves --preset smoke|cpu|gpu|gpu-quick
"""

from __future__ import annotations

from typing import Any

import xarray as xr

from analyses import common

PRESETS: dict[str, dict[str, Any]] = {
    "smoke": common.SMOKE(
        seeds=[0],
        recipe="paper",
        cfg=dict(
            common.SMOKE_NET,
            arch_options={"width": 8, "depth": 2, "bn": True},
            epochs=1,
            probe_every=1,
            probe_subset=100,
            probes=["knn"],
        ),
    ),
    # Fashion-MNIST, 4x32 ConvNet with BN, 2,000 images, 3 epochs, probes every epoch on a 5k training subset
    "cpu": common.Scale(subset=2000, n_test=None)(
        seeds=[0, 1, 2],
        recipe="paper",
        cfg=common.small_net(bn=True, epochs=3, probe_every=1, probe_subset=5000),
    ),
    # the paper's Figure 1: ResNet18 on the full CIFAR-10, 150 epochs, fp32, probes on the full split every 5 epochs
    "gpu": common.CIFAR10(
        seeds=[0, 1, 2],
        recipe="paper",
        cfg=dict(arch="resnet18", epochs=150, probe_every=5, device="auto", save_every=10, resume_every=1),
    ),
}
PRESETS["gpu-quick"] = common.variant(PRESETS["gpu"], cfg=dict(epochs=30, precision="bf16"))
PRESET_NOTES = {"gpu-quick": "30 epochs instead of the paper's 150, bf16 autocast"}


def compute(pre: dict[str, Any], ctx: common.Context) -> xr.Dataset:
    data = common.load(pre["dataset"], ctx, subset=pre["subset"], n_test=pre["n_test"])
    configs = {
        f"seed{s}": common.run_config(ctx, pre["dataset"], pre["subset"], s, recipe=pre["recipe"], **pre["cfg"])
        for s in pre["seeds"]
    }
    stores = common.distil_all([(cfg, ctx.store(f"{tag}.rts")) for tag, cfg in configs.items()], ctx, data)
    rows = [store.metrics[["accuracy", "loss", "kl"]] for store in stores]
    ds = common.stack_seeds(rows, pre["seeds"])
    ds.attrs = {
        "probe_train_images": int(pre["cfg"].get("probe_subset") or 0) or "full training split",
        **common.provenance(ctx, configs, pre["seeds"], pre["recipe"]),
    }
    last = ds.accuracy.dropna("epoch", how="all").isel(epoch=-1)
    print("\nlast epoch, mean +- std over seeds (%):")
    for m in last.model.values:
        print(f"{str(m):<11}" + "".join(f"  {p} {common.pm(last.sel(model=m, probe=p))}" for p in last.probe.values))
    return ds


def plot(ds: xr.Dataset, path: Any) -> None:
    acc = common.pct(ds.accuracy.dropna("epoch", how="all"))
    probes = [str(p) for p in acc.probe.values]
    fig, axes = common.figure(len(probes), 1, width=4.0, height=3.3)
    for ax, p in zip(axes, probes):
        for m in common.MODELS:
            if m in acc.model.values:
                common.band(ax, acc.epoch, acc.sel(model=m, probe=p), common.LABEL[m], **common.STYLE[m])
        ax.set(title=common.PROBE_LABEL.get(p, p), xlabel="distillation epoch", ylabel="test accuracy [%]")
    common.legend(axes[-1])
    title = "Figure 1: probe accuracy of the student over distillation, against its random teacher"
    common.finish(fig, path, common.title(ds, title, "band: ±1 std over seeds"))


main = common.script(__name__, PRESETS, compute, plot)
