"""How much the teacher's linear probe moves with the probe's own seed, and what the reference code's
number is (beyond the paper's figures; it explains where Table 5 is matched and where it is not).

One random teacher per (architecture, seed), BN in eval mode as in the tables, is embedded once on the
full CIFAR-10 split (50k / 10k). Its raw linear probe (10 epochs AdamW, lr 1e-3, batch 256) is then
fitted with many probe seeds in two recipes:

- ``paper``: this toolkit's default probe (batches reshuffled every epoch, no weight decay);
- ``reference``: the authors' probe (``probe_weight_decay=0.01``, ``probe_reshuffle=False``).

The reference code probes the teacher at every epoch with a fresh random probe seed and reports the
maximum over the run (its W&B summary of ``probe/teacher`` is ``max``; ``probe_every=1``), so a 150-epoch
run reports the best of 151 probe fits of the same teacher. ``best`` in this result is that number;
probe seed 0 of the ``paper`` recipe is the tables' number for the same teacher seed.

Every (architecture, seed) is a resumable work unit writing ``runs/probe_spread/<preset>/<arch>-s<seed>.nc``.

    python -m analyses.probe_spread --preset smoke|cpu|full|gpu [--only resnet34] [--executor SPEC]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from analyses import common
from analyses.tables import ARCHS, PAPER_LINEAR, CifarUnit, gather, kept_archs, unit_fields
from distill.config import DistillConfig
from distill.schema import result_dataset

RECIPES = {"paper": dict(weight_decay=0.0, reshuffle=True), "reference": dict(weight_decay=0.01, reshuffle=False)}

PRESETS: dict[str, dict[str, Any]] = {
    "smoke": dict(
        archs=["vgg11", "resnet20"],
        seeds=[0],
        more_seeds={"resnet20": [1]},
        probe_seeds={"paper": 3, "reference": 4},
        subset=100,
        n_test=50,
    ),
    # about 20 minutes on 2 cores: the two cheapest teachers to embed of the tables' cpu preset (VGG11, the
    # paper's main network, and ResNet20), one teacher seed; 151 reference fits (a 150-epoch run of the
    # reference code), 20 of the default probe
    "cpu": dict(
        archs=["vgg11", "resnet20"],
        seeds=[0],
        probe_seeds={"paper": 20, "reference": 151},
        subset=None,
        n_test=None,
    ),
    # the two architectures of Tables 1/3 and the one Table-5 row that misses, one teacher seed each and
    # three for ResNet34 (the paper's "mean of 3 runs"); about 2.5 hours on 2 cores, every teacher resumable
    "full": dict(
        archs=["vgg11", "resnet18", "resnet34"],
        seeds=[0],
        more_seeds={"resnet34": [1, 2]},
        probe_seeds={"paper": 30, "reference": 151},
        subset=None,
        n_test=None,
    ),
    # every Table-5 architecture, three teacher seeds (the paper's "mean of 3 runs")
    "gpu": dict(
        archs=list(ARCHS), seeds=[0, 1, 2], probe_seeds={"paper": 151, "reference": 151}, subset=None, n_test=None
    ),
}


def spread(arch: str, seed: int, data: Any, device: str, counts: dict[str, int]) -> xr.DataArray:
    """Raw linear-probe test accuracy (fraction) of one random teacher, dims (recipe, probe_seed);
    NaN where a recipe has fewer probe seeds than the longest."""
    from distill.device import resolve_device
    from distill.probe import embed, linear_probe
    from distill.train import build_teacher, set_teacher_mode

    cfg = DistillConfig(arch=arch, seed=seed, probe_seed=seed, device=device)
    dev = resolve_device(cfg.device)
    teacher = set_teacher_mode(build_teacher(cfg, data.in_shape).to(dev), cfg.teacher_bn).backbone
    feats = [
        embed(teacher, split.images, data.mean, data.std, batch_size=1024, device=dev, out_device=None)
        for split in (data.train, data.test)
    ]
    n = max(counts.values())
    acc = np.full((len(RECIPES), n), np.nan)
    for i, (recipe, kw) in enumerate(RECIPES.items()):
        for p in range(counts[recipe]):
            acc[i, p] = linear_probe(feats[0], data.train.labels, feats[1], data.test.labels, seed=p, device=dev, **kw)
    a = acc[0, : counts["paper"]], acc[1, : counts["reference"]]
    print(
        f"{arch} seed {seed}: "
        + "; ".join(
            f"{r} {100 * v.mean():.2f} +- {100 * v.std(ddof=1) if v.size > 1 else 0:.2f} (best {100 * v.max():.2f})"
            for r, v in zip(RECIPES, a)
        ),
        flush=True,
    )
    coords = {"recipe": ("recipe", list(RECIPES)), "probe_seed": ("probe_seed", np.arange(n))}
    return result_dataset(
        "analyses.probe_spread.teacher", {"accuracy": (("recipe", "probe_seed"), acc)}, coords
    ).accuracy


@dataclass(frozen=True)
class Spread(CifarUnit):
    """One teacher's probe-seed spread (:func:`spread`) as a work unit."""

    arch: str
    seed: int
    counts: dict

    def run(self) -> xr.Dataset:
        """Embed the teacher and fit the probes."""
        return spread(self.arch, self.seed, self.dataset(), self.device, self.counts).to_dataset()


def compute(pre: dict[str, Any], ctx: common.Context) -> xr.Dataset:
    from analyses.probe_spread import Spread  # the importable class (not __main__'s) travels

    archs = kept_archs(pre, ctx)
    seeds_of = {a: list(pre["seeds"]) + list(pre.get("more_seeds", {}).get(a, [])) for a in archs}
    seeds = sorted({s for a in archs for s in seeds_of[a]})
    counts = dict(pre["probe_seeds"])
    data = common.load("cifar10", ctx, subset=pre["subset"], n_test=pre["n_test"])
    where = unit_fields(pre, ctx, data)
    units = {
        (a, s): Spread(a, s, counts, out=str(ctx.store(f"{a}-s{s}.nc")), **where) for a in archs for s in seeds_of[a]
    }
    common.sweep(list(units.values()), ctx)
    acc = gather(units, seeds_of).sel(seed=seeds)  # NaN where an architecture has fewer teacher seeds
    best = acc.max("probe_seed")
    teachers = {f"teacher-{a}": DistillConfig(arch=a, seed=seeds[0], device=ctx.device) for a in archs}
    ds = result_dataset(
        "analyses.probe_spread",
        {
            "accuracy": acc,
            "best": best,
            "paper_teacher_linear": (
                "arch",
                [PAPER_LINEAR[a][0] / 100 if a in PAPER_LINEAR else np.nan for a in archs],
            ),
        },
        attrs={
            "dataset": "cifar10",
            "train_images": int(len(data.train)),
            "test_images": int(len(data.test)),
            "probe_seeds": ", ".join(f"{r}: {c}" for r, c in counts.items()),
            "recipes": "paper: batches reshuffled every epoch, weight decay 0; reference: one batch order "
            "replayed every epoch, AdamW's default weight decay 0.01",
            **common.provenance(ctx, teachers, seeds, "paper"),
        },
    )
    table(ds)
    return ds


def table(ds: xr.Dataset) -> None:
    """Print mean +- std over probe seeds and the best, per architecture and teacher seed, in percent, and the
    mean over teacher seeds of the best (the paper's "mean of 3 runs" of the reference code's number)."""
    print("\narch       seed  paper probe: mean +- std (best)   reference probe: mean +- std (best)   paper Table 5")
    for a in ds.arch.values:
        for s in ds.seed.values:
            if not np.isfinite(ds.accuracy.sel(arch=a, seed=s).values).any():
                continue
            cells = []
            for r in ds.recipe.values:
                v = ds.accuracy.sel(arch=a, seed=s, recipe=r)
                cells.append(f"{common.pm(v, ddof=1)} ({100 * float(v.max()):6.2f})")
            print(
                f"{a:<10} {int(s):4d}  {cells[0]:<31}  {cells[1]:<36}  "
                f"{100 * float(ds.paper_teacher_linear.sel(arch=a)):.2f}"
            )
        best = 100 * ds.best.sel(arch=a, recipe="reference").values
        best = best[np.isfinite(best)]
        if best.size > 1:
            print(
                f"{a:<10} mean over {best.size} teacher seeds of the reference best: "
                f"{best.mean():.2f} +- {best.std():.2f}"
            )


def plot(ds: xr.Dataset, path: Any) -> None:
    archs = [str(a) for a in ds.arch.values]
    # the axes take the figure's whole width (the legend goes under them): room for every teacher's name
    fig, axes = common.figure(1, 1, width=max(6.4, 2.2 * len(archs) + 1.0), height=4.8)
    ax = axes[0]
    rng = np.random.default_rng(0)
    colors = {"paper": "C0", "reference": "C3"}
    for i, a in enumerate(archs):
        for j, r in enumerate(ds.recipe.values):
            x0, color = i + (j - 0.5) * 0.36, colors[str(r)]
            v = common.pct(ds.accuracy.sel(arch=a, recipe=r)).values.ravel()
            v = v[np.isfinite(v)]
            fits = f"{r} probe, one fit per probe seed" if i == 0 else None
            ax.scatter(x0 + rng.uniform(-0.1, 0.1, v.size), v, s=6, alpha=0.35, color=color, label=fits)
            ax.errorbar(x0 + 0.14, v.mean(), yerr=v.std(), fmt="o", color=color, ms=4, capsize=3)
            tops = common.pct(ds.best.sel(arch=a, recipe=r)).values
            tops = tops[np.isfinite(tops)]
            best = f"{r} probe: best over its seeds (one star per teacher seed)" if i == 0 else None
            star = dict(marker="*", s=70, edgecolor="k", linewidths=0.5, zorder=3)
            ax.scatter(np.full(tops.size, x0 + 0.14), tops, color=color, label=best, **star)
        paper = 100 * float(ds.paper_teacher_linear.sel(arch=a))
        ax.hlines(paper, i - 0.45, i + 0.45, color="k", ls="--", lw=1.2, label="paper, Table 5" if i == 0 else None)
    ax.set_xticks(range(len(archs)), [common.arch_name(a) for a in archs])
    ax.set_xlim(-0.6, len(archs) - 0.4)
    ax.set(xlabel="random teacher (architecture)", ylabel="raw linear probe test accuracy [%]")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncols=2 if len(archs) > 2 else 1)
    title = "Linear probes of random teachers over probe seeds"
    note = (
        f"probe seeds {ds.attrs.get('probe_seeds')}; {int(ds.attrs.get('test_images', 0)):,} test images;"
        " error bars: mean ± 1 std, star: best"
    )
    common.finish(fig, path, common.title(ds, title, note, training=False))


main = common.script(__name__, PRESETS, compute, plot)
