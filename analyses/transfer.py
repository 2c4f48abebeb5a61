"""Tables 2 and 4 with what is offline: distil on one class split of a dataset, probe on another.

For each pair ``source -> target`` the student is distilled on the source classes only and probed on
the target classes (their own training and test images), beside a student distilled on the target
classes themselves (in-domain), the teacher, the BN-recalibrated teacher and the input pixels.
Pairs: CIFAR-10 classes 0-4 -> 5-9 and Fashion-MNIST 0-4 -> 5-9 (MNIST, the paper's other offline
target, is not on this machine).

    python -m analyses.transfer --preset smoke|cpu|gpu|gpu-quick
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from analyses import common
from distill.config import DistillConfig
from distill.schema import result_dataset
from distill.store import Store
from landscape.locality import DistillUnit

A, B = [0, 1, 2, 3, 4], [5, 6, 7, 8, 9]
PRESETS: dict[str, dict[str, Any]] = {
    "smoke": dict(
        pairs={"fashion-mnist 0-4 -> 5-9": ("fashion-mnist", A, B)},
        subset=64,
        n_test=50,
        probe_subset=100,
        seeds=[0],
        cfg=common.SMOKE_NET,
    ),
    # 1,000 source images, 2 epochs, 4x32 ConvNet with BN; probes on 5,000 training images of the target classes
    "cpu": dict(
        pairs={"cifar10 0-4 -> 5-9": ("cifar10", A, B), "fashion-mnist 0-4 -> 5-9": ("fashion-mnist", A, B)},
        subset=1000,
        n_test=None,
        probe_subset=5000,
        seeds=[0, 1, 2],
        cfg=common.small_net(bn=True, epochs=2),
    ),
    # Tables 2 and 4's protocol on CIFAR-10's class splits: VGG11 students of 150 epochs, fp32
    "gpu": dict(
        pairs={"cifar10 0-4 -> 5-9": ("cifar10", A, B)},
        subset=None,
        n_test=None,
        probe_subset=None,
        seeds=[0, 1, 2],
        cfg=dict(arch="vgg11", epochs=150, device="auto", save_every=0, resume_every=1),
    ),
}
PRESETS["gpu-quick"] = common.variant(PRESETS["gpu"], cfg=dict(epochs=30, precision="bf16"))
PRESET_NOTES = {"gpu-quick": "students of 30 epochs instead of 150, bf16 autocast"}
MODELS = ["teacher", "teacher_bn", "student_transfer", "student_in_domain", "input"]


def compute(pre: dict[str, Any], ctx: common.Context) -> xr.Dataset:
    probes, seeds, pairs = ["knn", "linear", "linear_std"], list(pre["seeds"]), list(pre["pairs"])
    acc = np.full((len(pairs), len(seeds), len(MODELS), len(probes)), np.nan)
    configs = {}
    runs: list[tuple[int, int, str, str, DistillConfig, Any, str]] = []  # pair, seed, role, tag, cfg, probe data, store
    units: dict[str, DistillUnit] = {}  # by store: a class split shared by two pairs is distilled once
    for pi, pair in enumerate(pairs):
        name, src, tgt = pre["pairs"][pair]
        full = common.load(name, ctx, n_test=pre["n_test"])
        target = common.keep_classes(full, tgt)
        if pre["probe_subset"]:
            target = target.subset(pre["probe_subset"], 0)
        for si, s in enumerate(seeds):
            for role, classes in (("transfer", src), ("in_domain", tgt)):
                train = common.keep_classes(full, classes)
                train = train.subset(min(pre["subset"], len(train.train)), s) if pre["subset"] else train
                cfg = common.run_config(ctx, name, None, s, probes=[], **pre["cfg"])
                tag = f"{name}-{''.join(map(str, classes))}-s{s}"
                configs[tag] = cfg.to_dict() | {"classes": classes}
                out = str(ctx.store(f"{tag}.rts"))
                runs.append((pi, si, role, f"{tag}-on-{''.join(map(str, tgt))}", cfg, target, out))
                units.setdefault(out, DistillUnit(cfg.to_dict(), out, train))
    common.sweep(list(units.values()), ctx)  # the distillations are independent: through --executor when given
    got: dict[tuple[int, int], dict[str, Any]] = {}
    for pi, si, role, probe_tag, cfg, target, out in runs:
        r = common.probe_run(cfg.replace(probes=probes), Store(out), target, ctx, probe_tag)
        g = got.setdefault((pi, si), {})
        g[f"student_{role}"] = r["student"]
        g.update({k: r[k] for k in ("teacher", "teacher_bn", "input")} if role == "transfer" else {})
    for (pi, si), g in got.items():
        acc[pi, si] = [[g[m][p] for p in probes] for m in MODELS]
        print(
            f"{pairs[pi]} seed {seeds[si]}: " + "; ".join(f"{m} linear {100 * g[m]['linear']:.2f}" for m in MODELS),
            flush=True,
        )
    return result_dataset(
        "analyses.transfer",
        {"accuracy": (("pair", "seed", "model", "probe"), acc)},
        coords={"pair": pairs, "seed": seeds, "model": MODELS, "probe": probes},
        attrs={
            "models": "student_transfer: distilled on the source classes; student_in_domain: on the "
            "target classes; teacher: the transfer student's teacher (the same seed)",
            **common.provenance(ctx, configs, seeds, "paper"),
        },
    )


LABELS = {
    "teacher": "teacher",
    "teacher_bn": "teacher, BN recalibrated",
    "student_transfer": "student, distilled on the source classes",
    "student_in_domain": "student, distilled on the target classes",
    "input": "input pixels",
}


def plot(ds: xr.Dataset, path: Any) -> None:
    probes = [str(p) for p in ds.probe.values]
    pairs = [str(p) for p in ds.pair.values]
    fig, axes = common.figure(len(pairs), 1, width=5.0, height=3.4)
    colors = {"teacher": "C0", "teacher_bn": "C1", "student_transfer": "C2", "student_in_domain": "C4", "input": "0.5"}
    w = 0.16
    for ax, pair in zip(axes, pairs):
        a = common.pct(ds.accuracy.sel(pair=pair))
        x = np.arange(len(probes))
        for i, m in enumerate(map(str, ds.model.values)):
            label, bars = LABELS.get(m, m.replace("_", " ")), a.sel(model=m)
            ax.bar(x + (i - 2) * w, bars.mean("seed"), w, yerr=bars.std("seed"), color=colors.get(m), label=label)
        ax.set_xticks(x, [common.PROBE_SHORT.get(p, p) for p in probes])
        ax.set_xlabel("probe")
        name, _, classes = pair.partition(" ")
        ax.set(title=f"{common.dataset_name(name)}, classes {classes.replace('->', '→')}")
        ax.set(ylabel="target test accuracy [%]")
    common.legend(axes[-1])
    title = "Tables 2/4 offline: transfer of students distilled on the source classes to the target classes"
    common.finish(fig, path, common.title(ds, title, "error bars: std over seeds"))


main = common.script(__name__, PRESETS, compute, plot)
