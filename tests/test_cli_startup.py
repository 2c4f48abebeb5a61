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
    from landscape.configs import BN_POLICIES
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


def _old_info(path: Path) -> str:
    """The ``rtt info`` table computed through the full Store and xarray (the reference)."""
    from distill.store import Store

    s = Store(path)
    attrs, cfg = s.attrs, s.config
    lines = [f"store     {s.path}"]
    lines += [f"{k:<9} {attrs.get(k)}" if len(k) <= 9 else f"{k} {attrs.get(k)}" for k in _INFO_KEYS]
    short = {k: cfg[k] for k in ("dataset", "subset", "arch", "init", "alpha", "lr", "epochs", "seed") if k in cfg}
    lines.append("config    " + ", ".join(f"{k}={v}" for k, v in short.items()))
    lines.append(f"modules   {', '.join(n for n in s.names() if not n.startswith('student/'))}")
    lines.append(f"students  epochs {', '.join(map(str, s.epochs))}")
    for r in s.results():
        ds = s.read_result(r)
        dims = ", ".join(f"{d}={n}" for d, n in ds.sizes.items())
        lines.append(f"result    {r}: {', '.join(map(str, ds.data_vars))} over ({dims})")
    return "\n".join(lines) + "\n"


_INFO_KEYS = ("kind", "format_version", "toolkit_version", "torch_version", "created_at")


def test_rtt_info_reads_a_store_without_torch_and_says_what_xarray_says(tmp_path):
    import numpy as np
    import xarray as xr

    import distill
    from distill.store import Store, student_name
    from distill.store.pack import pack

    store = Store.create(tmp_path / "s.h5", {"arch": "mlp", "epochs": 3, "seed": 1})
    m = distill.build_model("mlp", (1, 4, 4), head=None, widths=[3])
    store.save_module("teacher", m)
    for e in (0, 3):
        store.save_module(student_name(e), m, {"epoch": e})
    metrics = xr.Dataset(
        {"accuracy": (("epoch", "model", "probe"), np.zeros((2, 2, 3))), "loss": ("epoch", np.ones(2))},
        coords={"epoch": [0, 3], "model": ["student", "teacher"], "probe": ["knn", "linear", "linear_std"]},
    )
    store.write_result("metrics", metrics)
    # a dimension without a coordinate, a non-dimension coordinate, a variable named like no dimension
    grid = xr.Dataset(
        {"error": (("split", "x", "y"), np.zeros((2, 4, 5))), "n": ((), 3)},
        coords={"split": ["train", "test"], "point_x": ("point", [0.0, 1.0, 0.0])},
    )
    store.write_result("plane/a", grid)
    packed = pack(store, tmp_path / "packed.h5")
    calls = [["info", str(store.path)], ["info", str(packed)], ["info", "--json", str(store.path)]]
    code = (
        "import contextlib, io, json, sys\nfrom landscape.cli import main\nout = []\n"
        "for argv in json.loads(sys.argv[1]):\n"
        "    buf = io.StringIO()\n"
        "    with contextlib.redirect_stdout(buf):\n"
        "        out.append((main(argv), buf.getvalue()))\n"
        "print(json.dumps({'out': out, 'torch': 'torch' in sys.modules, 'xarray': 'xarray' in sys.modules}))\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, json.dumps(calls)], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert not got["torch"] and not got["xarray"], got
    (c1, folder), (c2, single), (c3, as_json) = got["out"]
    assert c1 == c2 == c3 == 0
    assert folder == _old_info(store.path)
    assert single == _old_info(packed)
    assert "result    plane/a: error, n over (split=2, x=4, y=5, point=3)" in folder
    j = json.loads(as_json)
    assert j["modules"] == ["student/00000", "student/00003", "teacher"] and j["results"] == ["metrics", "plane/a"]
    assert j["kind"] == "distill" and j["config"] == {"arch": "mlp", "epochs": 3, "seed": 1}
