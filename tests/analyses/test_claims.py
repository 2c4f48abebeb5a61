"""analyses.claims: the interval and the verdict rule on synthetic paired data, and the committed table
is what the committed result files give."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from analyses import claims

T_975_2 = 4.302652729911275  # Student's t, 97.5 % quantile, 2 degrees of freedom (printed tables)
RESULTS = Path(__file__).resolve().parents[2] / "results"


def test_interval_is_the_t_interval_of_the_mean():
    mean, lo, hi, n = claims.paired([1.0, 2.0, 3.0])  # sd 1
    half = T_975_2 / math.sqrt(3)
    assert (mean, n) == (2.0, 3) and lo == pytest.approx(2 - half) and hi == pytest.approx(2 + half)
    assert claims.paired([1.0, float("nan"), 3.0])[3] == 2  # NaN seeds are left out
    assert claims.paired([0.4])[1:3] == (-math.inf, math.inf)


@pytest.mark.parametrize(
    ("diffs", "direction", "margin", "want"),
    [
        ([2.0, 2.1, 1.9], +1, 0.0, "supported"),  # 2 +- 0.25
        ([2.0, 2.1, 1.9], -1, 0.0, "contradicted"),
        ([-2.0, -2.1, -1.9], -1, 0.0, "supported"),
        ([-2.0, -2.1, -1.9], +1, 0.0, "contradicted"),
        ([1.0, 2.0, 3.0], +1, 0.0, "open"),  # 2 +- 2.48 holds 0
        ([5.0], +1, 0.0, "open"),  # one seed: no interval
        ([0.001, -0.001, 0.0], 0, 0.01, "supported"),  # inside (-0.01, 0.01)
        ([0.05, 0.06, 0.055], 0, 0.01, "contradicted"),  # wholly above 0.01
        ([-0.05, -0.06, -0.055], 0, 0.01, "contradicted"),
        ([0.0, 0.02, 0.01], 0, 0.01, "open"),  # 0.01 +- 0.025 straddles the margin
    ],
)
def test_verdict_rule_on_synthetic_pairs(diffs, direction, margin, want):
    _, lo, hi, _ = claims.paired(diffs)
    assert claims.verdict(lo, hi, direction, margin) == want


def test_committed_claims_table_is_what_the_committed_results_give(tmp_path):
    assert claims.main(["--results", str(RESULTS), "--out", str(tmp_path)]) == 0
    got = (tmp_path / "claims.md").read_text().splitlines()
    committed = (RESULTS / "claims.md").read_text().splitlines()

    def table(lines: list[str]) -> list[str]:  # the claims table's lines (8 cells), not the scale comparison
        cells = [line for line in lines if line.startswith("| ") and "---" not in line]
        return [line for line in cells if line.count(" | ") == 7 and "| cpu" not in line]

    rows = table(got)
    assert rows == table(committed)
    assert [line for line in got if line.startswith("| ")] == [line for line in committed if line.startswith("| ")]
    names = {line.split(" | ")[0][2:] for line in rows[1:]}
    assert names == {c.name for c in claims.CLAIMS}  # every claim has rows
    assert all(int(line.split(" | ")[6]) >= 3 for line in rows[1:])  # n >= 3 seeds (or pairs) per row


STARTS = ["student epoch 0 (random init)", "student epoch 2", "independent random init"]


def _instability(barriers: list, seeds: bool, preset: str):
    """A minimal instability result: barrier_error (seed, start, pair) or (start, pair)."""
    import numpy as np
    import xarray as xr

    b = np.asarray(barriers, dtype=float)
    dims = ("seed", "start", "pair") if seeds else ("start", "pair")
    coords = {"start": STARTS, "pair": [f"p{i}" for i in range(b.shape[-1])]}
    if seeds:
        coords["seed"] = list(range(b.shape[0]))
    ds = xr.Dataset({"barrier_error": (dims, b)}, coords=coords)
    ds.attrs.update(script="analyses.instability", preset=preset, commit="abc1234")
    return ds


def test_instability_with_seeds_gives_one_difference_per_seed_the_mean_of_its_pairs():
    init = [[0.10, 0.12, 0.14], [0.20, 0.22, 0.24], [0.31, 0.30, 0.29]]  # seed x pair, start "epoch 0"
    student = [[0.02, 0.02, 0.02], [0.05, 0.07, 0.06], [0.10, 0.10, 0.10]]
    other = [[0.5] * 3] * 3
    ds = _instability([[i, s, o] for i, s, o in zip(init, student, other)], True, "cpu-long")
    ((label, setting, d),) = claims._instability(ds)
    # by hand: per seed, mean(init) - mean(student) = 0.12 - 0.02, 0.22 - 0.06, 0.30 - 0.10
    assert list(d) == pytest.approx([0.10, 0.16, 0.20])
    assert "seeds (each the mean over its 3 pairs)" in setting and "'student epoch 2'" in setting


def test_a_cpu_long_result_adds_its_rows_beside_the_cpu_ones(tmp_path):
    _instability([[0.1, 0.2, 0.3], [0.0, 0.1, 0.1], [0.4] * 3], False, "cpu").to_netcdf(
        tmp_path / "instability.nc", engine="h5netcdf"
    )
    init, student = [0.1, 0.2, 0.3], [0.0, 0.05, 0.1]  # per seed, the same on both pairs
    per_seed = [[[i] * 2, [s] * 2, [0.4] * 2] for i, s in zip(init, student)]
    _instability(per_seed, True, "cpu-long").to_netcdf(tmp_path / "instability_cpu_long.nc", engine="h5netcdf")
    ds = claims.compute(tmp_path)
    files = [str(f) for f in ds.file.values]
    assert files == ["instability", "instability_cpu_long"]  # every other claim's file is missing
    effect = [float(e) for e in ds.effect.values]
    assert effect == pytest.approx([(0.1 + 0.1 + 0.2) / 3, (0.1 + 0.15 + 0.2) / 3])
    assert [int(n) for n in ds.n.values] == [3, 3]
    # by hand: cpu 0.133 +- 4.303 * 0.0577 / sqrt(3) = [-0.010, +0.277] (open); cpu-long 0.15 +- 0.124 (supported)
    ((claim, row, _, before, after),) = claims.scale_changes(ds)
    assert (row, before, after) == ("test error barrier", "open", "supported")
    assert "1 of 1 rows changed verdict" in claims.markdown(ds.assign_attrs(commit="abc1234", rule="r"))
