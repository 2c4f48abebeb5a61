"""Start-up time of the command line: ``rtt -h`` (and a few more calls) against ``python -c pass``.

Each call is a fresh interpreter, timed from spawn to exit; the calls alternate so that both
see the same machine load. Reported: the median of ``--repeats`` runs per call and its excess
over the bare interpreter (target: ``rtt -h`` at most 1 s above ``python -c pass``; also
``rtt info`` on a small store made first, which reads it with h5py alone, and ``rtt distill``
on that store while another process holds its writer lock: the refusal of a second writer, which
comes before torch is imported), plus ``python -c "import torch"`` for scale (left out of the tiny
run the test suite makes).

    python -m bench.bench_startup [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import interleaved, record

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 1.0
SIZES = {"tiny": dict(rounds=1), "full": dict(rounds=3)}

CALLS: dict[str, list[str]] = {
    "python -c pass": ["-c", "pass"],
    "rtt -h": ["-m", "landscape.cli", "-h"],
    "rtt distill -h": ["-m", "landscape.cli", "distill", "-h"],
    "rtt lmc -h": ["-m", "landscape.cli", "lmc", "-h"],
    "rtt distill --subset 10k": ["-m", "landscape.cli", "distill", "--out", "x.rts", "--subset", "10k"],
    "rtt info STORE": ["-m", "landscape.cli", "info", "{store}"],
    "rtt distill --out BUSY": ["-m", "landscape.cli", "distill", "--out", "{store}", "--data-root", "/nonexistent"],
    "python -c 'import torch'": ["-c", "import torch"],
}
TINY_CALLS = ("python -c pass", "rtt -h", "rtt distill -h")


def _small_store(path: Path) -> Path:
    """A store with a teacher, two students and a result, as ``rtt info`` meets after a short run."""
    import numpy as np
    import xarray as xr

    import distill
    from distill.store import Store, student_name

    store = Store.create(path, {"arch": "mlp"})
    model = distill.build_model("mlp", (1, 8, 8), head=None, widths=[16])
    store.save_module("teacher", model)
    for e in (0, 1):
        store.save_module(student_name(e), model, {"epoch": e})
    store.write_result("metrics", xr.Dataset({"accuracy": (("epoch", "probe"), np.zeros((2, 3)))}))
    return path


def _hold_lock(store: str) -> subprocess.Popen:
    """A process holding the writer lock of ``store`` until its stdin closes (a busy store)."""
    code = (
        "import sys\nfrom distill.store import Store\ns = Store(sys.argv[1], 'a')\nprint('held', flush=True)\n"
        "sys.stdin.read()\n"
    )
    p = subprocess.Popen(
        [sys.executable, "-c", code, store], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert p.stdout is not None and p.stdout.readline().strip() == "held"
    return p


def _time(args: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - t0


def run_bench(size: str = "full", device: str = "cpu", rounds: int | None = None, **_: Any) -> list[dict]:
    """Every call (the tiny size: three of them) in interleaved rounds, as one record."""
    calls = {k: v for k, v in CALLS.items() if size == "full" or k in TINY_CALLS}
    tmp = tempfile.TemporaryDirectory()
    holder = None
    if "rtt info STORE" in calls:
        store = str(_small_store(Path(tmp.name) / "s.rts"))
        for name in ("rtt info STORE", "rtt distill --out BUSY"):
            calls[name] = [a.replace("{store}", store) for a in calls[name]]
        holder = _hold_lock(store)
    times = interleaved(
        {name: (lambda args=args: _time(args)) for name, args in calls.items()},
        rounds or SIZES[size]["rounds"],
        warmup=size == "full",
        timer={name: (lambda t: t) for name in calls},
    )
    if holder is not None:
        holder.stdin.close()  # type: ignore[union-attr]
        holder.wait()
    tmp.cleanup()
    rec = record(
        "startup",
        "process start-up, spawn to exit of a fresh interpreter",
        times,
        ours="rtt -h",
        baseline="python -c pass",
        target=f"rtt -h at most {TARGET_S:g} s above python -c pass",
        size=size,
    )
    rec["rtt_excess_s"] = rec["median_s"]["rtt -h"] - rec["median_s"]["python -c pass"]
    rec["met"] = bool(rec["rtt_excess_s"] <= TARGET_S)
    if "rtt info STORE" in calls:
        rec["info_excess_s"] = rec["median_s"]["rtt info STORE"] - rec["median_s"]["python -c pass"]
        rec["busy_refusal_s"] = rec["median_s"]["rtt distill --out BUSY"]
    return [rec]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5, help="runs per call; the median is reported (default: 5)")
    a = p.parse_args(argv)
    rec = run_bench("full", rounds=a.repeats)[0]
    base = rec["median_s"]["python -c pass"]
    print(f"{'call':<28}{'median s':>10}{'above python -c pass':>24}")
    for name, ts in rec["seconds"].items():
        med = statistics.median(ts)
        print(f"{name:<28}{med:10.3f}{med - base:+24.3f}")
    verdict = "met" if rec["met"] else "NOT met"
    print(
        f"rtt -h: {rec['rtt_excess_s']:.3f} s above python -c pass (median of {a.repeats}; "
        f"target <= {TARGET_S:g} s: {verdict}); rtt info: {rec['info_excess_s']:.3f} s above; "
        f"rtt distill on a busy store refused after {rec['busy_refusal_s']:.3f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
