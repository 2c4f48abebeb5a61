"""Figures from result Datasets (xarray plotting; matplotlib's Agg backend, no display)."""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import xarray as xr  # noqa: E402


def plot_probes(metrics: xr.Dataset, path: str | Path) -> Path:
    """Probe accuracy over epochs, one panel per probe, one line per model; saved to ``path``.
    The teacher is a thick line with filled squares drawn first, the BN-recalibrated teacher a thin dashed
    line with hollow triangles on top of it, so where the two are equal (BN-free networks) both show."""
    acc = (100 * metrics.accuracy).dropna("epoch", how="all")
    probes = [str(p) for p in acc.probe.values]
    fig, axes = plt.subplots(1, len(probes), figsize=(4 * len(probes), 3.2), sharey=False, squeeze=False)
    styles: dict[str, dict[str, Any]] = {
        "teacher": dict(color="C0", ls="-", lw=3.0, marker="s", ms=6, zorder=2),
        "teacher_bn": dict(color="C1", ls="--", lw=1.2, marker="^", ms=5, mfc="none", zorder=3),
        "student": dict(color="C2", ls="-", marker="o", ms=4),
        "input": dict(color="0.4", ls=":", marker="", ms=3),
    }
    labels = {"teacher": "teacher", "teacher_bn": "teacher, BN recalibrated", "input": "input pixels"}
    probe_names = {"knn": "k-NN probe", "linear": "linear probe", "linear_std": "standardised linear probe"}
    for ax, probe in zip(axes[0], probes):
        for model in acc.model.values:
            style = styles.get(str(model), dict(marker="o", ms=3))
            da = acc.sel(probe=probe, model=model)
            ax.plot(da.epoch, da, label=labels.get(str(model), str(model)), **style)
        ax.set_title(probe_names.get(probe, probe))
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


# numeric dimensions drawn along the horizontal axis, in order of preference
_X_DIMS = ("epoch", "alpha", "eps", "n", "level", "out_dim", "bottleneck_dim", "t", "lambda", "node")
# replicate dimensions: averaged, with a +-1 std band (``pair`` only when it names pairs of replicates, "0-1")
_AVERAGED = ("seed", "pair", "input_seed", "child", "probe_seed", "run")
_PREFERRED = ("accuracy", "best_accuracy", "error", "teacher", "loss", "barrier_error")
_MAX_PANELS = 36

# long names and units of variables that some result files carry without them, by the name after the
# prefix a script may add (path_eigenvalue, level_trace, ...)
_KNOWN_ATTRS = {
    "eigenvalue": ("Hessian eigenvalue (largest first)", "nats"),
    "trace": ("Hessian trace", "nats"),
    "trace_stderr": ("standard error of the trace estimate", "nats"),
    "loss": ("loss", "nats"),
    "hvps": ("Hessian-vector products used", "1"),
    "slq_node": ("SLQ quadrature node (Ritz value)", "nats"),
    "slq_weight": ("SLQ quadrature weight", "1"),
    "norm_u": ("|b - a|: L2 norm of the first plane direction", "1"),
    "norm_v": ("L2 norm of the second plane direction", "1"),
    "error": ("classification error", "fraction"),
    "accuracy": ("accuracy", "fraction"),
    "seconds": ("wall time", "s"),
}
_PREFIXES = ("path_", "level_", "plane_", "line_", "through_")
_UNIT_TEXT = {"fraction": "%", "percent": "%", "1": ""}


def describe(da: xr.DataArray) -> tuple[str, str]:
    """(long name, units) of a result variable: its own attrs, else those known for its name (a
    ``path_``/``level_``/... prefix stripped), else the name itself and no units."""
    name = str(da.name)
    base = name
    for prefix in _PREFIXES:
        if base.startswith(prefix) and base[len(prefix) :] in _KNOWN_ATTRS:
            base = base[len(prefix) :]
            break
    known = _KNOWN_ATTRS.get(base, (name.replace("_", " "), ""))
    return str(da.attrs.get("long_name") or known[0]), str(da.attrs.get("units", known[1]))


def axis_label(da: xr.DataArray) -> str:
    """``long name [units]``: fractions and percentages as %, no brackets for dimensionless values."""
    long_name, units = describe(da)
    unit = _UNIT_TEXT.get(units, units)
    return long_name + (f" [{unit}]" if unit else "")


@dataclass
class Layout:
    """How `plot_result` lays out one variable: every dimension has exactly one role.

    kind: "lines" (against the numeric ``x``), "bars" (against the categorical ``x``), "grid"
    (filled contours over ``x`` and ``y``), or "value" (a scalar). ``hue``: one line or bar per
    value; ``facets``: one panel per combination of their values; ``averaged``: replicate
    dimensions drawn as mean +- 1 std.
    """

    kind: str
    x: str | None = None
    y: str | None = None
    hue: str | None = None
    facets: list[str] = field(default_factory=list)
    averaged: list[str] = field(default_factory=list)


def _is_numeric(da: xr.DataArray, dim: str) -> bool:
    return dim in da.coords and np.asarray(da[dim].values).dtype.kind in "fiu"


def _is_replicate(da: xr.DataArray, dim: str) -> bool:
    if dim not in _AVERAGED:
        return False
    if dim == "pair":  # pairs of replicates ("0-1", "0-2"); named pairs (datasets, ...) are categories
        return dim in da.coords and all(re.fullmatch(r"\d+-\d+", str(v)) for v in da[dim].values)
    return True


def layout(da: xr.DataArray) -> Layout:
    """The `Layout` of ``da``: replicates averaged, the preferred numeric dimension (else any
    numeric one with more than two values) along x as lines, else the longest categorical dimension
    as bars; an (x, y) grid as contours; the smallest remaining dimension as hue (``model`` first);
    the rest as facets."""
    dims = [str(d) for d in da.dims]
    averaged = [d for d in dims if _is_replicate(da, d)]
    rest = [d for d in dims if d not in averaged]
    if not rest:
        return Layout("value", averaged=averaged)
    if {"x", "y"} <= set(rest):
        others = [d for d in rest if d not in ("x", "y")]
        return Layout("grid", x="x", y="y", facets=others, averaged=averaged)
    x = next((d for d in _X_DIMS if d in rest and (_is_numeric(da, d) or d not in da.coords)), None)
    if x is None:
        x = next((d for d in rest if _is_numeric(da, d) and da.sizes[d] > 2), None)
    kind = "lines"
    if x is None:
        kind = "bars"
        x = max(rest, key=lambda d: da.sizes[d])
    others = [d for d in rest if d != x]
    hue = None
    if others:
        hue = "model" if "model" in others else min(others, key=lambda d: da.sizes[d])
    facets = [d for d in others if d != hue]
    return Layout(kind, x=x, hue=hue, facets=facets, averaged=averaged)


def plot_result(ds: xr.Dataset, path: str | Path, var: str | None = None, **kw: Any) -> Path:
    """A figure of any result Dataset the toolkit writes (``rtt plot``), saved to ``path``.

    ``var`` (default: the first of accuracy, best_accuracy, error, teacher, loss, barrier_error present,
    else the first numeric variable) is laid out by `layout`: replicate dimensions (seed, pairs
    of children, ...) averaged with a +-1 std band, a numeric axis (epoch, alpha, eps, n, level, head
    dimension) as lines, a categorical one (architectures, models) as bars, an (x, y) grid as filled
    contours, one line or bar per value of the next dimension and one panel per value of the others:
    no dimension is cut to its first value. Labels are the variables' ``long_name [units]``;
    fractions are shown in percent. Raises ValueError (one line) when the Dataset holds nothing to draw.
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
        return _draw(ds, ds[var], Path(path), **kw)
    except (TypeError, ValueError, KeyError, IndexError) as e:
        raise ValueError(f"cannot draw {var!r} over {tuple(ds[var].dims)}: {str(e).splitlines()[0]}") from None


def _dim_label(ds: xr.Dataset, dim: str) -> str:
    if dim in ds.coords:
        attrs = ds[dim].attrs
        unit = _UNIT_TEXT.get(attrs.get("units", ""), attrs.get("units", ""))
        return attrs.get("long_name", dim) + (f" [{unit}]" if unit else "")
    return dim


def _draw(ds: xr.Dataset, da: xr.DataArray, path: Path, **kw: Any) -> Path:
    plan = layout(da)
    label = axis_label(da)
    if describe(da)[1] == "fraction":
        da = 100 * da
    mean = da.mean(plan.averaged) if plan.averaged else da
    std = da.std(plan.averaged) if plan.averaged and all(da.sizes[d] > 1 for d in plan.averaged) else None
    panels = list(itertools.product(*[range(da.sizes[d]) for d in plan.facets]))
    notes = []
    if len(panels) > _MAX_PANELS:
        notes.append(f"first {_MAX_PANELS} of {len(panels)} panels")
        panels = panels[:_MAX_PANELS]
    ncols = min(len(panels), da.sizes[plan.facets[-1]] if plan.facets else 1, 4) or 1
    if len(panels) > 1 and ncols == 1:
        ncols = min(len(panels), 4)
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(4.6 * ncols + 1.6, 3.8 * nrows), squeeze=False, layout="constrained"
    )
    for ax in axes.flat[len(panels) :]:
        ax.set_axis_off()
    for ax, idx in zip(axes.flat, panels):
        sel = dict(zip(plan.facets, idx))
        m = mean.isel(sel)
        s = std.isel(sel) if std is not None else None
        if sel:
            ax.set_title(
                ", ".join(f"{d} = {mean[d].values[i]}" if d in mean.coords else f"{d} = {i}" for d, i in sel.items()),
                fontsize=8,
            )
        if plan.kind == "value":
            ax.text(0.5, 0.5, f"{float(m):.4g}", ha="center", transform=ax.transAxes)
            ax.set_axis_off()
        elif plan.kind == "grid":
            _grid(ax, fig, ds, m, label)
        else:
            _lines_or_bars(ax, ds, plan, m, s, label)
    if plan.hue and plan.kind != "grid":
        handles, labels = axes.flat[0].get_legend_handles_labels()
        if handles:
            fig.legend(handles, labels, title=plan.hue, fontsize=7, loc="outside right center")
    if plan.averaged:
        band = std is not None and plan.kind in ("lines", "bars")
        notes.append(f"mean over {', '.join(plan.averaged)}" + (" (+-1 std)" if band else ""))
    fig.suptitle("; ".join([str(da.name), *notes]), fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _grid(ax: Any, fig: Any, ds: xr.Dataset, m: xr.DataArray, label: str) -> None:
    xs = ds["x_value"].values if "x_value" in ds else m.x.values
    ys = ds["y_value"].values if "y_value" in ds else m.y.values
    if xs.ndim > 1:
        xs, ys = xs.reshape(-1, xs.shape[-1])[0], ys.reshape(-1, ys.shape[-1])[0]
    cs = ax.contourf(xs, ys, m.transpose("y", "x").values, levels=15)
    fig.colorbar(cs, ax=ax, label=label)
    ax.set(xlabel=_dim_label(ds, "x"), ylabel=_dim_label(ds, "y"))


def _lines_or_bars(ax: Any, ds: xr.Dataset, plan: Layout, m: xr.DataArray, s: xr.DataArray | None, label: str) -> None:
    x = str(plan.x)
    hues = (
        list(m[plan.hue].values) if plan.hue and plan.hue in m.coords else list(range(m.sizes.get(plan.hue or "", 1)))
    )
    xv = np.asarray(m[x].values) if x in m.coords else np.arange(m.sizes[x])
    sparsity = x == "level" and "sparsity" in ds and ds["sparsity"].dims == ("level",)
    if sparsity:
        xv = ds["sparsity"].values * 100
    width = 0.8 / max(len(hues), 1)
    for k, h in enumerate(hues):
        pick = {str(plan.hue): k} if plan.hue else {}
        y = m.isel(pick).transpose(x).values
        err = s.isel(pick).transpose(x).values if s is not None else None
        name = str(h) if plan.hue else None
        if plan.kind == "bars":
            pos = np.arange(len(xv)) + (k - (len(hues) - 1) / 2) * width
            ax.bar(pos, y, width, yerr=err, label=name, capsize=2)
        else:
            ax.plot(xv, y, marker="o", ms=3, label=name)
            if err is not None:
                ax.fill_between(xv, y - err, y + err, alpha=0.2)
    if plan.kind == "bars":
        ax.set_xticks(np.arange(len(xv)), [str(v) for v in xv], rotation=30, ha="right")
        ax.set_xlabel(_dim_label(ds, x))
    elif sparsity:
        ax.set_xscale("log")
        ax.invert_xaxis()
        ax.set_xlabel("weights remaining [%]")
    else:
        ax.set_xlabel(_dim_label(ds, x))
        if x in ("out_dim", "bottleneck_dim", "n"):
            ax.set_xscale("log", base=2 if x != "n" else 10)
    ax.set_ylabel(label)
