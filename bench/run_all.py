"""Run every benchmark in bench/ and write their records to ``bench/results.json`` (``make bench``).

    python -m bench.run_all                       # full sizes (about 20-30 minutes on 2 CPU cores)
    python -m bench.run_all --size tiny --out /tmp/r.json   # seconds: what the test suite runs
    python -m bench.run_all --only distill,paths --device cuda

Each benchmark module ``bench_<name>.py`` has ``run_bench(size, device, rounds) -> list[dict]``; a
module without it (a print-only benchmark) is run through its ``main([])`` at the full size, its output
kept in the record, and listed as not run at the tiny size. A benchmark that fails is recorded with
its error and the others still run (the exit status is 1).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import os
import pkgutil
import sys
import time
import traceback
from pathlib import Path

from bench.common import SIZES, load_average, machine, show

ORDER = ("distill", "paths", "lottery", "probe", "data", "store", "startup", "memory")
RESULTS = Path(__file__).resolve().parent / "results.json"


def _print_only(name: str, module: object, size: str) -> dict:
    """A record for a benchmark that only prints: its output at the full size; nothing at the tiny size."""
    rec = {
        "name": name,
        "size": size,
        "what": (module.__doc__ or "").strip().splitlines()[0],
        "ratio": None,
        "met": None,
        "printed": None,
    }
    if size != "full":
        rec["notes"] = ["print-only benchmark (no run_bench): run at the full size only"]
        print(f"{name}: not run at size {size} (print-only, no run_bench)")
        return rec
    buf = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(buf):
        module.main([])  # type: ignore[attr-defined]
    rec["printed"], rec["bench_wall_s"] = buf.getvalue(), time.perf_counter() - t0
    print(rec["printed"], end="", flush=True)
    return rec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=SIZES, default="full")
    ap.add_argument("--device", default="cpu", help="device of the benchmarks that take one (cpu, cuda)")
    ap.add_argument("--only", default="", help=f"comma-separated subset of {','.join(ORDER)}")
    ap.add_argument("--rounds", type=int, default=None, help="override every benchmark's number of rounds")
    ap.add_argument("--out", default=str(RESULTS), help="where to write the JSON (default bench/results.json)")
    a = ap.parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")
    found = sorted(
        m.name[len("bench_") :]
        for m in pkgutil.iter_modules([str(Path(__file__).parent)])
        if m.name.startswith("bench_")
    )
    known = [n for n in ORDER if n in found] + [n for n in found if n not in ORDER]
    names = [n for n in (a.only.split(",") if a.only else known) if n]
    unknown = [n for n in names if n not in known]
    if unknown:
        print(f"error: unknown benchmark(s) {unknown}: choose from {','.join(known)}", file=sys.stderr)
        return 2
    doc = {
        "machine": machine(),
        "size": a.size,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "benchmarks": [],
        "errors": {},
    }
    status = 0
    for name in names:
        print(f"\n== bench_{name} ==", flush=True)
        t0 = time.perf_counter()
        try:
            module = importlib.import_module(f"bench.bench_{name}")
            if not hasattr(module, "run_bench"):
                doc["benchmarks"].append(_print_only(name, module, a.size))
                continue
            recs = module.run_bench(a.size, a.device, a.rounds)
        except Exception as err:  # noqa: BLE001 - one broken benchmark must not hide the others
            traceback.print_exc()
            doc["errors"][name] = f"{type(err).__name__}: {err}"
            status = 1
            continue
        for rec in recs:
            rec["bench_wall_s"] = time.perf_counter() - t0
            print(show(rec), flush=True)
        doc["benchmarks"].extend(recs)
    doc["machine"]["load_average_end"] = load_average()
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1, default=float) + "\n")
    print(f"\nwrote {out}")
    return status


if __name__ == "__main__":
    sys.exit(main())
