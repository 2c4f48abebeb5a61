"""Collapse and escape during random-teacher distillation at CPU scale (Sarnthein et al. 2023):
per epoch, the probe accuracies, the effective rank of the embeddings and the cosine similarity
between the representations of different inputs, layer by layer, for teacher and student.

    python -m analyses.dynamics --preset smoke|cpu|gpu [--executor SPEC]   # writes results/dynamics.nc + .png

The analysis is one distillation run (store ``runs/dynamics/<preset>/distill.rts``, resumed), so it
has no independent units to spread over workers: ``--executor`` only sends that one run to the
executor (e.g. a GPU node through ``submitit:``), and a finished store is not rerun.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from analyses import common
from distill.config import DistillConfig

_BASE = dict(
    common.small_net(width=64, hidden_dim=2048, bottleneck_dim=256),
    dataset="fashion-mnist",
    save_epochs=[],
    probe_every=1,
    probes=["knn", "linear"],
    dynamics=True,
    dynamics_examples=512,
)


def _cfg(**changes: Any) -> DistillConfig:
    """The run: the shared settings with ``changes``."""
    return DistillConfig(**{**_BASE, **changes})


# cfg: the run; n_test: test images kept (None: all), which the probes use when probe_subset is the subset
PRESETS: dict[str, dict[str, Any]] = {
    "smoke": dict(
        n_test=200,
        cfg=_cfg(
            arch_options={"width": 8, "depth": 2, "bn": False},
            **common.SMOKE_HEAD,
            subset=256,
            epochs=2,
            probes=["knn"],
            probe_subset=256,  # the training subset itself: the probes use the cut test split too
            dynamics_examples=64,
        ),
    ),
    # 1,000 images at batch 64: 15 Adam steps per epoch, 14 epochs = 210 steps, probed every epoch;
    # a 32-wide ConvNet (the 64-wide one took ~90 s per epoch on the busy 2-core machine)
    "cpu": dict(n_test=None, cfg=_cfg(subset=1_000, epochs=14, arch_options={"width": 32, "depth": 4, "bn": False})),
    # beyond the paper (the follow-up's minimal setup): VGG11 on 500 CIFAR-10 images, lr 1e-4, probed every epoch
    "gpu": dict(
        n_test=None,
        cfg=_cfg(
            dataset="cifar10",
            arch="vgg11",
            arch_options={},
            out_dim=65536,
            subset=500,
            epochs=100,
            lr=1e-4,
            device="auto",
        ),
    ),
}


def summary(m) -> dict[str, float]:
    """Collapse / escape numbers of a metrics Dataset: the student's lowest probe accuracies and
    embedding effective rank (and when), and the last epoch's, next to the teacher's."""
    out: dict[str, float] = {}
    for p in [str(v) for v in m.probe.values]:
        s = m.accuracy.sel(model="student", probe=p).dropna("epoch")
        t = m.accuracy.sel(model="teacher", probe=p).dropna("epoch")
        out[f"teacher_{p}"] = float(t.isel(epoch=0))
        out[f"student_{p}_min"] = float(s.min())
        out[f"student_{p}_min_epoch"] = int(s.epoch.values[int(np.argmin(s.values))])
        out[f"student_{p}_last"] = float(s.isel(epoch=-1))
    r = m.effective_rank.sel(model="student")
    out["teacher_effective_rank"] = float(m.effective_rank.sel(model="teacher").isel(epoch=0))
    out["student_effective_rank_min"] = float(r.min())
    out["student_effective_rank_min_epoch"] = int(r.epoch.values[int(np.argmin(r.values))])
    out["student_effective_rank_last"] = float(r.isel(epoch=-1))
    c = m.embedding_cosine.sel(model="student")
    out["teacher_embedding_cosine"] = float(m.embedding_cosine.sel(model="teacher").isel(epoch=0))
    out["student_embedding_cosine_max"] = float(c.max())
    out["student_embedding_cosine_last"] = float(c.isel(epoch=-1))
    return out


def plot(m: xr.Dataset, path: Any) -> None:
    """Probe accuracy, embedding effective rank, and per-layer cosine similarity over training steps
    (student solid, teacher dashed; each legend under its panel, off the curves), from the result alone."""
    import matplotlib.pyplot as plt

    steps = m.epoch.values * int(m.attrs["steps_per_epoch"])
    fig, axes = common.figure(3, 1, width=4.6, height=3.9)
    for p, colour in zip(m.probe.values, ("C0", "C1", "C2")):
        acc = 100 * m.accuracy.sel(probe=p)
        ok = np.isfinite(acc.sel(model="student").values)
        name = common.PROBE_LABEL.get(str(p), str(p))
        axes[0].plot(steps[ok], acc.sel(model="student").values[ok], "o-", ms=4, color=colour, label=f"student, {name}")
        axes[0].plot(steps[ok], acc.sel(model="teacher").values[ok], "--", color=colour, label=f"teacher, {name}")
    axes[0].set(xlabel="distillation step", ylabel="probe accuracy [%]", title="probes")
    common.legend(axes[0], below=True)
    for model, style in (("student", "o-"), ("teacher", "--")):
        axes[1].plot(steps, m.effective_rank.sel(model=model), style, ms=4, color="C0", label=model)
    axes[1].set(xlabel="distillation step", ylabel="effective rank", title="embedding effective rank")
    common.legend(axes[1], below=True)
    cos = m.layer_cosine
    for k, layer in enumerate(cos.layer.values):
        colour = plt.cm.viridis(k / max(1, cos.sizes["layer"] - 1))
        axes[2].plot(steps, cos.sel(model="student", layer=layer), "o-", ms=3, color=colour, label=f"{layer}")
        axes[2].plot(steps, cos.sel(model="teacher", layer=layer), "--", color=colour)
    axes[2].set(xlabel="distillation step", ylabel="mean cosine between inputs", title="signal propagation")
    common.legend(axes[2], title="layer", title_fontsize=7)
    title = "Distillation dynamics: probes, effective rank and signal propagation of the student"
    common.finish(fig, path, common.title(m, title, "student solid, teacher dashed"))


def compute(pre: dict[str, Any], ctx: common.Context) -> xr.Dataset:
    cfg = pre["cfg"].replace(device=ctx.device, data_root=ctx.root if "cifar" in pre["cfg"].dataset else None)
    data = common.load(cfg.dataset, ctx, subset=cfg.subset, n_test=pre["n_test"], seed=cfg.data_seed)
    (store,) = common.distil_all([(cfg, ctx.store("distill.rts"))], ctx, data)
    m = store.metrics.load()
    steps_per_epoch = max(1, (cfg.subset or len(data.train)) // cfg.batch_size)
    numbers = summary(m)
    m.attrs.update(
        {
            "analysis": "dynamics",
            "store": str(store.path),
            "steps_per_epoch": steps_per_epoch,
            "test_images": int(len(data.test)),
            **{f"summary_{k}": v for k, v in numbers.items()},
            **common.provenance(ctx, {"distill": cfg}, [cfg.seed], "paper"),
        }
    )
    for k, v in numbers.items():
        print(f"{k:<36} {v:.4f}" if isinstance(v, float) else f"{k:<36} {v}")
    return m


main = common.script(__name__, PRESETS, compute, plot)
