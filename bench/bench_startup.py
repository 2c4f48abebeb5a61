"""Start-up time of the command line: ``rtt -h`` (and a few more calls) against ``python -c pass``.

Each call is a fresh interpreter, timed from spawn to exit; the calls alternate so that both
see the same machine load. Reported: the median of ``--repeats`` runs per call and its excess
over the bare interpreter (target: ``rtt -h`` at most 1 s above ``python -c pass``), plus
``python -c "import torch"`` for scale.

    python -m bench.bench_startup [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 1.0

CALLS: dict[str, list[str]] = {
    "python -c pass": ["-c", "pass"],
    "rtt -h": ["-m", "landscape.cli", "-h"],
    "rtt distill -h": ["-m", "landscape.cli", "distill", "-h"],
    "rtt lmc -h": ["-m", "landscape.cli", "lmc", "-h"],
    "rtt distill --subset 10k": ["-m", "landscape.cli", "distill", "--out", "x.h5", "--subset", "10k"],
    "python -c 'import torch'": ["-c", "import torch"],
}


def _time(args: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5, help="runs per call; the median is reported (default: 5)")
    a = p.parse_args(argv)
    times: dict[str, list[float]] = {name: [] for name in CALLS}
    for _ in range(a.repeats):
        for name, args in CALLS.items():
            times[name].append(_time(args))
    base = statistics.median(times["python -c pass"])
    print(f"{'call':<28}{'median s':>10}{'above python -c pass':>24}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:<28}{med:10.3f}{med - base:+24.3f}")
    excess = statistics.median(times["rtt -h"]) - base
    verdict = "met" if excess <= TARGET_S else "NOT met"
    print(f"rtt -h: {excess:.3f} s above python -c pass (median of {a.repeats}; target <= {TARGET_S:g} s: {verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
