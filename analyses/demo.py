"""The main job on the embedded default data: distil a small ConvNet on Fashion-MNIST,
probe teacher, BN-recalibrated teacher, student and raw input, print the table, and write
``runs/demo.rts`` (the store, a folder) and ``runs/demo_probes.png``.

    python -m analyses.demo [--epochs N] [--out runs/demo.rts]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path

from analyses.presets import small_net
from distill.config import DistillConfig
from distill.store.names import store_name

DEFAULT_OUT = "runs/demo.rts"

# A CPU-sized version of the paper's setup; see results/README.md for how it was chosen.
# BN-free, so the teacher needs no BN-recalibrated control (teacher_bn equals teacher), a 4096-way
# head and batch 64 so that three epochs of 5,000 images give a few hundred Adam steps.
DEMO = DistillConfig(
    dataset="fashion-mnist",
    subset=5_000,
    **small_net(width=64, hidden_dim=2048, bottleneck_dim=256, epochs=3, save_every=1, probe_every=1),
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--out", default=None, help=f"the store to write (default: {DEFAULT_OUT}, or an older runs/demo.h5 folder)"
    )
    p.add_argument("--epochs", type=int, default=DEMO.epochs)
    p.add_argument("--fresh", action="store_true", help="delete an existing demo store first")
    a = p.parse_args(argv)
    # off a terminal (make demo > log) the per-epoch progress comes as log lines: show them
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)

    from distill.train import distill, distillation_gain, summary_table
    from landscape.plotting import plot_probes

    out = Path(a.out) if a.out else store_name(DEFAULT_OUT)
    if a.fresh and out.exists():  # a store is a folder (a format-1 store a single file)
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    cfg = DEMO.replace(epochs=a.epochs)
    print(f"Distilling {cfg.arch} on {cfg.dataset} ({cfg.subset} images, {cfg.epochs} epochs) -> {out}")
    store = distill(cfg, out)
    m = store.metrics
    print()
    print("Probe accuracy (%), last epoch; gain = student - max(teacher, BN-recalibrated teacher):")
    print(summary_table(m))
    gain = distillation_gain(m)
    fig = out.with_name(out.stem + "_probes.png")
    plot_probes(m, fig)
    print(f"\nwrote {store.path} and {fig}")
    ok = all(float(gain.sel(probe=p)) > 0 for p in ("knn", "linear_std") if p in gain.probe)
    print("student beats both teachers on k-NN and standardised linear probe:", "yes" if ok else "NO")
    return 0


if __name__ == "__main__":
    sys.exit(main())
