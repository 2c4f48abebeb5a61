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
    rows = [line for line in got if line.startswith("| ") and "---" not in line]
    assert rows == [line for line in committed if line.startswith("| ") and "---" not in line]
    names = {line.split(" | ")[0][2:] for line in rows[1:]}
    assert names == {c.name for c in claims.CLAIMS}  # every claim has rows
    assert all(int(line.split(" | ")[6]) >= 3 for line in rows[1:])  # n >= 3 seeds (or pairs) per row
