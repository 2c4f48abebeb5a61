"""Figure pieces every analysis shares: units, styles and labels of the models and probes, bands,
legends, contour levels, log ticks, and saving a figure with its title."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr


def pct(x: Any) -> Any:
    """Accuracy or error as a fraction -> percent (the figures' and tables' unit)."""
    return 100 * x


STYLE = {
    "teacher": dict(color="C0", ls="-", marker="s"),
    "teacher_bn": dict(color="C1", ls="--", marker="^", mfc="none"),  # hollow: an equal teacher shows through
    "student": dict(color="C2", ls="-", marker="o"),
    "input": dict(color="0.4", ls=":", marker=""),
}
LABEL = {"teacher": "teacher", "teacher_bn": "teacher, BN recalibrated", "student": "student", "input": "input pixels"}
PROBE_LABEL = {"knn": "k-NN probe", "linear": "linear probe", "linear_std": "standardised linear probe"}
PROBE_SHORT = {"knn": "k-NN", "linear": "linear", "linear_std": "linear, std."}  # tick labels


def band(ax: Any, x: Any, da: xr.DataArray, label: str, dim: str = "seed", **style: Any) -> None:
    """Mean over ``dim`` as a line, mean +- std as a shaded band (no band for a single seed)."""
    mean = da.mean(dim) if dim in da.dims else da
    (line,) = ax.plot(np.asarray(x), np.asarray(mean), label=label, ms=4, **style)
    if dim in da.dims and da.sizes[dim] > 1:
        std = da.std(dim)
        ax.fill_between(
            np.asarray(x), np.asarray(mean - std), np.asarray(mean + std), color=line.get_color(), alpha=0.2, lw=0
        )


def figure(ncols: int = 1, nrows: int = 1, width: float = 4.6, height: float = 3.4) -> tuple[Any, Any]:
    """A figure with a flat array of axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False, layout="constrained")
    return fig, axes.ravel()


def shared_levels(*arrays: Any, n: int = 15) -> Any:
    """Contour levels at round values spanning every array (NaNs ignored): maps drawn side by side with
    them share one colour range, and their colour bars read in short numbers."""
    import matplotlib.ticker as mticker

    lo = min(float(np.nanmin(np.asarray(a))) for a in arrays)
    hi = max(float(np.nanmax(np.asarray(a))) for a in arrays)
    return mticker.MaxNLocator(n).tick_values(lo, hi)


def log_ticks(ax: Any, values: Sequence[float], base: int = 10, powers: bool = False) -> None:
    """A log-scaled x axis labelled at exactly ``values`` (no crowded minor labels); ``powers``: as powers
    of ``base`` (``2^16``, short labels that do not run into each other)."""
    ax.set_xscale("log", base=base)
    if powers:
        labels = [f"${base}^{{{np.log(v) / np.log(base):.3g}}}$" for v in values]
    else:
        labels = [f"{v:g}" for v in values]
    ax.set_xticks(list(values), labels)
    ax.minorticks_off()


def legend(ax: Any, every_panel: bool = False, below: bool = False, **kw: Any) -> None:
    """The legend outside the axes, on the right (never over the curves); ``below``: under the axes, in
    two columns (for a panel that is not the last of its row). ``every_panel``: list each labelled artist
    of all the figure's axes once, so a line drawn on one panel only (the paper's points, say) is still
    named."""
    if every_panel and "handles" not in kw:
        seen: dict[str, Any] = {}
        for other in ax.figure.axes:
            for h, label in zip(*other.get_legend_handles_labels()):
                seen.setdefault(label, h)
        kw = {**kw, "handles": list(seen.values()), "labels": list(seen)}
    if below:
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncols=2, **kw)
    else:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5), **kw)


def finish(fig: Any, path: str | Path, title: str = "") -> Path:
    """Title (each line wrapped to the figure's width), save (PNG, 110 dpi), close."""
    import matplotlib.pyplot as plt

    if title:
        import textwrap

        width = max(40, int(fig.get_figwidth() * 12))  # characters of the 9-point title per line
        fig.suptitle("\n".join(textwrap.fill(line, width) for line in title.split("\n")), fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
