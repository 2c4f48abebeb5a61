"""Figures of the result files in ``results/`` (PNG beside each .nc).

    python -m analyses.figures [--results results] [--demo runs/demo.h5]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import xarray as xr  # noqa: E402


def _open(path: Path) -> xr.Dataset:
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        return ds.load()


def locality(ds: xr.Dataset, out: Path) -> None:
    acc = 100 * ds.accuracy.isel(epoch=-1).mean("seed")
    fig, axes = plt.subplots(1, acc.sizes["probe"], figsize=(4 * acc.sizes["probe"], 3.2))
    for ax, p in zip(axes, acc.probe.values):
        for m, style in (("student", "o-"), ("teacher", "--"), ("teacher_bn", ":"), ("input", "-.")):
            ax.plot(acc.alpha, acc.sel(probe=p, model=m), style, label=m)
        ax.set(title=f"probe = {p}", xlabel="alpha (distance of the student's init from the teacher)")
    axes[0].set_ylabel("accuracy [%]")
    axes[-1].legend()
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)


def instability(ds: xr.Dataset, out: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for start in ds.start.values:
        err = 100 * ds.error.sel(start=start, split="test")
        b = 100 * ds.barrier_error.sel(start=start, split="test")
        ax.plot(err.alpha, err.mean("pair"), "o-", label=f"children of {start} (barrier {float(b.mean()):.2f}"
                f" +- {float(b.std()):.2f})")
    ax.set(xlabel="alpha between two children", ylabel="test error [%] (mean over pairs)")
    ax.legend(fontsize=8)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)


def lottery(ds: xr.Dataset, out: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for start in ds.start.values:
        s = ds.sel(start=start)
        ax.plot(100 * s.sparsity, 100 * s.best_accuracy, "o-", label=f"rewind to {start}")
    ax.set(xscale="log", xlabel="weights remaining [%]", ylabel="best test accuracy [%]")
    ax.invert_xaxis()
    ax.legend()
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", default="results")
    p.add_argument("--demo", default="runs/demo.h5")
    a = p.parse_args(argv)
    res = Path(a.results)
    for name, draw in (("locality", locality), ("instability_fig9", instability),
                       ("instability_fig9_noisy", instability), ("lottery_fig8", lottery)):
        if (res / f"{name}.nc").exists():
            draw(_open(res / f"{name}.nc"), res / f"{name}.png")
            print(f"wrote {res / name}.png")
    if Path(a.demo).exists():
        from distill.store import Store
        from landscape.plotting import plot_probes

        plot_probes(Store(a.demo).metrics, res / "demo_probes.png")
        print(f"wrote {res / 'demo_probes.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
