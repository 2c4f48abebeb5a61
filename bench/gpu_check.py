"""The GPU parts of ``scripts/gpu-check.sh``: benchmarks at the paper's shapes, the CIFAR-10 table runs, figures.

Every part writes ``OUT/<part>.json``; the shell script runs the parts under one time budget and
skips parts already done, so a second call finishes what the first did not (the table runs are
HDF5 stores that resume from their last epoch).

    python -m bench.gpu_check --out OUT --part distill      # ResNet18 and VGG11 epochs, fp32 and bf16
    python -m bench.gpu_check --out OUT --part paths        # 21-point ResNet18 BN-reset path, 10k test images
    python -m bench.gpu_check --out OUT --part probes       # k-NN and linear probe on the device
    python -m bench.gpu_check --out OUT --part table --data PATH --seconds 300   # Table 1/3 runs that fit
    python -m bench.gpu_check --out OUT --part figures      # prints every number bench/README.md needs
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# a CPU smoke test of this driver: RTT_GPU_CHECK_DEVICE=cpu RTT_GPU_CHECK_SIZE=tiny
DEVICE = os.environ.get("RTT_GPU_CHECK_DEVICE", "cuda")
SIZE = os.environ.get("RTT_GPU_CHECK_SIZE", "full")
# (arch, recipe) in the order they are run; 150 epochs each, the paper's configuration
TABLE_RUNS = [("resnet18", "paper"), ("vgg11", "paper"), ("resnet18", "reference"), ("vgg11", "reference")]
TABLE_EPOCHS = 150
# Table 1 (linear) and Table 3 (k-NN), CIFAR-10, teacher -> student, % (PAPER.md)
PAPER = {
    ("resnet18", "linear"): (35.50, 46.02),
    ("vgg11", "linear"): (36.55, 51.98),
    ("resnet18", "knn"): (37.65, 44.67),
    ("vgg11", "knn"): (44.92, 51.32),
}


def _write(out: Path, part: str, payload: Any) -> None:
    (out / f"{part}.json").write_text(json.dumps(payload, indent=1, default=float) + "\n")


def part_distill(out: Path) -> None:
    from bench.bench_distill import run_bench

    recs = []
    for arch in ("resnet18", "vgg11"):
        for precision in ("bf16", "fp32"):
            over = dict(arch=arch, arch_options={}, n=50_000) if SIZE == "full" else {}
            rec = run_bench(SIZE, DEVICE, 1, precision=precision, **over)[0]
            recs.append(rec)
            _print_distill(rec)
            _write(out, "distill", recs)


def _print_distill(r: dict) -> None:
    ours = r["median_s"]["distill.distill"]
    peak = (
        f", {100 * r['fraction_of_peak']:.1f} % of the {r['peak_reference']} peak {r['peak_tflops']}"
        if "fraction_of_peak" in r
        else ""
    )
    print(
        f"{r['what']}: ours {ours:.2f} s/epoch, plain {r['median_s']['plain loop']:.2f} s/epoch "
        f"(ratio {r['ratio']:.3f}); {r['achieved_tflops']['distill.distill']:.1f} TFLOP/s{peak}; "
        f"peak GPU memory {_mib(r['peak_gpu_mb'])}",
        flush=True,
    )


def _mib(value: float | None) -> str:
    return "n/a (no CUDA)" if value is None else f"{value:.0f} MiB"


def part_paths(out: Path) -> None:
    from bench.bench_paths import run_bench

    over = (
        dict(arch="resnet18", alphas=21, bn_batches=8, bn_batch_size=256, test_images=10_000) if SIZE == "full" else {}
    )
    recs = run_bench(SIZE, DEVICE, 2, **over)
    _write(out, "paths", recs)
    for r in recs:
        print(
            f"{r['what']}: ours {r['median_s']['linear_path auto']:.2f} s ({r['ours_backend']}; "
            f"{r['backend_rule']}), naive {r['median_s']['naive (update_bn + DataLoader)']:.2f} s, ratio "
            f"{r['ratio']:.2f}, max |d loss| {r['max_abs_loss_difference']:.1e}; peak GPU memory "
            f"{_mib(r['peak_gpu_mb'])}",
            flush=True,
        )


def part_probes(out: Path) -> None:
    from bench.bench_probe import run_bench

    recs = run_bench(SIZE, DEVICE, 3)
    _write(out, "probes", recs)
    for r in recs:
        base = f", {r['baseline']} {r['median_s'][r['baseline']]:.3f} s" if r["baseline"] else ""
        print(
            f"{r['what']}: ours {r['median_s'][r['ours']]:.3f} s on {DEVICE}{base}; peak GPU memory "
            f"{_mib(r['peak_gpu_mb'])}",
            flush=True,
        )


def _rtt() -> list[str]:
    exe = Path(sys.executable).with_name("rtt")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "landscape.cli"]


def _has_recipe_flag() -> bool:
    helptext = subprocess.run(_rtt() + ["distill", "-h"], capture_output=True, text=True).stdout
    return "--recipe" in helptext


def _store_state(path: Path) -> tuple[int, float | None]:
    """(last epoch saved, median seconds per epoch so far) of a table run's store."""
    if not path.exists():
        return 0, None
    from distill.store import Store

    try:
        store = Store(path)
        secs = [float(s) for s in store.metrics.seconds.values[1:] if s > 0]
        return max(store.epochs), (sorted(secs)[len(secs) // 2] if secs else None)
    except Exception:  # noqa: BLE001 - unreadable: start it again under another name
        return 0, None


def part_table(out: Path, data: str, seconds: float) -> None:
    """Train the Table 1/3 runs in order, each as far as the remaining ``seconds`` allow."""
    from distill.store.names import store_name

    deadline = time.monotonic() + seconds
    recipe_flag = _has_recipe_flag()
    guess = None
    try:
        recs = json.loads((out / "distill.json").read_text())
        guess = {r["arch"]: r["median_s"]["distill.distill"] for r in recs if r["precision"] == "fp32"}
    except (OSError, ValueError, KeyError, IndexError):
        pass
    status = []
    for arch, recipe in TABLE_RUNS:
        path = store_name(out / "runs" / f"cifar10-{arch}-{recipe}.rts")
        done, per_epoch = _store_state(path)
        per_epoch = per_epoch or (guess or {}).get(arch) or 3.0
        # probes every 10 epochs take about 3 epochs' time in all; 1.2x margin
        budget = deadline - time.monotonic() - 30
        fit = int(budget / (1.2 * per_epoch * 1.25)) if budget > 0 else 0
        target = min(TABLE_EPOCHS, done + fit)
        if done >= TABLE_EPOCHS:
            status.append({"run": path.name, "epochs": done, "complete": True})
            continue
        if target <= done:
            status.append({"run": path.name, "epochs": done, "complete": False})
            print(f"{path.name}: {done}/{TABLE_EPOCHS} epochs, no time left in this call: rerun to continue")
            continue
        cmd = _rtt() + [
            "distill",
            "--out",
            str(path),
            "--dataset",
            "cifar10",
            "--data-root",
            data,
            "--arch",
            arch,
            "--epochs",
            str(target),
            "--device",
            DEVICE,
        ]
        if recipe_flag:
            cmd += ["--recipe", recipe]
        elif recipe == "reference":  # until --recipe exists: the reference code's one optimiser difference
            cmd += ["--norm-bias-decay", "0.01"]
        print(
            f"{path.name}: epochs {done} -> {target} (~{per_epoch:.1f} s/epoch)"
            f"{'' if recipe_flag else ' [no --recipe flag in this rtt: reference = --norm-bias-decay 0.01]'}",
            flush=True,
        )
        start = time.monotonic()
        rc = subprocess.run(cmd, env={**os.environ, "TQDM_DISABLE": "1"}).returncode
        done, _ = _store_state(path)
        status.append(
            {
                "run": path.name,
                "epochs": done,
                "complete": done >= TABLE_EPOCHS,
                "rc": rc,
                "wall_s": time.monotonic() - start,
                "recipe_flag": recipe_flag,
            }
        )
        _write(out, "table", status)
        if done < TABLE_EPOCHS:
            break
    _write(out, "table", status)


def part_figures(out: Path) -> None:
    """Everything bench/README.md needs, from the parts' JSON files and the table stores."""
    import torch

    print(
        f"card: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA device'}; "
        f"torch {torch.__version__}"
    )
    for part, show in (("distill", _print_distill),):
        try:
            for r in json.loads((out / f"{part}.json").read_text()):
                show(r)
        except OSError:
            print(f"{part}: not run")
    for part in ("paths", "probes"):
        try:
            for r in json.loads((out / f"{part}.json").read_text()):
                print(
                    f"{part}: {r['what']}: "
                    + ", ".join(f"{k} {v:.3f} s" for k, v in r["median_s"].items())
                    + (f" (ratio {r['ratio']:.2f})" if r["ratio"] else "")
                    + (f", peak GPU {r['peak_gpu_mb']:.0f} MiB" if r["peak_gpu_mb"] else "")
                )
        except OSError:
            print(f"{part}: not run")
    from distill.store import Store, store_name

    rows = []
    for arch, recipe in TABLE_RUNS:
        path = store_name(out / "runs" / f"cifar10-{arch}-{recipe}.rts")
        if not path.exists():
            print(f"{path.name}: not started")
            continue
        m = Store(path).metrics
        acc = m.accuracy.dropna("epoch", how="all")
        row = {"run": path.name, "epochs": int(m.epoch.max())}
        for probe in ("linear", "linear_std", "knn"):
            if probe not in acc.probe.values:
                continue
            for model in ("teacher", "teacher_bn", "student", "input"):
                best = float(acc.sel(probe=probe, model=model).max())
                row[f"{model}_{probe}"] = round(100 * best, 2) if math.isfinite(best) else None
        rows.append(row)
        paper = {p: PAPER.get((arch, p)) for p in ("linear", "knn")}
        print(
            f"{path.name} ({row['epochs']}/{TABLE_EPOCHS} epochs), best over epochs, %: "
            + "; ".join(
                f"{p}: teacher {row.get('teacher_' + p)} teacher_bn {row.get('teacher_bn_' + p)} student "
                f"{row.get('student_' + p)} input {row.get('input_' + p)}"
                + (f" [paper {paper[p][0]} -> {paper[p][1]}]" if paper.get(p) else "")
                for p in ("linear", "linear_std", "knn")
                if f"student_{p}" in row
            )
        )
        secs = sorted(float(v) for v in m.seconds.values[1:])
        print(f"  s/epoch median {secs[len(secs) // 2] if secs else float('nan'):.2f} (probe epochs included)")
    _write(out, "figures", {"table": rows})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="results folder")
    ap.add_argument("--part", required=True, choices=["distill", "paths", "probes", "table", "figures"])
    ap.add_argument("--data", default=None, help="CIFAR-10 root (tarball or folder) for the table runs")
    ap.add_argument("--seconds", type=float, default=300.0, help="time budget of the table part")
    a = ap.parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")
    out = Path(a.out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    if a.part == "table":
        if not a.data:
            print("error: --part table needs --data PATH (the CIFAR-10 tarball or folder)", file=sys.stderr)
            return 2
        part_table(out, a.data, a.seconds)
    else:
        {"distill": part_distill, "paths": part_paths, "probes": part_probes, "figures": part_figures}[a.part](out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
