"""Tables 1, 3 and 5 (CIFAR-10): probes of random teachers of every Table-5 architecture, the input
baseline, and distilled students where the preset allows, beside the paper's numbers.

Teacher and input columns need no training: the random teacher (the paper's setup: BN in eval
mode with its initial statistics) is embedded on the full training split (50k) and probed on the
full test split (10k); the BN-recalibrated teacher (its BN statistics re-estimated on training
images) is the control beyond the paper. Every teacher (architecture, seed), input-probe seed and
student is an independent work unit writing its own file under ``runs/tables/<preset>/``: ``--executor``
runs them in parallel, and a rerun (or an interrupted run) skips the finished ones.

    python -m analyses.tables --preset smoke|cpu|full|gpu [--only vgg11,resnet18] [--executor SPEC]
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from analyses import common
from analyses.units import Unit
from distill.config import REFERENCE_VIT, DistillConfig
from distill.schema import result_dataset
from distill.store import Store

ARCHS = ("vgg11", "vgg13", "vgg16", "vgg19", "resnet18", "resnet20", "resnet34", "resnet56", "vit_tiny", "vit_small")
PROBES = ["knn", "linear", "linear_std"]
# rows beyond the registry's defaults: name -> (architecture, arch_options); compared with the same
# paper numbers as their architecture. "-reference": the authors' code's ViT (distill.config.REFERENCE_VIT:
# its block, tied blocks, PyTorch's init), at the paper's patch size 8
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "vit_tiny-reference": ("vit_tiny", dict(REFERENCE_VIT)),
    "vit_small-reference": ("vit_small", dict(REFERENCE_VIT)),
}


def _base(name: str) -> tuple[str, dict[str, Any]]:
    """The architecture and extra arch_options of a row name (an architecture or a VARIANTS key)."""
    return VARIANTS.get(name, (name, {}))


def _arch_and_options(name: str, preset_options: dict[str, dict]) -> tuple[str, dict[str, Any]]:
    """A row's architecture and arch_options: the preset's for the architecture, then the variant's,
    then the preset's for the row name."""
    arch, extra = _base(name)
    return arch, {**preset_options.get(arch, {}), **extra, **preset_options.get(name, {})}


def _order(name: str) -> tuple[int, int]:
    """Sort key: the paper's order of architectures, each variant after its architecture."""
    base = _base(name)[0]
    return (ARCHS.index(base) if base in ARCHS else len(ARCHS), name in VARIANTS)


# the paper, CIFAR-10, percent: Table 5 (linear; VGG11 / ResNet18 from Table 1) and Table 3 (k-NN)
PAPER_LINEAR = {
    "vgg11": (36.55, 51.98),
    "vgg13": (34.73, 49.26),
    "vgg16": (33.08, 46.35),
    "vgg19": (30.84, 43.90),
    "resnet18": (35.50, 46.02),
    "resnet20": (28.68, 36.62),
    "resnet34": (28.18, 41.04),
    "resnet56": (14.05, 27.92),
    "vit_tiny": (32.93, 35.76),
    "vit_small": (38.57, 41.68),
}
PAPER_KNN = {"vgg11": (44.92, 51.32), "resnet18": (37.65, 44.67)}
PAPER_INPUT = {"linear": 39.02, "knn": 33.61}


def _teachers(archs: list[str], seeds: list[int]) -> dict[str, Any]:
    """A preset of teachers ``archs`` of ``seeds`` and input probes of the same seeds, on the full splits,
    with no student."""
    return dict(archs=archs, seeds=seeds, input_seeds=list(seeds), subset=None, n_test=None, student=None)


PRESETS: dict[str, dict[str, Any]] = {
    # seconds: two archs on 100 training / 50 test images, one tiny student
    "smoke": dict(
        archs=["vgg11", "vit_tiny", "vit_tiny-reference"],
        seeds=[0],
        subset=100,
        n_test=50,
        arch_options={"vit_tiny": {"depth": 1}},
        student=dict(
            archs=["vgg11"],
            seeds=[0],
            cfg=dict(common.SMOKE_HEAD, subset=100, epochs=1, lr=1e-4, probe_every=1, batch_size=50, probe_subset=100),
        ),
    ),
    # what 2 cores hold in about 20 minutes: the three cheapest Table-5 teachers (VGG11 with Tables 1 and 3,
    # ResNet20, ViT-Tiny) and the input baseline, on the full 50k / 10k split, one seed each, computed as
    # "full" computes them; no student (150 epochs need a GPU)
    "cpu": _teachers(["vgg11", "resnet20", "vit_tiny"], [0]),
    # every Table-5 architecture and the authors' ViT on the full 50k / 10k split, one teacher seed each: about
    # two hours on 2 cores (forward passes of 60k images per row are the cost; every row is a resumable unit)
    "full": _teachers(
        ["vgg11", "resnet20", "vit_tiny", "resnet18", "resnet56", "vit_small", "vgg13", "vgg16", "vgg19", "resnet34"]
        + ["vit_tiny-reference", "vit_small-reference"],
        [0],
    ),
    # the paper's scale: every teacher over three seeds on the full split. The students of Tables 1 and 3
    # (VGG11 and ResNet18, three seeds, 150 epochs, fp32) are analyses.table1's gpu preset, not trained twice.
    "gpu": _teachers([*ARCHS, *VARIANTS], [0, 1, 2]),
}


@dataclass(frozen=True, kw_only=True)
class CifarUnit(Unit):
    """What the work units on CIFAR-10 share (:mod:`landscape.executors`):
    picklable; ``out`` is the unit's result file; ``data`` the dataset (None: loaded where the unit runs,
    e.g. on a worker) from ``root``, which is not a setting. Subclasses define :meth:`run`."""

    IGNORED = ("out", "data", "root")
    device: str
    root: str | None
    subset: int | None
    n_test: int | None
    out: str
    data: Any = None

    def adopt(self, ds: xr.Dataset) -> bool:
        """A file of a version that recorded no settings is this unit's when it holds a whole result."""
        return "accuracy" in ds

    def dataset(self) -> Any:
        """The unit's CIFAR-10: ``data``, or ``subset`` training images (seed 0) and ``n_test`` test images."""
        from distill.data import load_dataset

        if self.data is not None:
            return self.data
        return common.tiny_test(load_dataset("cifar10", root=self.root, subset=self.subset, seed=0), self.n_test)


@dataclass(frozen=True)
class TeacherProbes(CifarUnit):
    """Probes of one random teacher (arch, seed) and its BN-recalibrated copy: accuracy (fraction, dims
    (model, probe))."""

    arch: str
    seed: int
    arch_options: dict

    def run(self) -> xr.Dataset:
        """Probe the teacher."""
        return teacher_result(self.arch, self.seed, self.dataset(), self.device, self.root, self.arch_options)


@dataclass(frozen=True)
class InputProbes(CifarUnit):
    """Raw-pixel probes with one probe seed: accuracy (dims (probe,))."""

    seed: int

    def run(self) -> xr.Dataset:
        """Probe the raw pixels."""
        return input_probes(self.seed, self.dataset(), self.device).to_dataset()


def _config(arch: str, seed: int, device: str, root: str | None, **fields: Any) -> DistillConfig:
    """The DistillConfig of a teacher (or student) of the tables: ``seed`` for the network and the probes."""
    return DistillConfig(arch=arch, seed=seed, probe_seed=seed, probes=PROBES, device=device, data_root=root, **fields)


def teacher_probes(
    arch: str, seed: int, data: Any, device: str, root: str | None, arch_options: dict, path: str | Path | None = None
) -> xr.DataArray:
    """Probe accuracies (fraction) of the random teacher and its BN-recalibrated copy; dims (model, probe).
    Written to ``path`` when given (:func:`teacher_result`)."""
    ds = teacher_result(arch, seed, data, device, root, arch_options)
    if path is not None:
        common.save(ds, path)
    return ds.accuracy


def teacher_result(arch: str, seed: int, data: Any, device: str, root: str | None, arch_options: dict) -> xr.Dataset:
    """:func:`teacher_probes` as a result: ``accuracy`` (model, probe), the teacher's config in its attrs."""
    from distill.bn import has_batchnorm
    from distill.device import resolve_device
    from distill.train import build_teacher, recalibrated_teacher, run_probes, set_teacher_mode

    cfg = _config(arch, seed, device, root, arch_options=arch_options)
    dev = resolve_device(cfg.device)
    teacher = set_teacher_mode(build_teacher(cfg, data.in_shape).to(dev), cfg.teacher_bn)
    t = run_probes(cfg, teacher.backbone, data, dev)
    bn = has_batchnorm(teacher)
    tb = run_probes(cfg, recalibrated_teacher(teacher, data, cfg, dev).backbone, data, dev) if bn else t
    recalibrated = " | BN recalibrated: " + common.percents({p: tb[p] for p in PROBES}) if bn else ""
    print(f"teacher {arch} seed {seed}: " + common.percents({p: t[p] for p in PROBES}) + recalibrated, flush=True)
    return result_dataset(
        "analyses.tables.teacher",
        {"accuracy": (("model", "probe"), [[t[p] for p in PROBES], [tb[p] for p in PROBES]])},
        {"model": ("model", ["teacher", "teacher_bn"]), "probe": ("probe", PROBES)},
        {"config": cfg.to_json()},
    )


def input_probes(seed: int, data: Any, device: str) -> xr.DataArray:
    """Raw-pixel probes (fraction), dims (probe,)."""
    from distill.device import resolve_device
    from distill.train import run_probes

    cfg = DistillConfig(probes=PROBES, probe_seed=seed, device=device)
    r = run_probes(cfg, None, data, resolve_device(cfg.device))
    ds = result_dataset(
        "analyses.tables.input", {"accuracy": ("probe", [r[p] for p in PROBES])}, {"probe": ("probe", PROBES)}
    )
    print(f"input seed {seed}: " + common.percents({p: r[p] for p in PROBES}), flush=True)
    return ds.accuracy


def kept_archs(pre: dict[str, Any], ctx: common.Context) -> list[str]:
    """The preset's architectures that ``--only`` keeps; a UsageError when it keeps none."""
    archs = ctx.keep(list(pre["archs"]))
    if not archs:
        raise common.UsageError(
            f"--only {','.join(ctx.only)} names none of the preset's architectures: "
            f"choose from {', '.join(pre['archs'])}"
        )
    return archs


def unit_fields(pre: dict[str, Any], ctx: common.Context, data: Any) -> dict[str, Any]:
    """The :class:`CifarUnit` fields of a preset (``data`` travels only without an executor)."""
    ship = data if ctx.executor is None else None
    return dict(device=ctx.device, root=ctx.root, subset=pre["subset"], n_test=pre["n_test"], data=ship)


def gather(units: Mapping[Any, CifarUnit], seeds_of: dict[str, list[int]]) -> xr.DataArray:
    """The accuracy the units wrote, by (arch, seed) (``seeds_of``: the seeds of each architecture), dims
    (arch, seed, ...); NaN at the seeds an architecture does not have."""
    rows = [
        common.stack_seeds([common.open_result(units[(a, s)].out).accuracy for s in ss], ss)
        for a, ss in seeds_of.items()
    ]
    return common.along("arch", list(seeds_of), rows, join="outer")


def _students(
    pre: dict[str, Any], ctx: common.Context, archs: list[str], data: Any
) -> tuple[dict[tuple[str, int], Any], dict[str, Any]]:
    """The preset's student distillations (of the architectures ``--only`` keeps) as work units by (arch,
    seed), and their configs by name; none where the preset has no student."""
    from landscape.locality import DistillUnit

    students: dict[tuple[str, int], DistillUnit] = {}
    configs: dict[str, Any] = {}
    st = pre.get("student")
    if not st:
        return students, configs
    sub = st["cfg"].get("subset")
    sdata = data if sub == pre["subset"] else common.load("cifar10", ctx, subset=sub, n_test=pre["n_test"])
    for a in [a for a in st["archs"] if a in archs]:
        for s in st["seeds"]:
            cfg = _config(a, s, ctx.device, ctx.root, noise_seed=s + 1000, **{"save_every": 0, **st["cfg"]})
            configs[f"student-{a}-s{s}"] = cfg
            ship = sdata if ctx.executor is None or pre["n_test"] is not None else None
            students[(a, s)] = DistillUnit(cfg.to_dict(), str(ctx.store(f"student-{a}-s{s}.rts")), ship)
    return students, configs


def _paper_columns(archs: list[str]) -> dict[str, Any]:
    """The paper's numbers beside ours (fractions): teacher and student, linear and k-NN, per row; input
    pixels per probe."""
    pl = np.array([PAPER_LINEAR.get(_base(a)[0], (np.nan, np.nan)) for a in archs]) / 100
    pk = np.array([PAPER_KNN.get(_base(a)[0], (np.nan, np.nan)) for a in archs]) / 100
    out: dict[str, Any] = {}
    for probe, values in (("linear", pl), ("knn", pk)):
        for i, model in enumerate(("teacher", "student")):
            out[f"paper_{model}_{probe}"] = ("arch", values[:, i])
    out["paper_input"] = ("probe", [PAPER_INPUT.get(p, np.nan) / 100 for p in PROBES])
    return out


def compute(pre: dict[str, Any], ctx: common.Context) -> xr.Dataset:
    from analyses.tables import InputProbes, TeacherProbes  # the importable classes (not __main__'s) travel

    archs, seeds = kept_archs(pre, ctx), list(pre["seeds"])
    opts = pre.get("arch_options", {})
    in_seeds = list(pre.get("input_seeds", seeds))
    # the data travels with the units only without an executor (no copy) or when the cut test split
    # cannot be rebuilt from the settings (students); otherwise every worker loads it (cached on disk)
    data = common.load("cifar10", ctx, subset=pre["subset"], n_test=pre["n_test"])
    where = unit_fields(pre, ctx, data)
    row = {a: _arch_and_options(a, opts) for a in archs}
    teachers = {
        (a, s): TeacherProbes(row[a][0], s, row[a][1], out=str(ctx.store(f"teacher-{a}-s{s}.nc")), **where)
        for a in archs
        for s in seeds
    }
    inputs = {s: InputProbes(s, out=str(ctx.store(f"input-s{s}.nc")), **where) for s in in_seeds}
    students, configs = _students(pre, ctx, archs, data)
    # every teacher, input and student is independent: one sweep, through --executor when given
    common.sweep([*teachers.values(), *inputs.values(), *students.values()], ctx)
    teacher = gather(teachers, {a: seeds for a in archs})
    archs = sorted(archs, key=_order)  # the paper's order, variants after their architecture
    teacher = teacher.sel(arch=archs)
    inp = common.stack_seeds([common.open_result(inputs[s].out).accuracy for s in in_seeds], in_seeds).rename(
        seed="input_seed"
    )
    student = xr.full_like(teacher.isel(model=0, drop=True), np.nan)
    for (a, s), unit in students.items():
        best = common.best_over_epochs(Store(unit.out).metrics).sel(model="student")
        if s in seeds:
            student.loc[{"arch": a, "seed": s}] = best.sel(probe=PROBES).values
    ds = result_dataset(
        "analyses.tables",
        {
            "teacher": teacher.sel(model="teacher", drop=True),
            "teacher_bn": teacher.sel(model="teacher_bn", drop=True),
            "student": student.assign_attrs(statistic="best_after_epoch0"),
            "input": inp,
            **_paper_columns(archs),
        },
        attrs={
            "dataset": "cifar10",
            "train_images": int(len(data.train)),
            "test_images": int(len(data.test)),
            "probes": "knn: k=20 Euclidean unweighted; linear: 10 epochs AdamW lr 1e-3 on raw embeddings; "
            "linear_std: the same on standardised embeddings",
            **common.provenance(ctx, configs, seeds, "paper"),
        },
    )
    table(ds)
    return ds


def table(ds: xr.Dataset) -> None:
    """Print ours beside the paper's, in percent (mean +- std over seeds)."""
    ms = common.pm

    print("\narch        teacher linear   (paper)  teacher kNN     (paper)  teacher_bn linear  student linear")
    for a in ds.arch.values:
        r = ds.sel(arch=a)
        print(
            f"{a:<10} {ms(r.teacher.sel(probe='linear'))} ({100 * float(r.paper_teacher_linear):5.2f}) "
            f"{ms(r.teacher.sel(probe='knn'))} ({100 * float(r.paper_teacher_knn):5.2f}) "
            f"{ms(r.teacher_bn.sel(probe='linear'))}  {ms(r.student.sel(probe='linear'))}"
        )
    print(f"input      linear {ms(ds.input.sel(probe='linear'))} (39.02)   kNN {ms(ds.input.sel(probe='knn'))} (33.61)")


def plot(ds: xr.Dataset, path: Any) -> None:
    archs = [str(a) for a in ds.arch.values]
    # the two probes one above the other, wide enough for every architecture's name; the legend right of them
    fig, axes = common.figure(1, 2, width=max(6.4, 0.75 * len(archs) + 2.5), height=3.0)
    x = np.arange(len(archs))
    for ax, probe, paper_t, paper_s in (
        (axes[0], "linear", ds.paper_teacher_linear, ds.paper_student_linear),
        (axes[1], "knn", ds.paper_teacher_knn, ds.paper_student_knn),
    ):
        w = 0.2
        for i, (var, label, color) in enumerate(
            (
                ("teacher", "teacher (ours)", "C0"),
                ("teacher_bn", "teacher, BN recalibrated (ours)", "C1"),
                ("student", "student (ours)", "C2"),
            )
        ):
            da = common.pct(ds[var].sel(probe=probe))
            if not np.isfinite(da.values).any():  # no students in this preset: no bars, no legend entry
                continue
            ax.bar(x + (i - 1.5) * w, da.mean("seed"), w, yerr=da.std("seed"), color=color, label=label)
        ax.bar(x + 1.5 * w, common.pct(paper_t), w, color="none", edgecolor="C0", hatch="//", label="teacher (paper)")
        ax.scatter(x + 1.5 * w, common.pct(paper_s), marker="*", color="C2", zorder=3, label="student (paper)")
        inp = common.pct(ds.input.sel(probe=probe)).mean("input_seed")
        ax.axhline(float(inp), color="0.3", ls=":", label="input pixels (ours)")
        ax.axhline(100 * float(ds.paper_input.sel(probe=probe)), color="0.6", ls="-.", label="input pixels (paper)")
        names = [
            common.arch_name(a.removesuffix("-reference")) + ("\n(reference)" if a.endswith("-reference") else "")
            for a in archs
        ]
        ax.set_xticks(x, names, fontsize=8)
        ax.set_ylabel("test accuracy [%]")
        ax.set_title("linear probe" if probe == "linear" else "k-NN probe (k = 20)", fontsize=10)
    common.legend(axes[0], every_panel=True)
    title = "Table 5: probe accuracy of random teachers on CIFAR-10, ours and the paper's"
    note = f"{int(ds.attrs.get('test_images', 0)):,} test images"
    common.finish(fig, path, common.title(ds, title, note, training=False))


main = common.script(__name__, PRESETS, compute, plot)
