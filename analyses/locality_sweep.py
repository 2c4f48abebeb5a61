"""Figure 3 at CPU scale: probe accuracy against the student's distance from the teacher at init.

One distillation per alpha (the demo's setting, Fashion-MNIST), then the distillation gain per
alpha: student minus the better of teacher and BN-recalibrated teacher.

    python -m analyses.locality_sweep --preset cpu
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from analyses.common import save
from analyses.demo import DEMO

PRESETS = {
    "cpu": dict(alphas=[0.0, 0.25, 0.5, 0.75, 1.0], seeds=[0], cfg=dict(save_every=0, probe_every=0)),
    # three points, longer: does the independent student (alpha = 1) catch up with more steps?
    "cpu-long": dict(alphas=[0.0, 0.5, 1.0], seeds=[0], cfg=dict(save_every=0, probe_every=0, epochs=10)),
    "gpu": dict(alphas=[round(0.1 * i, 1) for i in range(11)], seeds=[0, 1, 2], cfg=dict(device="auto")),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=tuple(PRESETS), default="cpu")
    p.add_argument("--runs", default="runs/locality")
    p.add_argument("--out", default="results/locality.nc")
    a = p.parse_args(argv)
    import landscape

    pre = PRESETS[a.preset]
    cfg = DEMO.replace(**pre["cfg"])
    ds = landscape.locality(cfg, alphas=pre["alphas"], seeds=pre["seeds"], out_dir=f"{a.runs}/{a.preset}")
    save(ds, a.out)
    acc = ds.accuracy.isel(epoch=-1).mean("seed")
    teacher = np.maximum(acc.sel(model="teacher"), acc.sel(model="teacher_bn"))
    print("\nalpha   " + "".join(f"{p:>12}" for p in acc.probe.values) + "   (student %, gain in points)")
    for al in acc.alpha.values:
        row = acc.sel(alpha=al)
        print(f"{al:<8.2f}" + "".join(f"{100 * float(row.sel(model='student', probe=p)):6.2f} "
                                      f"{100 * float(row.sel(model='student', probe=p) - teacher.sel(alpha=al, probe=p)):+5.2f}"
                                      for p in acc.probe.values))
    t = acc.isel(alpha=0)
    print("teacher " + "".join(f"{100 * float(t.sel(model='teacher', probe=p)):12.2f}" for p in acc.probe.values))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
