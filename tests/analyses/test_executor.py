"""``python -m analyses.<name> --executor SPEC``: the seed loop's distillations run as work units on a
pool of processes, give the sequential run's numbers, and are skipped on a rerun; a bad spec is one line."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import torch
import xarray as xr

from analyses import probing_curves

# attrs that name the call rather than the computation
CALL = {"command_line", "created_at", "started_at"}


def _run(tmp, *extra: str) -> xr.Dataset:
    args = ["--preset", "smoke", "--results", str(tmp / "results"), "--runs", str(tmp / "runs"), *extra]
    assert probing_curves.main(args) == 0
    with xr.open_dataset(tmp / "results" / "probing_curves_smoke.nc", engine="h5netcdf") as ds:
        return ds.load()


def test_seed_loop_on_a_process_pool_matches_the_sequential_run_and_reruns_skip(tmp_path, monkeypatch, caplog):
    from analyses import common
    from tests.distill.test_train import synthetic

    # the smoke preset on tiny synthetic images, one epoch probed at its start and end by k-NN
    monkeypatch.setattr(common, "load", lambda *a, **k: synthetic(n_train=128, n_test=64))
    smoke = probing_curves.PRESETS["smoke"]
    cfg = {**smoke["cfg"], "epochs": 1, "probes": ["knn"], "probe_subset": None}
    tiny = {**smoke, "dataset": "synthetic", "subset": None, "seeds": [0, 1], "cfg": cfg}  # two seeds: two units
    monkeypatch.setitem(probing_curves.PRESETS, "smoke", tiny)
    monkeypatch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))  # workers: this process's thread count
    seq = _run(tmp_path / "seq")
    with caplog.at_level(logging.INFO, logger="landscape.sweep"):
        par = _run(tmp_path / "par", "--executor", "process:2")
        assert "already complete" not in caplog.text
        again = _run(tmp_path / "par", "--executor", "process:2")
    assert "2 of 2 work units already complete, skipped" in caplog.text
    assert sorted(p.name for p in (tmp_path / "par" / "runs" / "probing_curves" / "smoke").glob("*.rts")) == [
        "seed0.rts",
        "seed1.rts",
    ]
    for ds in (par, again):
        assert set(ds.data_vars) == set(seq.data_vars) == {"accuracy", "loss", "kl"}
        for name in seq.data_vars:
            np.testing.assert_array_equal(ds[name].values, seq[name].values, err_msg=name)
        assert {k: v for k, v in ds.attrs.items() if k not in CALL} == {
            k: v for k, v in seq.attrs.items() if k not in CALL
        }
    assert seq.sizes["seed"] == 2 and not np.array_equal(seq.loss.values[0], seq.loss.values[1])


def test_a_bad_executor_spec_is_one_line(tmp_path, capsys):
    code = probing_curves.main(["--preset", "smoke", "--runs", str(tmp_path), "--executor", "mpi:2"])
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1 and "unknown kind 'mpi'" in err
    assert not list(tmp_path.iterdir())  # nothing was run


def test_all_passes_its_options_on_to_every_script(monkeypatch):
    """analyses.all hands --preset, --results, --runs, --root and --executor to each script's main."""
    import sys
    import types

    from analyses import all as run_all

    seen: dict[str, list[str]] = {}

    def recorder(name: str):
        def main(argv: list[str]) -> int:
            seen[name] = list(argv)
            return 0

        return main

    for name in ("fake_a", "fake_b"):
        mod = types.ModuleType(f"analyses.{name}")
        mod.main = recorder(name)  # type: ignore[attr-defined]
        mod.PRESETS = {"smoke": {}}  # type: ignore[attr-defined]  # analyses.all runs a script's own presets
        monkeypatch.setitem(sys.modules, f"analyses.{name}", mod)
    monkeypatch.setattr(run_all, "SCRIPTS", ("fake_a", "fake_b"))
    argv = ["--preset", "smoke", "--results", "R", "--runs", "U", "--root", "D", "--executor", "process:2"]
    assert run_all.main(argv) == 0
    want = ["--preset", "smoke", "--results", "R", "--runs", "U", "--root", "D", "--executor", "process:2"]
    assert seen == {"fake_a": want, "fake_b": want}
    seen.clear()
    assert run_all.main(["--preset", "smoke", "--only", "fake_b"]) == 0
    assert seen == {"fake_b": ["--preset", "smoke", "--results", "results", "--runs", "runs"]}


def test_align_barriers_pairs_on_a_process_pool_match_the_sequential_run_and_reruns_skip(
    tmp_path, monkeypatch, caplog, fmnist_root
):
    """Each (width, seed) pair is a work unit writing its own file: through process:2 the result equals
    the sequential one (the pairs' wall times aside), and a rerun trains nothing."""
    from analyses import align_barriers

    tiny = {**align_barriers.PRESETS["smoke"], "widths": [4, 8], "subset": 128, "test": 100, "alphas": 3}
    monkeypatch.setitem(align_barriers.PRESETS, "smoke", tiny)
    monkeypatch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))  # workers: this process's thread count

    def run(where, *extra: str) -> xr.Dataset:
        args = ["--preset", "smoke", "--results", str(where / "results"), "--runs", str(where / "runs"), *extra]
        assert align_barriers.main(args) == 0
        with xr.open_dataset(where / "results" / "align_barriers_smoke.nc", engine="h5netcdf") as ds:
            return ds.load()

    seq = run(tmp_path / "seq")
    pairs = tmp_path / "par" / "runs" / "align_barriers" / "smoke"
    with caplog.at_level(logging.INFO, logger="landscape.sweep"):
        par = run(tmp_path / "par", "--executor", "process:2")
        assert "already complete" not in caplog.text
        written = {p.name: p.stat().st_mtime_ns for p in pairs.glob("*.nc")}
        again = run(tmp_path / "par", "--executor", "process:2")
    assert "2 of 2 work units already complete, skipped" in caplog.text
    assert sorted(written) == ["pair-w4-s0.nc", "pair-w8-s0.nc"]
    assert {p.name: p.stat().st_mtime_ns for p in pairs.glob("*.nc")} == written  # nothing rewritten
    assert set(seq.data_vars) == {"error", "loss", "end_accuracy", "seconds", "barrier_error", "barrier_loss"}
    for ds in (par, again):
        for name in set(seq.data_vars) - {"seconds"}:
            np.testing.assert_array_equal(ds[name].values, seq[name].values, err_msg=name)
        assert {k: v for k, v in ds.attrs.items() if k not in CALL} == {
            k: v for k, v in seq.attrs.items() if k not in CALL
        }
    # the barrier is the path's own maximum over its ends' mean, recomputed here from the error curves
    err = seq.error.values
    np.testing.assert_allclose(seq.barrier_error.values, err.max(-1) - (err[..., 0] + err[..., -1]) / 2)
    assert not np.array_equal(seq.error.values[0], seq.error.values[1])  # the two widths are two computations
    # a pair file of other settings is not taken for finished: it is recomputed
    tiny_sup = tiny["sup"]
    unit = align_barriers.PairUnit("mlp", 4, 0, 128, 100, 3, dict(tiny_sup), "cpu", str(pairs / "pair-w4-s0.nc"))
    assert unit.done()
    assert not dataclasses.replace(unit, sup={**tiny_sup, "lr": 0.01}).done()
    assert not dataclasses.replace(unit, alphas=5).done()
