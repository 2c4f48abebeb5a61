"""Figures from result Datasets (xarray plotting; matplotlib's Agg backend, no display)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

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


_X_DIMS = ("epoch", "alpha", "eps", "n", "level", "out_dim", "bottleneck_dim", "x")
_AVERAGED = ("seed", "pair", "input_seed", "child")
_PREFERRED = ("accuracy", "best_accuracy", "error", "teacher", "loss", "barrier_error")


def plot_result(ds: xr.Dataset, path: str | Path, var: str | None = None, **kw: Any) -> Path:
    """A sensible default figure of any result Dataset the toolkit writes (``rtt plot``).

    ``var`` (default: the first of accuracy, best_accuracy, error, teacher, loss, barrier_error present,
    else the first variable) is drawn against its most natural axis (epoch, alpha, eps, n, level, head
    dimension; an (x, y) grid as filled contours), averaged over seeds and pairs with a +-1 std band,
    one line per value of the next dimension, further dimensions at their first value (named in the
    title). Fractions (units "fraction") are shown in percent. Raises ValueError (one line) when the
    Dataset holds nothing to draw.
    """
    if "accuracy" in ds and {"epoch", "model", "probe"} == set(ds.accuracy.dims) and var is None:
        return plot_probes(ds, path)
    numeric = [str(v) for v in ds.data_vars if ds[v].dtype.kind in "fiu" and ds[v].size > 0]
    if not numeric:
        raise ValueError(
            "the file holds no numeric result variables to draw (a checkpoint store? use rtt info "
            "STORE, or pass a .nc result)"
        )
    if var is not None and var not in numeric:
        raise ValueError(f"no numeric variable {var!r} to draw: choose one of {', '.join(map(str, numeric))}")
    var = var or next((v for v in _PREFERRED if v in numeric), numeric[0])
    try:
        return _draw(ds, ds[var], var, Path(path), **kw)
    except (TypeError, ValueError, KeyError, IndexError) as e:
        raise ValueError(f"cannot draw {var!r} over {tuple(ds[var].dims)}: {str(e).splitlines()[0]}") from None


def _draw(ds: xr.Dataset, da: xr.DataArray, var: str, path: Path, **kw: Any) -> Path:
    pct = da.attrs.get("units") == "fraction"
    unit = "%" if pct else da.attrs.get("units", "")
    label = f"{da.attrs.get('long_name', var)}" + (f" [{unit}]" if unit else "")
    if pct:
        da = 100 * da
    notes = []
    fig, ax = plt.subplots(figsize=(6.4, 4.0), layout="constrained")
    dims = list(da.dims)
    if {"x", "y"} <= set(dims):
        rest = [d for d in dims if d not in ("x", "y")]
        sub = da.isel({d: 0 for d in rest})
        notes += [f"{d}={sub[d].values}" for d in rest if d in sub.coords]
        xs = ds["x_value"].values if "x_value" in ds else sub.x.values
        ys = ds["y_value"].values if "y_value" in ds else sub.y.values
        if xs.ndim > 1:
            xs, ys = xs[0], ys[0]
        cs = ax.contourf(xs, ys, sub.transpose("y", "x").values, levels=15)
        fig.colorbar(cs, ax=ax, label=label)
        ax.set(xlabel="x", ylabel="y")
    elif not dims:
        ax.text(0.5, 0.5, f"{var} = {float(da):.4g}", ha="center", transform=ax.transAxes)
        ax.set_axis_off()
    else:
        avg = [d for d in dims if d in _AVERAGED]
        x = next((d for d in _X_DIMS if d in dims), next((d for d in dims if d not in avg), dims[0]))
        others = [d for d in dims if d != x and d not in avg]
        hue = others[0] if others else None
        sub = da.isel({d: 0 for d in others[1:]})
        notes += [f"{d}={sub[d].values}" for d in others[1:] if d in sub.coords]
        mean = sub.mean(avg) if avg else sub
        std = sub.std(avg) if avg and all(sub.sizes[d] > 1 for d in avg) else None
        xv = (
            ds["sparsity"].values * 100
            if x == "level" and "sparsity" in ds and ds["sparsity"].dims == ("level",)
            else (mean[x].values if x in mean.coords else np.arange(mean.sizes[x]))
        )
        numeric_x = np.asarray(xv).dtype.kind in "fiu"
        pos = np.asarray(xv) if numeric_x else np.arange(len(xv))
        for h in mean[hue].values if hue else [None]:
            line = mean.sel({hue: h}) if hue else mean
            y = line.transpose(x).values
            ax.plot(pos, y, marker="o", ms=3, label=None if h is None else f"{hue}={h}")
            if std is not None:
                s = (std.sel({hue: h}) if hue else std).transpose(x).values
                ax.fill_between(pos, y - s, y + s, alpha=0.2)
        if not numeric_x:
            ax.set_xticks(pos, [str(v) for v in xv], rotation=30, ha="right")
        if x == "level" and "sparsity" in ds:
            ax.set_xscale("log")
            ax.invert_xaxis()
            ax.set_xlabel("weights remaining [%]")
        else:
            xattrs = ds[x].attrs if x in ds.coords else {}
            ax.set_xlabel(xattrs.get("long_name", x) + (f" [{xattrs['units']}]" if xattrs.get("units") else ""))
        if x in ("out_dim", "bottleneck_dim", "n"):
            ax.set_xscale("log", base=2 if x != "n" else 10)
        ax.set_ylabel(label)
        if hue:
            ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
        if avg:
            notes.append(f"mean over {', '.join(avg)}" + (" (band: +-1 std)" if std is not None else ""))
    ax.set_title(", ".join(notes) or var, fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
