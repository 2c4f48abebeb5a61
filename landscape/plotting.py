"""Figures from result Datasets (xarray plotting; matplotlib's Agg backend, no display)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import xarray as xr  # noqa: E402


def plot_probes(metrics: xr.Dataset, path: str | Path) -> Path:
    """Probe accuracy over epochs, one panel per probe, one line per model; saved to ``path``.
    The BN-recalibrated teacher is dashed (it equals the teacher for BN-free networks)."""
    acc = (100 * metrics.accuracy).dropna("epoch", how="all")
    probes = [str(p) for p in acc.probe.values]
    fig, axes = plt.subplots(1, len(probes), figsize=(4 * len(probes), 3.2), sharey=False, squeeze=False)
    styles = {"teacher": ("C0", "-"), "teacher_bn": ("C1", "--"), "student": ("C2", "-"), "input": ("C3", ":")}
    for ax, probe in zip(axes[0], probes):
        for model in acc.model.values:
            color, ls = styles.get(str(model), (None, "-"))
            da = acc.sel(probe=probe, model=model)
            ax.plot(da.epoch, da, marker="o", ms=3, color=color, linestyle=ls, label=str(model))
        ax.set_title(f"probe = {probe}")
        ax.set_xlabel("epoch")
    axes[0][0].set_ylabel("probe accuracy [%]")
    axes[0][-1].legend(title="model", loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle(_title(metrics), fontsize=9, y=1.02)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _title(ds: xr.Dataset) -> str:
    import json

    try:
        cfg = json.loads(ds.attrs.get("config", "{}"))
    except ValueError:
        return ""
    keys = ("dataset", "subset", "arch", "lr", "alpha")
    return ", ".join(f"{k}={cfg[k]}" for k in keys if k in cfg)


def plot_result(ds: xr.Dataset, path: str | Path, var: str | None = None, **kw: Any) -> Path:
    """A sensible default figure of any result Dataset: ``var`` (default: the first of
    accuracy, error, loss, barrier_error present) over its dims, via xarray plotting."""
    if "accuracy" in ds and {"epoch", "model", "probe"} <= set(ds.accuracy.dims) and var is None:
        return plot_probes(ds, path)
    var = var or next((v for v in ("accuracy", "error", "loss", "barrier_error") if v in ds), list(ds.data_vars)[0])
    da = ds[var]
    dims = list(da.dims)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    if len(dims) == 1:
        da.plot.line(ax=ax, marker="o", **kw)
    elif len(dims) == 2 and {"x", "y"} <= set(dims):
        da.plot.contourf(ax=ax, x="x", y="y", levels=20, **kw)
    elif len(dims) >= 2:
        x = dims[0] if dims[0] in ("alpha", "epoch", "level", "eps") else next(
            (d for d in dims if d in ("alpha", "epoch", "level", "eps")), dims[0])
        rest = [d for d in dims if d != x]
        sub = da
        for d in rest[1:]:
            sub = sub.mean(d) if d in ("pair", "seed") else sub.isel({d: 0})
        sub.plot.line(ax=ax, x=x, hue=rest[0], marker="o", **kw)
    else:
        ax.text(0.5, 0.5, f"{var} = {float(da):.4g}", ha="center")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
