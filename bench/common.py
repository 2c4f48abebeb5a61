"""What every benchmark shares: interleaved timing rounds, medians and ratios, peak memory, one record format.

A benchmark runs its variants (ours and a plain baseline doing the same work) in turn, round after
round, in one process, so slow phases of a shared machine hit all of them alike; it reports the
median of each variant and the speed ratio ``median(baseline) / median(ours)`` (above 1: ours is
faster). Records are plain dicts (JSON-ready) gathered by :mod:`bench.run_all` into
``bench/results.json``.
"""

from __future__ import annotations

import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

SIZES = ("tiny", "full")


def sync_for(device: str | torch.device) -> Callable[[], None]:
    """A function that waits for queued device work (a no-op on the CPU)."""
    return torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)


def interleaved(
    variants: dict[str, Callable[[], Any]],
    rounds: int,
    *,
    warmup: bool = True,
    sync: Callable[[], None] = lambda: None,
    timer: dict[str, Callable[[Any], float]] | None = None,
) -> dict[str, list[float]]:
    """Seconds of each variant per round, variants taking turns within every round.

    ``warmup``: one untimed call of each first (allocator, kernel choice, lazy imports).
    ``timer[name](result)``: seconds taken from the variant's own result instead of the wall clock
    around the call (e.g. the epoch time a training run records itself).
    """
    timer = timer or {}
    if warmup:
        for fn in variants.values():
            fn()
            sync()
    out: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(max(1, rounds)):
        for name, fn in variants.items():
            sync()
            start = time.perf_counter()
            result = fn()
            sync()
            wall = time.perf_counter() - start
            out[name].append(float(timer[name](result)) if name in timer else wall)
    return out


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def children_peak_rss_mb() -> float:
    """Largest peak resident memory of any finished child process, MiB."""
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def reset_gpu_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def gpu_peak_mb() -> float | None:
    """Peak GPU memory allocated by torch since the last :func:`reset_gpu_peak`, MiB (None without CUDA)."""
    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


def record(
    name: str,
    what: str,
    times: dict[str, list[float]],
    *,
    ours: str,
    baseline: str | None,
    target: str | None = None,
    goal: Callable[[float], bool] | None = None,
    device: str = "cpu",
    size: str = "full",
    **extra: Any,
) -> dict[str, Any]:
    """One result: medians, the ratio baseline/ours of the medians, whether the goal is met, memory."""
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med[baseline] / med[ours] if baseline is not None and med[ours] > 0 else None
    out: dict[str, Any] = {
        "name": name,
        "what": what,
        "size": size,
        "device": str(device),
        "ours": ours,
        "baseline": baseline,
        "rounds": len(times[ours]),
        "seconds": times,
        "median_s": med,
        "ratio": ratio,
        "target": target,
        "met": (bool(goal(ratio)) if goal is not None and ratio is not None else None),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "peak_gpu_mb": gpu_peak_mb(),
    }
    out.update(extra)
    return out


def load_average() -> list[float]:
    """The 1/5/15-minute load averages (empty where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def machine() -> dict[str, Any]:
    """Where the numbers were measured."""
    info: dict[str, Any] = {
        "torch": str(torch.__version__),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average": load_average(),
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def show(rec: dict[str, Any]) -> str:
    """A few readable lines for one record."""
    lines = [f"{rec['name']}: {rec['what']} [{rec['device']}, {rec['size']}, {rec['rounds']} rounds]"]
    for k, v in rec["median_s"].items():
        tag = " (ours)" if k == rec["ours"] else " (baseline)" if k == rec["baseline"] else ""
        lines.append(f"  {k + tag:<44} median {v:10.4f} s")
    if rec["ratio"] is not None:
        met = "" if rec["met"] is None else ("  met" if rec["met"] else "  NOT met")
        lines.append(f"  ratio baseline/ours {rec['ratio']:.3f}   target {rec['target']}{met}")
    lines.append(
        f"  peak RSS {rec['peak_rss_mb']:.0f} MiB"
        + (f", peak GPU {rec['peak_gpu_mb']:.0f} MiB" if rec["peak_gpu_mb"] is not None else "")
    )
    for k in rec.get("notes", []):
        lines.append(f"  note: {k}")
    return "\n".join(lines)
