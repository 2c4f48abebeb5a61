"""analyses.table1: the statistics over epochs, the epoch the student passes its teacher, and --snapshot
of a run in progress, which the finished run then extends."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from analyses import common, table1


def metrics(student, teacher, epochs=(0, 5, 10)) -> xr.Dataset:
    """A metrics Dataset (epoch, model, probe) with one probe ``knn``; teacher_bn = teacher, input 0.3
    (NaN at the epochs not probed, as a store's metrics)."""
    models = ["teacher", "teacher_bn", "student", "input"]
    acc = np.array([[[t], [t], [s], [0.3 if s == s else np.nan]] for s, t in zip(student, teacher)], dtype=float)
    return xr.Dataset(
        {"accuracy": (("epoch", "model", "probe"), acc)},
        coords={"epoch": list(epochs), "model": models, "probe": ["knn"]},
    )


def test_statistics_are_best_after_epoch0_best_and_last():
    m = metrics(student=[0.50, 0.40, 0.45], teacher=[0.50, 0.50, 0.50])
    got = table1.statistics(m).sel(model="student", probe="knn")
    # by hand: epochs 5 and 10 give 0.40 and 0.45; epoch 0 gives 0.50; the last is 0.45
    assert got.sel(statistic="best_after_epoch0") == pytest.approx(0.45)
    assert got.sel(statistic="best") == pytest.approx(0.50)
    assert got.sel(statistic="last") == pytest.approx(0.45)
    assert common.best_over_epochs(m).attrs["statistic"] == "best_after_epoch0"


def test_unprobed_epochs_are_skipped_and_a_run_probed_only_at_epoch_0_has_no_paper_statistic():
    m = metrics(student=[0.2, np.nan, 0.3, np.nan], teacher=[0.2, np.nan, 0.25, np.nan], epochs=(0, 1, 2, 3))
    assert float(common.best_over_epochs(m, "last").sel(model="student", probe="knn")) == pytest.approx(0.3)
    only0 = m.isel(epoch=[0])
    assert np.isnan(float(common.best_over_epochs(only0).sel(model="student", probe="knn")))
    with pytest.raises(ValueError, match="statistic"):
        common.best_over_epochs(m, "median")


def test_first_pass_is_the_first_probed_epoch_after_0_where_the_student_is_ahead():
    # ahead at epoch 0 (ignored), behind at 5, equal at 10 (not ahead), ahead at 15 and 20
    m = metrics(student=[0.6, 0.4, 0.5, 0.51, 0.7], teacher=[0.5, 0.5, 0.5, 0.5, 0.5], epochs=(0, 5, 10, 15, 20))
    got = table1.first_pass(m.accuracy)
    assert float(got.sel(reference="teacher", probe="knn")) == 15
    never = metrics(student=[0.4, 0.4, 0.4], teacher=[0.5, 0.5, 0.5])
    assert np.isnan(float(table1.first_pass(never.accuracy).sel(reference="teacher", probe="knn")))


def test_snapshot_of_a_run_in_progress_then_the_run_extends_it(tmp_path, fmnist_root, capsys):
    import distill

    args = ["--preset", "smoke", "--results", str(tmp_path / "res"), "--runs", str(tmp_path / "runs")]
    assert table1.main([*args, "--snapshot"]) == 2  # nothing stored yet: one line, nothing written
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "run without --snapshot first" in err[0]
    assert not (tmp_path / "res").exists()

    # the first run stopped after epoch 1 of 2, as a run killed in the middle would be
    ctx = common.Context("table1", "smoke", tmp_path / "runs", tmp_path / "res", None, "cpu")
    pre = table1.PRESETS["smoke"]
    cfgs = table1.configs(pre, ctx)
    first = next(iter(cfgs))
    data = common.load(pre["dataset"], ctx, subset=pre["subset"], n_test=pre["n_test"])
    distill.distill(cfgs[first].replace(epochs=1), ctx.store(f"{first}.h5"), data=data, progress=False)

    assert table1.main([*args, "--snapshot"]) == 0
    snap = common.open_result(tmp_path / "res" / "table1_smoke.nc")
    assert list(snap.run.values) == [first] and int(snap.epochs_done.sel(run=first)) == 1
    assert snap.attrs["snapshot"] == 1 and list(snap.epoch.values) == [0, 1]

    assert table1.main(args) == 0  # trains the rest: the first run resumes, the second starts
    done = common.open_result(tmp_path / "res" / "table1_smoke.nc")
    assert list(done.run.values) == list(cfgs) and list(done.epochs_done.values) == [2, 2]
    assert done.attrs["snapshot"] == 0
    # the epochs the snapshot saw are the finished run's (resumed, not retrained)
    a = snap.accuracy.sel(run=first, epoch=[0, 1])
    b = done.accuracy.sel(run=first, epoch=[0, 1])
    assert np.array_equal(a.values, b.values, equal_nan=True)
    last = done.summary.sel(statistic="last", run=first).transpose("model", "probe").values
    assert np.array_equal(last, done.accuracy.sel(run=first, epoch=2).transpose("model", "probe").values)


def test_paper_numbers_are_tables_1_and_3():
    t = table1.paper_table(["vgg11", "resnet18"], ["knn", "linear", "linear_std"])
    assert float(t.sel(paper_arch="vgg11", model="student", probe="linear")) == pytest.approx(0.5198)
    assert float(t.sel(paper_arch="vgg11", model="student", probe="knn")) == pytest.approx(0.5132)
    assert float(t.sel(paper_arch="resnet18", model="teacher", probe="linear")) == pytest.approx(0.3550)
    assert np.isnan(float(t.sel(paper_arch="vgg11", model="student", probe="linear_std")))


def test_cpu_long_is_the_papers_vgg11_protocol():
    from distill.config import REFERENCE

    pre = table1.PRESETS["cpu-long"]
    ctx = common.Context("table1", "cpu-long", None, None, "/data", "cpu")  # type: ignore[arg-type]
    cfg = next(iter(table1.configs(pre, ctx).values()))
    assert (cfg.arch, cfg.dataset, cfg.subset, cfg.epochs, cfg.batch_size) == ("vgg11", "cifar10", None, 150, 256)
    assert (cfg.precision, cfg.out_dim, cfg.lr, cfg.probe_every, cfg.save_every) == ("fp32", 65536, 1e-3, 5, 5)
    assert cfg.dynamics and cfg.probe_subset is None and cfg.probes == ["knn", "linear", "linear_std"]
    assert all(getattr(cfg, k) == v for k, v in REFERENCE.items())
