"""Curvature of the supervised loss (``landscape.hessian``): top Hessian eigenvalues (Lanczos) and trace
(Hutch++) along the straight line between two supervised children, for children of a distilled student
and of the random initialisation; the same across the levels of lottery-ticket pruning of the student;
and the spectral density (stochastic Lanczos quadrature) at one child of each start.

One distillation run gives the student (last epoch) and the random initialisation (epoch 0); each gets
``children`` children trained with labels that differ only in data order (``landscape.instability``),
so every pair of children is one path. The Hessian is that of the mean training cross-entropy over
``batches`` fixed mini-batches (BN-free networks: no BN policy needed).

    python -m analyses.hessian --preset smoke|cpu|gpu|gpu-quick [--executor SPEC]

The distillation, each start's children (``landscape.instability`` work units), the Hessian along
every pair's path, each start's spectral density and the IMP sequence with its per-level Hessians
(:class:`CurvatureUnit`) run through ``--executor`` when given; finished files are skipped on a rerun.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from analyses import common
from analyses.units import Unit
from distill.schema import result_dataset

# the curvature measurement: points per path (alphas), top eigenvalues (k) to tolerance tol, Hutch++ probes on
# batches x batch_size training images, IMP levels, SLQ runs x steps
PRESETS: dict[str, dict[str, Any]] = {
    "smoke": common.Scale(subset=100)(
        children=2,
        **dict(alphas=2, k=1, batches=1, batch_size=50, probes=3, tol=1e-2, levels=2, slq_runs=1, slq_steps=4),
        distill=dict(common.SMOKE_NET, probes=[]),
        sup=common.sgd(0.05, 50),
    ),
    # Fashion-MNIST, 1,000 images, BN-free 4x16 ConvNet distilled 2 epochs; 3 children per start (3 pairs), 1
    # epoch of SGD (lr 0.05); 3 points per path, top 2 eigenvalues (tol 1e-3) and 12 Hutch++ probes on 256
    # training images; 3 IMP levels of 50 %, 1 epoch each; SLQ 2 runs x 20 steps
    "cpu": common.Scale(subset=1000, n_test=500)(
        children=3,
        **dict(alphas=3, k=2, batches=1, batch_size=256, probes=12, tol=1e-3, levels=3, slq_runs=2, slq_steps=20),
        distill=common.small_net(width=16, epochs=2, probes=[]),
        sup=common.sgd(0.05, 64),
    ),
    # VGG11 (BN-free) on CIFAR-10: students of 150 epochs, children with the paper's supervised recipe (160 epochs
    # SGD, x0.1 at 80 and 120), 8 x 256 images per Hessian, fp32
    "gpu": common.CIFAR10(
        children=3,
        **dict(alphas=7, k=5, batches=8, batch_size=256, probes=60, tol=1e-3, levels=6, slq_runs=5, slq_steps=60),
        distill=dict(arch="vgg11", epochs=150, probes=[], device="auto", save_every=0, resume_every=1),
        sup=dict(),
    ),
}
PRESETS["gpu-quick"] = common.variant(
    PRESETS["gpu"], distill=dict(epochs=10), sup=dict(epochs=4, milestones=[2, 3], lr=0.05)
)
PRESET_NOTES = {
    "gpu-quick": "students of 10 epochs and children of 4 epochs (lr 0.05, x0.1 at 2 and 3) instead of 150 and 160"
}
STARTS = ("student", "init")


@dataclass(frozen=True)
class CurvatureUnit(Unit):
    """One curvature measurement as a work unit (:mod:`landscape.executors`): plain data, picklable;
    writes its own netCDF ``out`` and is done when that file holds the result of the same settings.

    kind ``path``: :func:`landscape.hessian.hessian_along_path` between the children ``refs[0]`` and
    ``refs[1]`` ((store path, name)); ``density``: the SLQ spectral density at ``refs[0]``; ``levels``:
    the IMP sequence of the student ``refs[0]`` ((store path, epoch)) into the store ``options["imp"]``
    (its levels follow one another: one unit), then the Hessian at every level.
    ``options``: the preset's curvature settings and the supervised recipe (``sup``, a dict)."""

    kind: str
    refs: tuple
    options: dict
    out: str
    data: Any

    def settings(self) -> dict[str, Any]:
        """The kind, the references and the options (the unit's settings)."""
        return {"kind": self.kind, "refs": self.refs, **self.options}

    def run(self) -> xr.Dataset:
        """Measure the curvature of the unit's kind."""
        import landscape
        from distill.config import SupervisedConfig
        from landscape.hessian import hessian, hessian_along_path, hessian_over_levels

        o = self.options
        hkw = dict(
            batches=o["batches"], batch_size=o["batch_size"], trace_probes=o["probes"], tol=o["tol"],
            device=o["device"],
        )  # fmt: skip
        if self.kind == "path":
            ds = hessian_along_path(self.refs[0], self.refs[1], self.data, alphas=o["alphas"], k=o["k"], **hkw)
            ds = ds[["eigenvalue", "trace", "trace_stderr", "loss", "hvps"]]
            print(
                f"{o['start']} children {o['pair']}: top eigenvalue along the path "
                + " ".join(f"{v:.3f}" for v in ds.eigenvalue.isel(eigen=0).values)
                + ", trace "
                + " ".join(f"{v:.2f}" for v in ds.trace.values),
                flush=True,
            )
        elif self.kind == "density":
            ds = hessian(
                self.refs[0], self.data, k=0, slq_runs=o["slq_runs"], slq_steps=o["slq_steps"],
                **{**hkw, "trace_probes": 0},
            )[["slq_node", "slq_weight"]]  # fmt: skip
        elif self.kind == "levels":
            landscape.lottery(
                self.refs[0], self.data, levels=o["levels"], prune_fraction=0.5, cfg=SupervisedConfig(**o["sup"]),
                rewind="start", baselines=[], store=o["imp"], seed=0, device=o["device"], progress=False,
            )  # fmt: skip
            ds = hessian_over_levels(o["imp"], self.data, "start", o["k"], **hkw)
            ds = ds[["eigenvalue", "trace", "loss", "remaining"]]
        else:
            raise ValueError(f"kind={self.kind!r}: pass path, density or levels")
        return ds


def compute(pre: dict[str, Any], ctx: common.Context) -> xr.Dataset:
    from analyses.hessian import CurvatureUnit  # the importable class (not __main__'s) travels to workers
    from landscape.hessian import smoothed_density

    data = common.load(pre["dataset"], ctx, subset=pre["subset"], n_test=pre["n_test"])
    dcfg, scfg, store, kids = common.student_and_init_children(pre, ctx, data, pre["children"])
    names = ("alphas", "k", "batches", "batch_size", "probes", "tol", "levels", "slq_runs", "slq_steps")
    opts = {**{n: pre[n] for n in names}, "device": ctx.device}
    pairs = [f"{i}-{j}" for i, j in itertools.combinations(range(pre["children"]), 2)]
    units: dict[Any, Any] = {}
    for start, (path, _) in kids.items():
        for pair in pairs:
            i, j = pair.split("-")
            refs = ((path, f"children/{i}"), (path, f"children/{j}"))
            out = str(ctx.store(f"path-{start}-{pair}.nc"))
            units[(start, pair)] = CurvatureUnit("path", refs, {**opts, "start": start, "pair": pair}, out, data)
        units[start] = CurvatureUnit(
            "density", ((path, "children/0"),), opts, str(ctx.store(f"density-{start}.nc")), data
        )
    # the IMP levels of the student follow one another: one unit, beside the paths and densities
    imp = {**opts, "sup": scfg.to_dict(), "imp": str(ctx.store("imp.rts"))}
    units["levels"] = CurvatureUnit(
        "levels", ((str(store.path), store.epochs[-1]),), imp, str(ctx.store("levels.nc")), data
    )
    common.sweep(list(units.values()), ctx)
    held = {key: common.open_result(unit.out) for key, unit in units.items()}
    paths = [common.along("pair", pairs, [held[(s, p)] for p in pairs], combine_attrs="drop") for s in STARTS]
    ds = common.along("start", STARTS, paths, combine_attrs="drop")
    slq = common.along("start", STARTS, [held[s] for s in STARTS], combine_attrs="drop")
    lv = held["levels"]
    nodes, weights = slq.slq_node.values, slq.slq_weight.values
    lo, hi = np.nanmin(nodes), np.nanmax(nodes)
    grid = np.linspace(lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo), 201)
    sigma = max((hi - lo) / 100, 1e-12)
    density = np.stack([smoothed_density(nodes[s], weights[s], grid, sigma) for s in range(len(STARTS))])
    data_vars = {f"path_{v}": ds[v] for v in ds.data_vars} | {"slq_node": slq.slq_node, "slq_weight": slq.slq_weight}
    data_vars |= {"density": (("start", "lambda"), density, {"sigma": sigma})}
    data_vars |= {f"level_{v}": lv[v] for v in ("eigenvalue", "trace", "loss")} | {"remaining": lv.remaining}
    data_vars["child_test_accuracy"] = (("start", "child"), np.stack([kids[start][1] for start in STARTS]))
    fill = {k: lv.attrs[k] for k in ("loss", "trace_method", "trace_probes")}
    attrs = {
        "hessian_of": "mean training cross-entropy over the batches, all parameters (torch.func jvp of grad)",
        "hessian_batches": int(pre["batches"]),
        "hessian_batch_size": int(pre["batch_size"]),
        "eigen_method": "scipy.sparse.linalg.eigsh (Lanczos), which=LA",
        "eigsh_tol": float(pre["tol"]),
        "trace_method": "hutch++",
        "trace_probes": int(pre["probes"]),
        "path_bn_policy": "none (BN-free networks)",
        "slq_runs": int(pre["slq_runs"]),
        "slq_steps": int(pre["slq_steps"]),
        "slq_at": "child 0 of each start",
        "levels": "IMP of the student (rewind to the student, 50 % of the remaining weights per level), "
        "Hessian restricted to the unpruned weights",
        "children": f"{pre['children']} per start, supervised, data_seed = aug_seed = 0..{pre['children'] - 1}",
        **common.provenance(ctx, {"distill": dcfg, "supervised": scfg}, list(range(pre["children"])), "paper"),
    }
    ds = result_dataset("analyses.hessian", data_vars, {"lambda": ("lambda", grid)}, attrs, fill=fill)
    report(ds)
    return ds


def report(ds: xr.Dataset) -> None:
    """Print the top eigenvalue and the trace at every IMP level of the student."""
    for lvl in ds.level.values:
        left, top = 100 * float(ds.remaining.sel(level=lvl)), float(ds.level_eigenvalue.sel(level=lvl, eigen=0))
        print(f"IMP level {int(lvl)} ({left:.1f} % left): top eigenvalue {top:.3f}, ", end="")
        print(f"trace {float(ds.level_trace.sel(level=lvl)):.2f}", flush=True)


def plot(ds: xr.Dataset, path: Any) -> None:
    import matplotlib.ticker as mticker

    fig, axes = common.figure(4, 1, width=3.9, height=3.3)
    for i, s in enumerate(ds.start.values):
        style = dict(color=f"C{i}", marker="o")
        label = f"children of the {s}"
        common.band(axes[0], ds.alpha, ds.path_eigenvalue.sel(start=s).isel(eigen=0), label, dim="pair", **style)
        common.band(axes[1], ds.alpha, ds.path_trace.sel(start=s), label, dim="pair", **style)
        axes[3].plot(ds["lambda"], ds.density.sel(start=s), color=f"C{i}", label=label)
    axes[0].set(xlabel="α between two children", ylabel="top Hessian eigenvalue [nats]", title="along the path")
    axes[1].set(xlabel="α between two children", ylabel="Hessian trace [nats]", title="along the path")
    rem = common.pct(ds.remaining.values)
    for j, e in enumerate(ds.eigen.values):  # colours of their own: C0/C1 name the starts on the other panels
        label = f"IMP level: eigenvalue {int(e) + 1}"
        axes[2].plot(rem, ds.level_eigenvalue.sel(eigen=e), marker="o", color=f"C{j + 2}", label=label)
    ax2 = axes[2].twinx()
    ax2.plot(rem, ds.level_trace, "k--", marker="s", ms=4, label="IMP level: trace")
    ax2.set_ylabel("Hessian trace [nats] (dashed)")
    axes[2].set_xscale("log")
    axes[2].set_xticks(rem, [f"{r:g}" for r in rem])  # the levels themselves (log-axis labels ran together)
    axes[2].xaxis.set_minor_locator(mticker.NullLocator())
    axes[2].invert_xaxis()
    axes[2].set(xlabel="weights remaining [%]", ylabel="top eigenvalues [nats]", title="IMP levels of the student")
    axes[3].set_yscale("log")
    axes[3].set(xlabel="Hessian eigenvalue [nats]", ylabel="density (SLQ)", title="spectral density at child 0")
    top = float(ds.density.max())
    axes[3].set_ylim(bottom=max(1e-6, top * 1e-6), top=top * 3)
    common.legend(axes[3], every_panel=True)  # right of the last panel, not between two of them
    title = "Curvature: the Hessian along paths between children, over IMP levels and its spectral density"
    common.finish(fig, path, common.title(ds, title, "band: ±1 std over child pairs"))


main = common.script(__name__, PRESETS, compute, plot)
