"""Figure 9 at CPU scale: are the supervised children of a distilled student more stable
(lower error barrier between them) than the children of the random initialisation it came from?

Start checkpoints: the demo's distilled student (last epoch) and the same run's epoch-0
student (the random initialisation, alpha = 1e-10 from the teacher). From each, N children
are trained with labels, differing only in data order and augmentation; the straight path
between every pair of children is evaluated with BN reset.

    python -m analyses.instability_fig9 --preset cpu
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
import xarray as xr

from analyses.common import ensure_distilled, save
from analyses.demo import DEMO
from distill.config import SupervisedConfig
from distill.data import load_dataset

PRESETS = {
    # Fashion-MNIST, 10k training images, BN-free 4x64 ConvNet, 2 epochs of SGD per child
    "cpu": dict(children=3, subset=10_000, alphas=11, sup=dict(epochs=2, milestones=[], lr=0.02, augment="none",
                                                               batch_size=128)),
    # the same with a larger learning rate and flip + crop noise: more room for instability
    "cpu-noisy": dict(children=3, subset=10_000, alphas=11, sup=dict(epochs=2, milestones=[], lr=0.08,
                                                                     augment="flip_crop", batch_size=128)),
    "gpu": dict(children=5, subset=None, alphas=30, sup=dict()),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=tuple(PRESETS), default="cpu")
    p.add_argument("--start", default="runs/demo.h5", help="distillation store (made with the demo's config if missing)")
    p.add_argument("--runs", default="runs/fig9")
    p.add_argument("--out", default="results/instability_fig9.nc")
    a = p.parse_args(argv)
    import landscape

    pre = PRESETS[a.preset]
    store = ensure_distilled(DEMO, a.start)
    data = load_dataset(DEMO.dataset, subset=pre["subset"], seed=0)
    on_cpu = a.preset.startswith("cpu")
    cfg = SupervisedConfig.preset("cpu" if on_cpu else "paper", **pre["sup"], device="cpu" if on_cpu else "auto")
    rows = []
    for name, epoch in (("student", store.epochs[-1]), ("init", 0)):
        ds = landscape.instability((store, epoch), data, children=pre["children"], cfg=cfg,
                                   store=f"{a.runs}/{a.preset}-children-{name}.h5", alphas=pre["alphas"], splits=("test",))
        rows.append(ds[["error", "loss", "barrier_error", "barrier_loss", "child_test_accuracy"]]
                    .expand_dims(start=[name]))
    out = xr.concat(rows, "start", combine_attrs="drop_conflicts")
    out.attrs.update({"start_student_epoch": int(store.epochs[-1]), "store": str(store.path),
                      "supervised_config": str(cfg.to_dict())})
    save(out, a.out)
    print("\nerror barrier between children (test split, percentage points): mean +- std over pairs")
    for name in ("student", "init"):
        b = 100 * out.barrier_error.sel(start=name, split="test").values
        acc = 100 * out.child_test_accuracy.sel(start=name).values
        print(f"{name:<8} {np.mean(b):6.2f} +- {np.std(b):5.2f}   pairs {np.round(b, 2).tolist()}   "
              f"children test acc {np.round(acc, 2).tolist()}")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
