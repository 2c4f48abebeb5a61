"""Filter-normalised loss surfaces (Li et al. 2018) around supervised children of a distilled student and
of the random initialisation, and the plane through three children.

One distillation run gives the student (its last epoch) and the random initialisation (epoch 0); each
gets two children trained with labels that differ only in data order (``landscape.instability``). Then

- ``line_*``: 1-D surfaces theta_0 + t d around child 0 of each start along filter-normalised Gaussian
  directions (biases and norm parameters: zero direction), one direction per seed;
- ``plane_*``: 2-D surfaces theta_0 + x d1 + y d2 around the same centres, one direction pair per seed;
- ``through_*``: the plane through the student's child 0 (centre), its sibling child 1 (d1 = child 1 -
  child 0) and the initialisation's child 0 (d2), coordinates in units of each difference, so the line
  v = 0 is the straight path between the two siblings.

Loss is the mean test cross-entropy (nats), error the test error (fraction), on ``n_test`` test images.

    python -m analyses.surface --preset smoke|cpu|gpu|gpu-quick [--executor SPEC]

The distillation, each start's children (``landscape.instability`` work units) and every surface
(:class:`SurfaceUnit`: each line and plane per centre and seed, and the plane through the children)
run through ``--executor`` when given; finished stores and surface files are skipped on a rerun.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from analyses import common
from analyses.units import Unit
from distill.schema import plain, result_dataset

PRESETS: dict[str, dict[str, Any]] = {
    "smoke": common.Scale(subset=100)(
        seeds=[0],
        **dict(line=5, plane=3, through=5, span=1.0),
        distill=dict(common.SMOKE_NET, probes=[]),
        sup=common.sgd(0.05, 50),
    ),
    # Fashion-MNIST, 1,000 images, BN-free 4x32 ConvNet distilled 2 epochs; children: 1 epoch of SGD (lr 0.05,
    # no augmentation); lines of 17 points and 7 x 7 planes on [-1, 1] for 3 direction seeds; a 9 x 9 plane
    # through three children on [-0.5, 1.5]^2; every point on 500 test images
    "cpu": common.Scale(subset=1000, n_test=500)(
        seeds=[0, 1, 2],
        **dict(line=17, plane=7, through=9, span=1.0),
        distill=common.small_net(epochs=2, probes=[]),
        sup=common.sgd(0.05, 64),
    ),
    # ResNet18 on CIFAR-10 (BN reset at every point): students of 150 epochs, children trained with the paper's
    # supervised recipe (160 epochs SGD, x0.1 at 80 and 120), fp32
    "gpu": common.Scale("cifar10", None, 2000)(
        seeds=[0, 1, 2],
        **dict(line=31, plane=15, through=17, span=1.0),
        distill=dict(arch="resnet18", epochs=150, probes=[], device="auto", save_every=0, resume_every=1),
        sup=dict(),
    ),
}
PRESETS["gpu-quick"] = common.variant(
    PRESETS["gpu"], distill=dict(epochs=10, precision="bf16"), sup=common.QUICK_CHILDREN
)
PRESET_NOTES = {"gpu-quick": "students of 10 epochs and children of 4 epochs instead of 150 and 160, bf16 autocast"}
CENTRES = ("student child", "init child")


def _vars(ds: xr.Dataset, prefix: str, dims: dict[str, str]) -> dict[str, xr.DataArray]:
    """``loss`` and ``error`` of a surface Dataset renamed to ``prefix_loss`` / ``prefix_error``, dims renamed."""
    return {f"{prefix}_{v}": ds[v].rename(dims).reset_coords(drop=True) for v in ("loss", "error")}


@dataclass(frozen=True)
class SurfaceUnit(Unit):
    """One surface (:func:`landscape.surface.surface`) as a work unit (:mod:`landscape.executors`):
    plain data, picklable; writes (and resumes, row by row) its own netCDF ``out``, done when the whole
    surface of the same settings is there. ``centre`` and checkpoint ``directions`` are (store path, name)."""

    centre: tuple
    directions: Any  # "random" or a list of (store path, name)
    dims: int
    resolution: int
    span: tuple
    seed: int
    n_test: int | None
    device: str
    out: str
    data: Any

    def run(self) -> xr.Dataset:
        """Evaluate the surface (resuming the rows ``out`` holds)."""
        from landscape.surface import surface

        return surface(
            self.centre, self.data, self.directions, dims=self.dims, resolution=self.resolution,
            span=self.span, seed=self.seed, split="test", max_examples=self.n_test, device=self.device,
            progress=False, out=self.out,
        )  # fmt: skip


def _units(pre: dict[str, Any], ctx: common.Context, data: Any, kids: dict[str, str]) -> dict[Any, SurfaceUnit]:
    """Every line and plane around child 0 of each start (``kids``: its children's store path) per seed, and
    the plane through the children: independent units, for one sweep through ``--executor``."""
    from analyses.surface import SurfaceUnit  # the importable class (not __main__'s) travels to workers

    n = pre["through"]
    if (n - 1) % 4:
        raise ValueError(f"through={n}: pass 4 m + 1 points so that the three children lie on the grid")

    def unit(centre: tuple, directions: Any, dims: int, resolution: int, span: tuple, seed: int, out: str) -> Any:
        return SurfaceUnit(
            centre, directions, dims, resolution, span, seed, pre["n_test"], ctx.device, str(ctx.store(out)), data
        )

    span = (-pre["span"], pre["span"])
    units: dict[Any, SurfaceUnit] = {}
    for name in CENTRES:
        start = name.split()[0]
        for s in pre["seeds"]:
            for kind, dims in (("line", 1), ("plane", 2)):
                centre = (kids[start], "children/0")
                units[(kind, name, s)] = unit(centre, "random", dims, pre[kind], span, s, f"{kind}-{start}-s{s}.nc")
    # with 4 m + 1 points on [-0.5, 1.5] the three children are grid points
    sibling, init = (kids["student"], "children/1"), (kids["init"], "children/0")
    units["through"] = unit((kids["student"], "children/0"), [sibling, init], 2, n, (-0.5, 1.5), 0, "through.nc")
    return units


def _gather(pre: dict[str, Any], units: dict[Any, SurfaceUnit]) -> tuple[xr.Dataset, xr.Dataset]:
    """The surfaces' loss and error in one Dataset (centre, seed, t / x, y and u, v), and the plane through
    the children as its unit wrote it."""
    rows: dict[str, list[xr.Dataset]] = {"line": [], "plane": []}
    for name in CENTRES:
        for kind, dims in (("line", {"x": "t"}), ("plane", {})):
            per_seed = [_vars(common.open_result(units[(kind, name, s)].out), kind, dims) for s in pre["seeds"]]
            rows[kind].append(common.stack_seeds([xr.Dataset(v) for v in per_seed], pre["seeds"]))
    through = common.open_result(units["through"].out)
    ds = xr.merge(
        [
            xr.concat(rows["plane"], "centre").assign_coords(centre=list(CENTRES)),  # first: what ``rtt plot`` draws
            xr.concat(rows["line"], "centre").assign_coords(centre=list(CENTRES)),
            xr.Dataset(_vars(through, "through", {"x": "u", "y": "v"})),
        ],
        combine_attrs="drop",
    )
    span = (-pre["span"], pre["span"])
    coords = {"t": ("t", np.linspace(*span, pre["line"])), "u": ("u", through.x.values), "v": ("v", through.y.values)}
    coords |= {k: (k, np.linspace(*span, pre["plane"])) for k in ("x", "y")}
    return ds.assign_coords(coords), through


def compute(pre: dict[str, Any], ctx: common.Context) -> xr.Dataset:
    data = common.load(pre["dataset"], ctx, subset=pre["subset"], n_test=pre["n_test"])
    dcfg, scfg, _, kids = common.student_and_init_children(pre, ctx, data, 2)
    units = _units(pre, ctx, data, {start: path for start, (path, _) in kids.items()})
    common.sweep(list(units.values()), ctx)
    ds, through = _gather(pre, units)
    data_vars = plain(ds.data_vars)
    data_vars["child_test_accuracy"] = (("centre", "child"), np.stack([kids[c.split()[0]][1] for c in CENTRES]))
    attrs = {
        "directions": "line/plane: Gaussian, filter-normalised (Li et al. 2018) per seed; biases and norm "
        "parameters: zero direction; through: child 1 - child 0 (d1), init child 0 - child 0 (d2)",
        "centre_definition": "child 0 of the start (student's last epoch, or the random init at epoch 0)",
        "children": "2 per start, supervised, data_seed = aug_seed = 0 and 1 (landscape.instability)",
        "test_examples": int(len(data.test)),
        "through_d1_norm": float(through.attrs["d1_norm"]),
        "through_d2_norm": float(through.attrs["d2_norm"]),
        "bn_policy": str(through.attrs["bn_policy"]),
        **common.provenance(ctx, {"distill": dcfg, "supervised": scfg}, pre["seeds"], "paper"),
    }
    ds = result_dataset("analyses.surface", data_vars, plain(ds.coords), attrs)
    for c in CENTRES:
        lo = ds.line_loss.sel(centre=c)
        print(
            f"{c}: test loss at the centre {float(lo.sel(t=0, method='nearest').mean()):.4f}, at t = +-{pre['span']:g} "
            f"{float(lo.isel(t=[0, -1]).mean()):.4f} nats (mean over {len(pre['seeds'])} direction seeds)",
            flush=True,
        )
    return ds


def plot(ds: xr.Dataset, path: Any) -> None:
    fig, axes = common.figure(3, 2, width=4.8, height=3.5)
    for i, c in enumerate(ds.centre.values):
        style = dict(color=f"C{i}", marker="")
        common.band(axes[0], ds.t, ds.line_loss.sel(centre=c), str(c), **style)
        common.band(axes[1], ds.t, common.pct(ds.line_error.sel(centre=c)), str(c), **style)
    axes[0].set(xlabel="t along a filter-normalised direction", ylabel="test loss [nats]", title="1-D surfaces")
    axes[1].set(xlabel="t along a filter-normalised direction", ylabel="test error [%]", title="1-D surfaces")
    lo = ds.through_loss.values.T
    cs = axes[2].contourf(ds.u, ds.v, lo, levels=15, cmap="viridis")
    fig.colorbar(cs, ax=axes[2], label="test loss [nats]")
    for (u, v), name in zip(((0, 0), (1, 0), (0, 1)), ("child 0", "sibling", "init child")):
        axes[2].plot(u, v, "o", color="white", mec="black", ms=7)
        axes[2].annotate(name, (u, v), textcoords="offset points", xytext=(5, 5), color="white", fontsize=8)
    axes[2].set(xlabel="u [|sibling - child 0|]", ylabel="v [|init child - child 0|]", title="plane through children")
    # the two maps side by side share one colour range and one colour bar, so equal colours are equal losses
    mean = ds.plane_loss.mean("seed")
    levels = common.shared_levels(*(mean.sel(centre=c).values for c in ds.centre.values))
    for i, c in enumerate(ds.centre.values):
        ax = axes[3 + i]
        z = mean.sel(centre=c).values.T
        cs = ax.contourf(ds.x, ds.y, z, levels=levels, cmap="viridis")
        ax.plot(0, 0, "*", color="white", mec="black", ms=10)
        ax.set(xlabel="x (d1)", ylabel="y (d2)", title=f"2-D, around the {c} (seed mean)")
        ax.set_aspect("equal")  # d1 and d2 are filter-normalised alike: one unit is one unit both ways
    fig.colorbar(cs, ax=[axes[3], axes[4]], label="test loss [nats]")
    e = common.pct(ds.plane_error.mean("seed"))
    for i, c in enumerate(ds.centre.values):
        row = e.sel(centre=c).sel(y=0, method="nearest")
        axes[5].plot(ds.x, row, marker="o", ms=3, color=f"C{i}", label=str(c))
    axes[5].set(xlabel="x (d1) at y = 0", ylabel="test error [%]", title="2-D surfaces, row y = 0")
    common.legend(axes[5], every_panel=True)
    title = "Loss surfaces around the student's children and the init's children"
    common.finish(fig, path, common.title(ds, title, "band: ±1 std over direction seeds"))


main = common.script(__name__, PRESETS, compute, plot)
