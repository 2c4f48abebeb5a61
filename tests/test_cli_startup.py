"""``rtt -h``, ``rtt COMMAND -h`` and usage errors answer without importing torch or xarray.

Each call runs in a fresh interpreter that records which heavy modules were imported; the
start-up time itself is measured in ``bench/bench_startup.py``, never asserted here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# run every call of ``calls`` in one fresh interpreter; after each, note the heavy modules present
_PROBE = r"""
import contextlib, io, json, sys
from landscape.cli import main
out = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(argv)
    out.append({"argv": argv, "code": code, "err": err.getvalue(),
                "heavy": sorted(m for m in ("torch", "xarray", "h5py", "scipy", "matplotlib") if m in sys.modules)})
print(json.dumps(out))
"""


def _calls(calls: list[list[str]]) -> list[dict]:
    r = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(calls)], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_help_and_usage_errors_import_no_heavy_module():
    from landscape.cli import COMMANDS, _load_commands

    _load_commands()
    calls = [
        ["-h"],
        *[[name, "-h"] for name in COMMANDS],
        ["nonsense"],
        ["distill", "--subset", "10k", "--out", "x"],
        ["distill", "--out", "x", "--arch-options", "{bad"],
        ["lmc", "--alphas", "many", "a:1", "b:2"],
    ]
    results = _calls(calls)
    for r in results:
        assert r["heavy"] == [], f"rtt {' '.join(r['argv'])} imported {r['heavy']}"
    by = {tuple(r["argv"]): r for r in results}
    assert all(by[(name, "-h")]["code"] == 0 for name in COMMANDS)
    for argv in calls[-4:]:
        r = by[tuple(argv)]
        assert r["code"] == 2, r
        lines = r["err"].strip().splitlines()
        assert len(lines) == 1 and "error:" in lines[0] and "usage:" not in r["err"], r["err"]
    assert "not a whole number" in by[tuple(calls[-3])]["err"]
    assert "not valid JSON" in by[tuple(calls[-2])]["err"]


def test_light_copies_agree_with_the_modules_they_stand_for():
    from landscape.commands import BN_POLICIES
    from landscape.evaluate import POLICIES

    assert BN_POLICIES == POLICIES


def test_landscape_functions_win_over_same_named_submodules():
    code = (
        "import sys, landscape; assert 'torch' not in sys.modules\n"
        "import landscape.instability, landscape.lottery, landscape.locality\n"
        "from landscape.instability import load_ref\n"
        "assert all(callable(f) and f.__name__ == n for n, f in [('instability', landscape.instability), "
        "('lottery', landscape.lottery), ('locality', landscape.locality), ('plane', landscape.plane), "
        "('linear_path', landscape.linear_path)])\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
