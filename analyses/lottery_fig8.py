"""Figure 8 at CPU scale: does rewinding to the distilled student keep more accuracy at high
sparsity than rewinding to the random initialisation it came from?

Both IMP runs start from the demo's distillation store: one from the distilled student (last
epoch), one from its epoch-0 student (the random init); each rewinds to its own start.

    python -m analyses.lottery_fig8 --preset cpu
"""
from __future__ import annotations

import argparse
import sys

import xarray as xr

from analyses.common import ensure_distilled, save
from analyses.demo import DEMO
from distill.config import SupervisedConfig
from distill.data import load_dataset

PRESETS = {
    "cpu": dict(levels=9, fraction=0.2, subset=10_000,
                sup=dict(epochs=2, milestones=[], lr=0.02, augment="none", batch_size=128, device="cpu")),
    "gpu": dict(levels=24, fraction=0.2, subset=None, sup=dict(device="auto")),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=tuple(PRESETS), default="cpu")
    p.add_argument("--start", default="runs/demo.h5", help="distillation store (made with the demo's config if missing)")
    p.add_argument("--runs", default="runs/fig8")
    p.add_argument("--out", default="results/lottery_fig8.nc")
    a = p.parse_args(argv)
    import landscape

    pre = PRESETS[a.preset]
    store = ensure_distilled(DEMO, a.start)
    data = load_dataset(DEMO.dataset, subset=pre["subset"], seed=0)
    cfg = SupervisedConfig.preset("cpu" if a.preset == "cpu" else "paper", **pre["sup"])
    rows = []
    for name, epoch in (("student", store.epochs[-1]), ("init", 0)):
        ds = landscape.lottery((store, epoch), data, levels=pre["levels"], prune_fraction=pre["fraction"],
                               rewind="start", cfg=cfg, store=f"{a.runs}/lottery-{name}.h5")
        rows.append(ds.squeeze(drop=True).expand_dims(start=[name]))
    out = xr.concat(rows, "start", combine_attrs="drop_conflicts")
    save(out, a.out)
    print("\nremaining %   best test accuracy %: rewind to distilled student | rewind to random init")
    for lvl in out.level.values:
        s = out.sel(level=lvl)
        print(f"{100 * float(s.sparsity.isel(start=0) if 'start' in s.sparsity.dims else s.sparsity):10.1f}"
              f"   {100 * float(s.best_accuracy.sel(start='student')):8.2f} | "
              f"{100 * float(s.best_accuracy.sel(start='init')):8.2f}")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
