"""The GPU plan: the floating-point work of every part of the gpu presets, the minutes it is expected to
take on one H100, and how many resumable calls of ``scripts/gpu-analyses.sh`` finish it.

FLOPs per image are counted by ``torch.utils.flop_counter`` on the meta device (shapes only, nothing is
computed), split into convolutions (cuDNN: TF32 tensor cores under PyTorch's default
``cudnn.allow_tf32=True``) and matrix products (plain fp32 under the default
``float32_matmul_precision="highest"``). The part counts (runs, epochs, probes, levels, children, grid
points) are read from the presets themselves. The minutes assume the sustained rates in :data:`RATE`,
which are assumptions, not measurements: replace them by a measured seconds-per-epoch when a GPU run
gives one (``bench/README.md``).

    python -m bench.gpu_plan [--markdown]      # prints the plan table (a few seconds on a CPU)
"""

from __future__ import annotations

import argparse
import functools
import math
from dataclasses import dataclass
from typing import Any

TRAIN, TEST = 50_000, 10_000
CALL_MINUTES = 9.0  # the work of one call; the rest of a 10-minute call is start-up and copying results
# Sustained rates on one H100 SXM (peaks: 495 TFLOP/s dense TF32 tensor-core, 67 TFLOP/s fp32): 20 % and
# 50 % of peak for 32x32 images at batch 256, and 1.5x on top for memory-bound work (norms, softmax,
# optimiser, data movement). Assumptions.
RATE = {"conv": 0.20 * 495e12, "mm": 0.50 * 67e12}
OVERHEAD = 1.5


@dataclass(frozen=True)
class Flops:
    """Floating-point operations, split by where they run (conv: TF32 tensor cores, mm: fp32)."""

    conv: float = 0.0
    mm: float = 0.0

    def __add__(self, o: Flops) -> Flops:
        return Flops(self.conv + o.conv, self.mm + o.mm)

    def __mul__(self, k: float) -> Flops:
        return Flops(self.conv * k, self.mm * k)

    __rmul__ = __mul__

    @property
    def total(self) -> float:
        return self.conv + self.mm

    def minutes(self) -> float:
        """Expected minutes on one H100 at :data:`RATE` (with :data:`OVERHEAD`)."""
        return OVERHEAD * (self.conv / RATE["conv"] + self.mm / RATE["mm"]) / 60


def _count(fn: Any) -> Flops:
    from torch.utils.flop_counter import FlopCounterMode

    fc = FlopCounterMode(display=False)
    with fc:
        fn()
    conv = mm = 0.0
    for op, n in fc.get_flop_counts().get("Global", {}).items():
        if "convolution" in str(op):
            conv += n
        else:
            mm += n
    return Flops(conv, mm)


@functools.cache
def distill_step(arch: str, out_dim: int = 65536, batch: int = 256) -> Flops:
    """One distillation step per image: teacher forward, student forward and backward, with the DINO head."""
    import torch

    from distill.config import DistillConfig
    from distill.train import build_teacher, distillation_loss

    cfg = DistillConfig(arch=arch, out_dim=out_dim, device="cpu")
    with torch.device("meta"):
        t, s = build_teacher(cfg, (3, 32, 32)), build_teacher(cfg, (3, 32, 32))
        x = torch.empty(batch, 3, 32, 32)

    def step() -> None:
        with torch.no_grad():
            to = t(x)
        distillation_loss(to, s(x)).backward()

    return _count(step) * (1 / batch)


@functools.cache
def forward(arch: str, batch: int = 256) -> Flops:
    """The backbone's forward per image (probe embeddings, BN resets, evaluation)."""
    import torch

    from distill.config import DistillConfig
    from distill.train import build_teacher

    with torch.device("meta"):
        net = build_teacher(DistillConfig(arch=arch, device="cpu"), (3, 32, 32)).backbone
        x = torch.empty(batch, 3, 32, 32)
    with torch.no_grad():
        return _count(lambda: net(x)) * (1 / batch)


@functools.cache
def supervised_step(arch: str, batch: int = 256) -> Flops:
    """One supervised SGD step per image (backbone and a 10-way linear head, forward and backward)."""
    import torch
    import torch.nn.functional as F

    from distill.models import build_model

    with torch.device("meta"):
        net = build_model(arch, (3, 32, 32), head="linear", num_classes=10)
        x, y = torch.empty(batch, 3, 32, 32), torch.zeros(batch, dtype=torch.long)
    return _count(lambda: F.cross_entropy(net(x), y).backward()) * (1 / batch)


def probe(arch: str) -> Flops:
    """One probed epoch of a student: embed 60k images, k-NN (10k x 50k x 512 products), two linear probes
    (10 epochs on 50k x 512 features, 10 classes)."""
    knn = Flops(mm=2 * TEST * TRAIN * 512)
    linear = Flops(mm=2 * 10 * TRAIN * 512 * 10 * 6)
    return forward(arch) * (TRAIN + TEST) + knn + linear


def distil_run(arch: str, epochs: int, probes: int, images: int = TRAIN, out_dim: int = 65536) -> Flops:
    """A distillation run: ``epochs`` over ``images`` plus ``probes`` probed epochs and the teacher's probes."""
    return distill_step(arch, out_dim) * (epochs * images) + probe(arch) * (probes + 1)


def child(arch: str, epochs: int = 160) -> Flops:
    """A supervised child (the paper's recipe), evaluated on the test split at the end."""
    return supervised_step(arch) * (epochs * TRAIN) + forward(arch) * TEST


def path_point(arch: str, bn_images: int = 10_000) -> Flops:
    """One point of a path or grid: a BN reset pass and the test split's evaluation."""
    return forward(arch) * (bn_images + TEST)


def probed(epochs: int, every: int) -> int:
    return epochs // every if every else 1


def parts() -> list[tuple[str, str, Flops]]:
    """(part, what it holds, FLOPs) in the order of the plan: Tables 1 and 3 first, then the figures."""
    from analyses import (
        data_dependence,
        head_dim,
        hessian,
        instability,
        locality,
        lottery,
        planes,
        probe_spread,
        probing_curves,
        surface,
        table1,
        tables,
        transfer,
    )

    out: list[tuple[str, str, Flops]] = []
    t1 = table1.PRESETS["gpu"]
    for arch, recipe, seed in t1["runs"]:
        c = t1["cfg"]
        out.append(
            (
                f"table1 {arch} s{seed}",
                f"{recipe} recipe, {c['epochs']} epochs, a probe every {c['probe_every']}",
                distil_run(arch, c["epochs"], probed(c["epochs"], c["probe_every"])),
            )
        )
    tb = tables.PRESETS["gpu"]
    work = Flops()
    for a in tb["archs"]:
        base = tables._base(a)[0]
        work = work + forward(base) * ((TRAIN + TEST + TRAIN) * len(tb["seeds"]))  # embed + BN recalibration
    out.append(("tables", f"{len(tb['archs'])} teachers x {len(tb['seeds'])} seeds, embedded", work))
    ps = probe_spread.PRESETS["gpu"]
    work = sum((forward(a) * (TRAIN + TEST) * len(ps["seeds"]) for a in ps["archs"]), Flops())
    fits = sum(ps["probe_seeds"].values()) * len(ps["archs"]) * len(ps["seeds"])
    out.append(("probe_spread", f"{fits} linear fits", work + Flops(mm=2 * 10 * TRAIN * 512 * 10 * 6) * fits))
    pc = probing_curves.PRESETS["gpu"]
    c = pc["cfg"]
    run = distil_run(c["arch"], c["epochs"], probed(c["epochs"], c["probe_every"]))
    out.append(("probing_curves", f"Figure 1: {len(pc['seeds'])} x {c['arch']} {c['epochs']} epochs", run * 3))
    lo = locality.PRESETS["gpu"]
    c = lo["cfg"]
    n = len(lo["alphas"]) * len(lo["seeds"])
    work = sum(
        (distil_run(k["arch"], c["epochs"], probed(c["epochs"], c["probe_every"])) * n for k in lo["nets"].values()),
        Flops(),
    )
    out.append(("locality", f"Figure 3: {n} runs x {len(lo['nets'])} nets, {c['epochs']} epochs", work))
    dd = data_dependence.PRESETS["gpu"]
    budget = dd["epochs"] * math.ceil(max(dd["ns"]) / 256)
    steps = dd["epochs"] * sum(math.ceil(n / 256) for n in dd["ns"]) + budget
    runs = 2 * len(dd["seeds"]) * (len(dd["ns"]) + 1)
    work = distill_step("vgg11") * (steps * 256 * 2 * len(dd["seeds"])) + probe("vgg11") * (2 * runs)
    out.append(("data_dependence", f"Figure 4: {runs} runs, {steps} steps per data kind and seed", work))
    pl = planes.PRESETS["gpu"]
    c = pl["cfg"]
    grid = 2 * pl["resolution"] ** 2
    point = distill_step(c["arch"]) * (pl["n_loss"] / 3) + forward(c["arch"]) * (pl["n_probe"] + pl["n_test"])
    work = distil_run(c["arch"], c["epochs"], 1) * 2 + point * grid
    out.append(("planes", f"Figure 5: 2 students, {grid} grid points", work))
    lt = lottery.PRESETS["gpu"]
    d = lt["distill"]
    trainings = 5 * lt["levels"] * len(lt["seeds"])  # IMP + 2 baselines from the student, init, early steps
    work = distil_run(d["arch"], d["epochs"], 1) + child(d["arch"]) * trainings
    out.append(("lottery", f"Figure 8: {trainings} retrainings of 160 epochs ({lt['levels']} levels)", work))
    it = instability.PRESETS["gpu"]
    d = it["distill"]
    starts = len(it["epochs"]) + 1  # the checkpoints and an independent initialisation
    pairs = it["children"] * (it["children"] - 1) // 2
    work = (
        distil_run(d["arch"], d["epochs"], 1) * 2
        + child(d["arch"]) * (starts * it["children"])
        + path_point(d["arch"]) * (starts * pairs * it["alphas"])
    )
    out.append(("instability", f"Figure 9: {starts * it['children']} children, {starts * pairs} paths", work))
    hd = head_dim.PRESETS["gpu"]
    c = hd["cfg"]
    work = Flops()
    for o in hd["out_dims"]:
        work = work + distil_run(c["arch"], c["epochs"], probed(c["epochs"], c["probe_every"]), out_dim=o)
    for _ in hd["bottlenecks"]:
        work = work + distil_run(
            c["arch"], c["epochs"], probed(c["epochs"], c["probe_every"]), out_dim=hd["bottleneck_out"]
        )
    points = len(hd["out_dims"]) + len(hd["bottlenecks"])
    out.append(
        (
            "head_dim",
            f"Figure 10: {points} points x {len(hd['seeds'])} seed, {c['epochs']} epochs",
            work * len(hd["seeds"]),
        )
    )
    tr = transfer.PRESETS["gpu"]
    c = tr["cfg"]
    runs = 2 * len(tr["seeds"]) * len(tr["pairs"])
    out.append(
        (
            "transfer",
            f"Tables 2/4: {runs} runs on 25k images",
            distil_run(c["arch"], c["epochs"], 16, TRAIN // 2) * runs,
        )
    )
    sf = surface.PRESETS["gpu"]
    d = sf["distill"]
    seeds = len(sf["seeds"])
    grid = 2 * (sf["line"] + sf["plane"] ** 2) + sf["through"] ** 2
    work = (
        distil_run(d["arch"], d["epochs"], 1) * seeds
        + child(d["arch"]) * (2 * 2 * seeds)
        + path_point(d["arch"], 2000) * (grid * seeds)
    )
    out.append(("surface", f"beyond the paper: {4 * seeds} children, {grid * seeds} surface points (rough)", work))
    hs = hessian.PRESETS["gpu"]
    d = hs["distill"]
    hvps = (hs["children"] * (hs["children"] - 1) // 2 * 2 * hs["alphas"] + hs["levels"]) * (
        hs["k"] * 20 + hs["probes"]
    )
    hvps += 2 * hs["slq_runs"] * hs["slq_steps"]
    hvp = supervised_step(d["arch"]) * (2 * hs["batches"] * hs["batch_size"])
    work = distil_run(d["arch"], d["epochs"], 1) + child(d["arch"]) * (2 * hs["children"] + hs["levels"]) + hvp * hvps
    out.append(("hessian", f"beyond the paper: about {hvps} Hessian-vector products (rough)", work))
    return out


def table(markdown: bool = False) -> str:
    """The plan as text: part, FLOPs, expected H100 minutes, calls of :data:`CALL_MINUTES`, running total."""
    rows, total = [], 0.0
    head = ("part", "what", "PFLOP", "H100 min", "calls", "cum. calls")
    calls_total = 0
    for name, what, f in parts():
        minutes = f.minutes()
        calls = max(1, math.ceil(minutes / CALL_MINUTES))
        total += minutes
        calls_total += calls
        rows.append((name, what, f"{f.total / 1e15:.1f}", f"{minutes:.0f}", str(calls), str(calls_total)))
    rows.append(("total", "", "", f"{total:.0f}", str(calls_total), ""))
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in [head, *rows])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_plan", description=__doc__.splitlines()[0])
    p.add_argument("--markdown", action="store_true", help="print a markdown table")
    a = p.parse_args(argv)
    print(table(a.markdown))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
