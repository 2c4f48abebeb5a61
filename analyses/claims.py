"""Every claim of the paper as a row: its setting, the paired effect over seeds, a 95 % interval and a
verdict computed by one rule, from the result files alone (no training).

For each claim the effect is the mean over seeds of the same-seed difference (e.g. student minus teacher,
both of seed s), in accuracy (or error) fractions; the interval is Student's t interval of that mean,
``mean +- t(0.975, n - 1) * sd / sqrt(n)``. The rule (:func:`verdict`):

- a directional claim (the paper says the difference is positive, or negative): **supported** when the
  interval excludes 0 in the paper's direction, **contradicted** when it excludes 0 the other way,
  **open** otherwise (and always with n < 2);
- a claim of no difference (within ``margin``): supported when the interval lies inside
  (-margin, +margin), contradicted when it lies wholly outside it, open otherwise.

    python -m analyses.claims [--results DIR]      # reads DIR/*.nc, writes DIR/claims.nc and DIR/claims.md
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from analyses import common
from distill.schema import result_dataset

VERDICTS = ("supported", "contradicted", "open")
PROBES = ("knn", "linear", "linear_std")


def paired(diffs: Any) -> tuple[float, float, float, int]:
    """(mean, low, high, n) of same-seed differences: the mean and its two-sided 95 % t interval
    (NaNs dropped; n < 2 gives an infinite interval)."""
    from scipy import stats

    d = np.asarray(diffs, dtype=float).ravel()
    d = d[np.isfinite(d)]
    n = int(d.size)
    if n == 0:
        return math.nan, -math.inf, math.inf, 0
    mean = float(d.mean())
    if n < 2:
        return mean, -math.inf, math.inf, n
    half = float(stats.t.ppf(0.975, n - 1) * d.std(ddof=1) / math.sqrt(n))
    return mean, mean - half, mean + half, n


def verdict(low: float, high: float, direction: int, margin: float = 0.0) -> str:
    """The rule: ``direction`` +1 / -1 for a claimed positive / negative difference, 0 for a claimed
    absence of difference (within ``margin``)."""
    if direction > 0:
        return "supported" if low > 0 else "contradicted" if high < 0 else "open"
    if direction < 0:
        return "supported" if high < 0 else "contradicted" if low > 0 else "open"
    if -margin < low and high < margin:
        return "supported"
    return "contradicted" if low > margin or high < -margin else "open"


@dataclass(frozen=True)
class Claim:
    """One claim of the paper, tested on one result file: ``diffs(ds)`` yields (label, setting, same-seed
    differences) rows; ``direction`` and ``margin`` as in :func:`verdict`."""

    name: str
    paper: str
    file: str
    direction: int
    diffs: Callable[[xr.Dataset], Iterator[tuple[str, str, Any]]]
    margin: float = 0.0


def _attrs_setting(ds: xr.Dataset) -> str:
    return f"{ds.attrs.get('script', '?')} --preset {ds.attrs.get('preset', '?')}"


def _per_probe(ds: xr.Dataset, note: str, diffs: xr.DataArray) -> Iterator[tuple[str, str, Any]]:
    """One row per probe of ``diffs`` (same-seed differences with a probe dim), in ``ds``'s setting and ``note``."""
    for p in PROBES:
        yield p, f"{_attrs_setting(ds)}, {note}", diffs.sel(probe=p)


def _curve(ds: xr.Dataset) -> xr.DataArray:
    """probing_curves' accuracy reduced per seed by the paper's statistic (best after epoch 0)."""
    return xr.concat(
        [common.best_over_epochs(ds.sel(seed=s)) for s in ds.seed.values], dim=ds.seed, combine_attrs="drop"
    )


def _student_vs(ref: str) -> Callable[[xr.Dataset], Iterator[tuple[str, str, Any]]]:
    def rows(ds: xr.Dataset) -> Iterator[tuple[str, str, Any]]:
        acc = _curve(ds)
        yield from _per_probe(ds, "best after epoch 0", acc.sel(model="student") - acc.sel(model=ref))

    return rows


def _data_minus(
    first: dict[str, str], second: dict[str, str]
) -> Callable[[xr.Dataset], Iterator[tuple[str, str, Any]]]:
    """data_dependence's rows: the accuracy of ``first`` minus that of ``second`` (each a data kind and a
    model), per n and probe, at equal epochs."""

    def rows(ds: xr.Dataset) -> Iterator[tuple[str, str, Any]]:
        a = ds.accuracy.sel(regime="epochs")
        for n in ds.n.values:
            yield from _per_probe(ds, f"n={int(n)}, equal epochs", a.sel(**first, n=n) - a.sel(**second, n=n))

    return rows


_real_vs_noise = _data_minus(dict(data="real", model="student"), dict(data="gaussian", model="student"))
_noise_vs_teacher = _data_minus(dict(data="gaussian", model="student"), dict(data="gaussian", model="teacher"))


def _transfer(ds: xr.Dataset) -> Iterator[tuple[str, str, Any]]:
    for pair in ds.pair.values:
        a = ds.accuracy.sel(pair=pair)
        yield from _per_probe(ds, str(pair), a.sel(model="student_transfer") - a.sel(model="student_in_domain"))


def _lottery(ds: xr.Dataset) -> Iterator[tuple[str, str, Any]]:
    b = ds.best_accuracy
    for lv in ds.level.values[1:]:  # level 0 is unpruned: both rewinds train the same dense network
        left = float(ds.sparsity.sel(level=lv)) if "sparsity" in ds.coords else math.nan
        d = b.sel(curve="student", level=lv) - b.sel(curve="init", level=lv)
        yield f"level {int(lv)}", f"{_attrs_setting(ds)}, {100 * left:.2f} % of weights left", d


def _instability(ds: xr.Dataset) -> Iterator[tuple[str, str, Any]]:
    starts = [str(s) for s in ds.start.values]
    init = next(s for s in starts if "epoch 0" in s)
    students = [s for s in starts if s.startswith("student") and s != init]
    last = students[-1]
    d = ds.barrier_error.sel(start=init) - ds.barrier_error.sel(start=last)  # init's barrier minus the student's
    acc = ds.child_test_accuracy.sel(start=[init, last]) if "child_test_accuracy" in ds else None
    span = "" if acc is None else f"{100 * float(acc.min()):.1f}-{100 * float(acc.max()):.1f}"
    if "seed" in d.dims and d.sizes["seed"] > 1:  # one difference per seed: its pairs' mean
        unit = f"seeds (each the mean over its {d.sizes['pair']} pairs)"
        d = d.mean("pair")
    else:  # older results: one student, its pairs (which share children)
        unit = "pairs of children (not independent: they share children)"
    yield (
        "test error barrier",
        f"{_attrs_setting(ds)}, '{init}' minus '{last}', {unit}, children at {span} % test accuracy",
        d.values,
    )


def _locality_flat(ds: xr.Dataset) -> Iterator[tuple[str, str, Any]]:
    alphas = [float(a) for a in ds.alpha.values]
    hi = max(a for a in alphas if a <= 0.6)
    for net in ds.net.values:
        s = ds.accuracy.sel(net=net, model="student")
        yield from _per_probe(ds, f"net {net}, alpha {hi:g} minus alpha 0", s.sel(alpha=hi) - s.sel(alpha=0.0))


def _independent_student(ds: xr.Dataset) -> Iterator[tuple[str, str, Any]]:
    for net in ds.net.values:
        a = ds.accuracy.sel(net=net, alpha=1.0)
        yield from _per_probe(ds, f"net {net}, alpha 1", a.sel(model="student") - a.sel(model="teacher"))


def _head_dim(ds: xr.Dataset) -> Iterator[tuple[str, str, Any]]:
    a = ds.accuracy_out_dim
    gain = a.sel(model="student") - a.sel(model="teacher")
    lo, hi = int(a.out_dim.min()), int(a.out_dim.max())
    yield from _per_probe(
        ds, f"gain at output {hi} minus gain at output {lo}", gain.sel(out_dim=hi) - gain.sel(out_dim=lo)
    )


def _data_size(ds: xr.Dataset) -> Iterator[tuple[str, str, Any]]:
    lo, hi = int(ds.n.min()), int(ds.n.max())
    for regime in ("epochs", "steps"):
        s = ds.accuracy.sel(data="real", model="student")
        # the largest n is trained the same under both regimes; the smallest n differs
        big = s.sel(regime="epochs", n=hi)
        small = s.sel(regime=regime, n=lo)
        if np.isfinite(small.values).any():
            yield from _per_probe(ds, f"n={hi} minus n={lo}, equal {regime}", big - small)


CLAIMS: list[Claim] = [
    Claim("student beats teacher", "Tables 1, 3, Figure 1", "probing_curves", +1, _student_vs("teacher")),
    Claim(
        "student beats BN-recalibrated teacher",
        "beyond the paper (the control for BN statistics)",
        "probing_curves",
        +1,
        _student_vs("teacher_bn"),
    ),
    Claim("real data beats noise", "Figure 4", "data_dependence", +1, _real_vs_noise),
    Claim(
        "noise students fall below the teacher",
        "Figure 4 (16.5 against 36.6)",
        "data_dependence",
        -1,
        _noise_vs_teacher,
    ),
    Claim(
        "transfer student is not worse than the in-domain student",
        "Tables 2, 4 (52.45 against 51.98, VGG11)",
        "transfer",
        +1,
        _transfer,
    ),
    Claim("rewinding to the student beats rewinding to the init", "Figure 8", "lottery", +1, _lottery),
    Claim(
        "children of the student are more stable than children of the init", "Figure 9", "instability", +1, _instability
    ),
    Claim("locality: flat up to alpha 0.6 (within 1 point)", "Figure 3", "locality", 0, _locality_flat, margin=0.01),
    Claim("an independent student (alpha 1) still beats its teacher", "Figure 3", "locality", +1, _independent_student),
    Claim("the gain grows with the head's output dimension", "Figure 10", "head_dim", +1, _head_dim),
    Claim("the gain grows with the data size", "Figure 4", "data_dependence", +1, _data_size),
]


def _rows(c: Claim, ds: xr.Dataset, file: str) -> list[dict[str, Any]]:
    """The rows of claim ``c`` on the result ``ds`` (read from ``file``): effect, interval, n and verdict."""
    rows = []
    for label, setting, diffs in c.diffs(ds):
        mean, lo, hi, n = paired(getattr(diffs, "values", diffs))
        claim = dict(claim=c.name, paper=c.paper, file=file, direction=c.direction, margin=c.margin)
        found = dict(row=label, setting=setting, effect=mean, low=lo, high=hi, n=n)
        judged = dict(verdict=verdict(lo, hi, c.direction, c.margin), commit=str(ds.attrs.get("commit", "")))
        rows.append(claim | found | judged)
    return rows


def compute(results: Path) -> xr.Dataset:
    """Every claim's rows from the result files in ``results`` (a claim whose file is missing is skipped)."""
    rows: list[dict[str, Any]] = []
    for c in CLAIMS:
        path = results / f"{c.file}.nc"
        if not path.exists():
            print(f"analyses.claims: {path} missing: '{c.name}' skipped", file=sys.stderr)
        # the cpu preset's file, then the cpu-long preset's where one exists: the same claim at a larger scale
        for found in (p for p in (path, results / f"{c.file}_cpu_long.nc") if p.exists()):
            rows += _rows(c, common.open_result(found), found.stem)
    if not rows:
        raise FileNotFoundError(f"no result file of any claim under {results}: run the analyses first")
    text = ("claim", "paper", "file", "row", "setting", "verdict", "commit")
    return result_dataset(
        "analyses.claims",
        {k: ("row_id", [r[k] for r in rows]) for k in text}
        | {k: ("row_id", np.array([r[k] for r in rows], dtype=float)) for k in ("effect", "low", "high", "margin")}
        | {k: ("row_id", np.array([r[k] for r in rows], dtype=np.int64)) for k in ("n", "direction")},
        {"row_id": np.arange(len(rows))},
        {
            "rule": "directional: supported if the 95 % interval excludes 0 in the paper's direction, contradicted "
            "if it excludes 0 the other way, open otherwise; no difference: supported if the interval lies inside "
            "(-margin, margin), contradicted if wholly outside, open otherwise; n < 2 is open",
            "script": "analyses.claims",
            "commit": common.commit(),
            "results": str(results),
        },
    )


def markdown(ds: xr.Dataset) -> str:
    """The claims table as markdown (effects and intervals in percentage points)."""
    lines = [
        "# The paper's claims, checked on the committed results",
        "",
        f"Written by `python -m analyses.claims` at commit {ds.attrs['commit'][:12]}. Rule: {ds.attrs['rule']}.",
        "Effects are same-seed differences in percentage points (accuracy, or test error for barriers).",
        "",
        "| claim | paper | row | setting | effect [points] | 95 % interval | n | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i in ds.row_id.values:
        r = ds.sel(row_id=i)
        lo, hi = float(r.low), float(r.high)
        interval = f"[{100 * lo:+.2f}, {100 * hi:+.2f}]" if math.isfinite(lo) else "(n < 2)"
        lines.append(
            f"| {r.claim.item()} | {r.paper.item()} | {r.row.item()} | {r.setting.item()} | "
            f"{100 * float(r.effect):+.2f} | {interval} | {int(r.n)} | **{r.verdict.item()}** |"
        )
    counts = {v: int((ds.verdict == v).sum()) for v in VERDICTS}
    lines += ["", "Rows: " + ", ".join(f"{n} {v}" for v, n in counts.items()) + f" (of {ds.sizes['row_id']})."]
    changes = scale_changes(ds)
    if changes:
        lines += ["", "The same rows at the cpu-long scale, against the cpu preset's:", ""]
        lines += ["| claim | row | setting (cpu-long) | cpu | cpu-long |", "|---|---|---|---|---|"]
        lines += [f"| {c} | {r} | {st} | {a} | {b} |" for c, r, st, a, b in changes]
        n = sum(a != b for *_, a, b in changes)
        lines += ["", f"{n} of {len(changes)} rows changed verdict at the larger scale."]
    return "\n".join(lines) + "\n"


def scale_changes(ds: xr.Dataset) -> list[tuple[str, str, str, str, str]]:
    """(claim, row, setting at the cpu-long scale, verdict in the cpu preset's file, verdict in its cpu-long
    file) of every row present in both: the k-th row of a (claim, row) in one file is matched with the
    k-th in the other (e.g. the second "knn" row of locality is the BN-free net's in both)."""
    seen: dict[tuple[str, str, str], int] = {}
    rows = {}
    for i in range(ds.sizes["row_id"]):
        key = (str(ds.file[i].item()), str(ds.claim[i].item()), str(ds.row[i].item()))
        seen[key] = seen.get(key, -1) + 1
        rows[(*key, seen[key])] = (str(ds.setting[i].item()), str(ds.verdict[i].item()))
    out = []
    for (file, claim, row, k), (setting, verdict) in rows.items():
        base = (file.removesuffix("_cpu_long"), claim, row, k)
        if file.endswith("_cpu_long") and base in rows:
            out.append((claim, row, setting, rows[base][1], verdict))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analyses.claims", description=__doc__.splitlines()[0])
    p.add_argument("--results", default="results", help="folder of the result files (default: results)")
    p.add_argument("--out", default=None, help="folder for claims.nc and claims.md (default: --results)")
    a = p.parse_args(argv)
    results = Path(a.results)
    out = Path(a.out) if a.out else results
    try:
        ds = compute(results)
    except FileNotFoundError as e:
        print(f"analyses.claims: error: {e}", file=sys.stderr)
        return 1
    common.save(ds, out / "claims.nc")
    (out / "claims.md").write_text(markdown(ds))
    print(markdown(ds))
    print(f"wrote {out / 'claims.nc'} and {out / 'claims.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
