"""scripts/gpu-analyses.sh, the gpu presets as one resumable command: checked on a CPU with PRESET=smoke
(the same parts, budget, stop and resume logic; the GPU itself is exercised where one is lent)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import xarray as xr

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu-analyses.sh"


def run(out: Path, *args: str, cifar: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "PRESET": "smoke", "TQDM_DISABLE": "1"}
    if cifar is not None:
        env["CIFAR10"] = str(cifar)
    return subprocess.run(["bash", str(SCRIPT), str(out), *args], capture_output=True, text=True, timeout=900, env=env)


def test_parts_run_once_are_marked_done_and_skipped_by_the_next_call(tmp_path, fmnist_root, cifar_tarball):
    out = tmp_path / "out"
    r = run(out, "600", "head_dim,transfer", cifar=cifar_tarball)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "all parts complete" in r.stdout
    for name in ("head_dim", "transfer"):
        assert (out / f"{name}.done").exists()
        with xr.open_dataset(out / "results" / f"{name}_smoke.nc", engine="h5netcdf") as ds:
            assert ds.attrs["preset"] == "smoke"
    again = run(out, "600", "head_dim,transfer", cifar=cifar_tarball)
    assert again.returncode == 0 and again.stdout.count("done earlier") == 2


def test_a_part_stopped_by_the_budget_is_not_done_and_resumes(tmp_path, fmnist_root, cifar_tarball):
    out = tmp_path / "out"
    r = run(out, "1", "head_dim", cifar=cifar_tarball)  # one second: the part is stopped
    assert r.returncode == 3, r.stdout + r.stderr
    assert "stopped by the budget" in r.stdout and "not complete: head_dim" in r.stdout
    assert not (out / "head_dim.done").exists()
    r = run(out, "600", "head_dim", cifar=cifar_tarball)
    assert r.returncode == 0 and (out / "head_dim.done").exists(), r.stdout + r.stderr


@pytest.mark.parametrize(
    "args, word",
    [(["60", "tables,nonsense"], "unknown part 'nonsense'"), (["ten"], "BUDGET_SECONDS must be a whole number")],
)
def test_bad_arguments_are_one_line_and_run_nothing(tmp_path, args, word):
    r = run(tmp_path / "out", *args)
    assert r.returncode == 2 and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1 and word in r.stderr
    assert not (tmp_path / "out").exists()
