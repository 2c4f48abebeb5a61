"""Sweeps on real engines: a dask.distributed LocalCluster (2 worker processes) and submitit's local
executor give the sequential run's tensors and metrics (locality points, instability children,
lottery units, plane rows); a point another live process is writing is left to it and named; a
sweep whose dask worker is killed mid-run completes on a rerun without recomputing finished
points; --executor specs."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import submitit
import torch
from distributed import Client, LocalCluster

from distill.progress import read_progress
from distill.store import Store, StoreBusy, StoreError
from landscape.executors import SubmititExecutor, SweepIncomplete, open_executor, run_units
from landscape.locality import distillation_complete, locality, point_config, point_path
from tests.distill.test_train import synthetic, tiny_cfg
from tests.landscape import test_instability as ti

inst = ti.inst
ALPHAS = [0.0, 0.25, 0.5, 1.0]


@pytest.fixture(scope="module")
def one_thread():
    """Dask workers run one intra-op thread; the sequential reference does too, so that equality is
    exact (with other thread counts float reassociation alone changes the last bits)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def dask_client():
    """One LocalCluster of 2 worker processes for the module; a task whose worker dies fails at once
    (no retry on the other worker), as the kill test needs."""
    import dask

    with (
        dask.config.set({"distributed.scheduler.allowed-failures": 0}),
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        yield client


@pytest.fixture(scope="module")
def dask_executor(dask_client):
    return dask_client.get_executor()


@pytest.fixture()
def submitit_executor(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the job processes inherit it
    ex = submitit.LocalExecutor(folder=tmp_path / "submitit")
    ex.update_parameters(timeout_min=20)
    return SubmititExecutor(ex)


def _cfg(**kw):
    return tiny_cfg(**{"epochs": 1, "save_every": 1, "probes": ["knn"], **kw})


@pytest.fixture(scope="module")
def sequential(one_thread, tmp_path_factory):
    out = tmp_path_factory.mktemp("seq")
    return locality(_cfg(), alphas=ALPHAS, out_dir=out, data=synthetic(), progress=False)


def assert_same_sweep(a, b):
    """Every variable equal and every point's stored tensors and metrics identical (wall time aside)."""
    assert set(a.data_vars) == set(b.data_vars)
    for name in a.data_vars:
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)
    for alpha in a.alpha.values:
        sa, sb = (Store(str(d.store.sel(alpha=alpha, seed=0).item())) for d in (a, b))
        assert sa.path != sb.path
        for name in sa.names():
            ta, tb = sa.load_state(name)[0], sb.load_state(name)[0]
            assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta), (alpha, name)
        ma, mb = sa.metrics.drop_vars("seconds"), sb.metrics.drop_vars("seconds")
        for name in ma.data_vars:
            np.testing.assert_array_equal(ma[name].values, mb[name].values, err_msg=name)


def test_locality_on_a_dask_cluster_matches_the_sequential_run(sequential, dask_executor, tmp_path):
    par = locality(_cfg(), alphas=ALPHAS, out_dir=tmp_path, data=synthetic(), executor=dask_executor, progress=False)
    assert_same_sweep(sequential, par)


def test_locality_through_submitit_matches_the_sequential_run(sequential, submitit_executor, tmp_path):
    par = locality(
        _cfg(), alphas=ALPHAS, out_dir=tmp_path, data=synthetic(), executor=submitit_executor, progress=False
    )
    assert_same_sweep(sequential, par)
    assert len(submitit_executor.jobs) == len(ALPHAS)  # one job per point, each its own process
    assert len({j.job_id for j in submitit_executor.jobs}) == len(ALPHAS)


def _children(tmp, executor):
    data = ti.synthetic()
    ds = inst.instability(
        ti.dino_start(),
        data,
        children=2,
        cfg=ti.CFG,
        store=tmp / "children.h5",
        alphas=5,
        device="cpu",
        head_seed=2,
        path_options=ti.PATH,
        executor=executor,
    )
    return ds, Store(tmp / "children.h5")


def assert_same_children(a, b):
    (da, sa), (db, sb) = a, b
    for name in da.data_vars:
        np.testing.assert_array_equal(da[name].values, db[name].values, err_msg=name)
    assert sa.names() == sb.names() == ["children/0", "children/1", "start"]
    for name in sa.names():
        ta, tb = sa.load_state(name)[0], sb.load_state(name)[0]
        assert all(torch.equal(ta[k], tb[k]) for k in ta), name
    assert not list(sb.path.parent.glob("*.child*"))  # the units' own stores were moved in


def test_instability_children_on_dask_and_submitit_match_the_sequential_run(
    one_thread, dask_executor, submitit_executor, tmp_path
):
    dirs = [tmp_path / d for d in ("run-seq", "run-dask", "run-submitit")]
    for d in dirs:
        d.mkdir()
    seq = _children(dirs[0], None)
    assert_same_children(seq, _children(dirs[1], dask_executor))
    assert_same_children(seq, _children(dirs[2], submitit_executor))


def test_run_units_skips_done_units_and_stops_at_the_first_failure():
    class Unit:
        def __init__(self, done, fail=False):
            self._done, self.fail, self.calls = done, fail, 0

        def done(self):
            return self._done

        def __call__(self):
            self.calls += 1
            if self.fail:
                raise RuntimeError("boom")
            return self.calls

    units = [Unit(True), Unit(False), Unit(True), Unit(False)]
    results, skipped = run_units(units)
    assert skipped == 2 and results == [None, 1, None, 1] and [u.calls for u in units] == [0, 1, 0, 1]
    with pytest.raises(RuntimeError, match="boom"):
        run_units([Unit(False, fail=True), Unit(False)])


@pytest.mark.parametrize(
    "spec,message",
    [
        ("slurm:4", "unknown kind"),
        ("process:0", "positive integer"),
        ("dask-local:x", "positive integer"),
        ("process", "is not valid"),
        ("submitit:/tmp/x,timeout", "key=value"),
    ],
)
def test_bad_executor_specs_are_one_line_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        with open_executor(spec):
            pass


def test_rtt_locality_rejects_a_bad_executor(tmp_path, capsys):
    from landscape.cli import main as rtt

    code = rtt(
        ["locality", "--alphas", "0,1", "--out", str(tmp_path / "l.nc"), "--runs", str(tmp_path), "--executor", "mpi:4"]
    )
    err = capsys.readouterr().err
    assert code == 1 and "unknown kind 'mpi'" in err and len(err.strip().splitlines()) == 1


def test_lottery_rewind_targets_as_units_on_dask_match_one_sequential_call(one_thread, dask_executor, tmp_path):
    from landscape.lottery import lottery
    from landscape.lottery_sweep import lottery_sweep
    from tests.landscape import test_lottery as tl

    data, start = tl.synthetic(), tl.tiny_model()
    one = lottery(start, data, levels=2, rewind=["start", "init"], cfg=tl.CFG, device="cpu", progress=False)
    swept = lottery_sweep(
        start,
        data,
        rewinds=["start", "init"],
        out_dir=tmp_path,
        executor=dask_executor,
        cfg=tl.CFG,
        levels=2,
        device="cpu",
    )
    assert list(swept.rewind.values) == ["start", "init"]
    for name in one.data_vars:
        np.testing.assert_array_equal(one[name].values, swept[name].values, err_msg=name)
    assert sorted(p.name for p in tmp_path.glob("*.rts")) == ["lottery-init-seed0.rts", "lottery-start-seed0.rts"]
    # a rerun finds both units done and trains nothing
    again = lottery_sweep(start, data, rewinds=["start", "init"], out_dir=tmp_path, cfg=tl.CFG, levels=2, device="cpu")
    for name in one.data_vars:
        np.testing.assert_array_equal(again[name].values, swept[name].values, err_msg=name)


def test_plane_rows_on_dask_match_the_sequential_plane(one_thread, dask_executor):
    from landscape.planes import plane
    from tests.landscape import test_planes as tp

    abc, data = (tp.model(0), tp.model(1), tp.model(2)), tp.synthetic()
    kw = dict(resolution=(3, 4), span=(-0.5, 1.5), bn="reset", **tp.EVAL)
    seq = plane(*abc, data, **kw)
    par = plane(*abc, data, executor=dask_executor, **kw)
    assert par.sizes == {"x": 3, "y": 4, "point": 3}
    for name in ("loss", "error", "point_x", "point_y", "x", "y"):
        np.testing.assert_array_equal(par[name].values, seq[name].values, err_msg=name)
    assert {k: v for k, v in par.attrs.items() if k != "started_at"} == {
        k: v for k, v in seq.attrs.items() if k != "started_at"
    }
    assert len(np.unique(seq.loss.values)) == 12  # the rows differ: each grid point is its own value


# holds a store's writer lock (flock) as a writer in another live process does, until stdin closes
HOLD = (
    "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR); "
    "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB); os.pwrite(fd, b'pid %d' % os.getpid(), 0); "
    "print('holding', flush=True); sys.stdin.read()"
)


def test_a_point_being_written_elsewhere_is_left_to_it_and_named(
    sequential, one_thread, dask_executor, tmp_path, caplog
):
    cfg, data, alphas = _cfg(), synthetic(), [0.0, 1.0]
    free, busy = (point_path(tmp_path, cfg, "alpha", a, 0) for a in alphas)
    Store.create(busy, point_config(cfg, "alpha", 1.0, 0).to_dict()).close()  # a run begun elsewhere
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(busy / "lock")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(SweepIncomplete) as failed:
            locality(cfg, alphas=alphas, out_dir=tmp_path, data=data, executor=dask_executor, progress=False)
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    message = str(failed.value)
    assert "\n" not in message and "1 of 2 work units" in message
    assert str(busy) in message and f"pid {holder.pid}" in message
    assert distillation_complete(point_config(cfg, "alpha", 0.0, 0), free)  # the other point finished
    assert not distillation_complete(point_config(cfg, "alpha", 1.0, 0), busy)  # and this one was not touched
    assert Store(busy).epochs == []
    with caplog.at_level(logging.INFO, logger="landscape.sweep"):
        again = locality(cfg, alphas=alphas, out_dir=tmp_path, data=data, progress=False)
    assert "1 of 2 work units already complete" in caplog.text
    assert_same_sweep(sequential.sel(alpha=alphas), again)


class BusyUnit:
    """A unit whose store another process holds: it fails as the store's writer lock does."""

    def done(self) -> bool:
        return False

    def __call__(self) -> None:
        raise StoreBusy("runs/x.h5", "pid 1 on host h")


def test_a_busy_store_in_a_submitit_job_is_still_recognised(tmp_path):
    # submitit hands a job's exception back as traceback text; the executor returns this one as a value
    ex = SubmititExecutor(submitit.DebugExecutor(folder=tmp_path))
    with pytest.raises(SweepIncomplete, match=r"1 of 1 work units .*\(runs/x\.h5 by pid 1 on host h\)"):
        run_units([BusyUnit()], ex)


class FailingUnit:
    """A unit failing with a store error that is not a lock refusal, though its text reads like one."""

    def done(self) -> bool:
        return False

    def __call__(self) -> None:
        raise StoreError("runs/x.h5 is being written by nobody: a corrupt file, not a lock")


def test_only_a_store_busy_error_leaves_a_unit_to_another_process():
    ran: list[int] = []

    class Other:
        def done(self) -> bool:
            return False

        def __call__(self) -> int:
            ran.append(1)
            return 1

    with pytest.raises(SweepIncomplete, match=r"1 of 2 work units .*\(runs/x\.h5 by pid 1 on host h\)"):
        run_units([BusyUnit(), Other()], None)
    assert ran == [1]  # the other unit still ran
    with pytest.raises(StoreError, match="a corrupt file") as failed:
        run_units([FailingUnit(), BusyUnit()], None)
    assert not isinstance(failed.value, SweepIncomplete)


def test_killing_a_dask_worker_then_rerunning_skips_the_finished_points(
    sequential, one_thread, dask_client, tmp_path, caplog
):
    """Last in the module: it kills a worker of the shared cluster, then shuts the cluster down."""
    cfg, alphas, data, reference = _cfg(), ALPHAS, synthetic(), sequential
    client = dask_client
    out = tmp_path / "sweep"
    points = {point_path(out, cfg, "alpha", a, 0): point_config(cfg, "alpha", a, 0) for a in alphas}

    def finished() -> dict:
        return {p: p.stat().st_mtime_ns for p, c in points.items() if distillation_complete(c, p)}

    killed: list[int] = []
    pids = client.run(os.getpid)
    stop = threading.Event()

    def kill_a_busy_worker_once_a_point_is_done() -> None:
        deadline = time.monotonic() + 600  # a guard against hanging, not a speed requirement
        while not stop.is_set() and time.monotonic() < deadline:
            busy = [w for w, tasks in client.processing().items() if tasks]
            # a point's last progress record follows its last commit (reading the stores here
            # would take HDF5 file locks the writers trip over)
            if busy and any(r["epoch"] == cfg.epochs for p in points for r in read_progress(p)[-1:]):
                os.kill(pids[busy[0]], signal.SIGKILL)
                killed.append(pids[busy[0]])
                return
            time.sleep(0.1)

    watcher = threading.Thread(target=kill_a_busy_worker_once_a_point_is_done)
    watcher.start()
    try:
        locality(cfg, alphas=alphas, out_dir=out, data=data, executor=client.get_executor(), progress=False)
        first = "completed (the kill landed after the last point)"
    except Exception as e:  # the killed worker's point fails the sweep (allowed-failures 0)
        first = f"failed: {type(e).__name__}"
    finally:
        stop.set()
        watcher.join()
        # the surviving worker may still be computing a cancelled point: stop the cluster so that
        # no process writes the stores during the rerun
        client.close()
        client.cluster.close()
    assert killed
    complete = finished()
    assert complete
    with caplog.at_level(logging.INFO, logger="landscape.sweep"):
        again = locality(cfg, alphas=alphas, out_dir=out, data=data, progress=False)
    notes = [r.getMessage() for r in caplog.records if r.name == "landscape.sweep"]
    found = [m for m in (re.search(r"(\d+) of \d+ work units already complete", n) for n in notes) if m]
    skipped = int(found[-1].group(1))
    print(f"\nfirst run {first}; rerun skipped {skipped} of {len(alphas)} points, computed {len(alphas) - skipped}")
    assert skipped == len(complete)
    assert all(p.stat().st_mtime_ns == t for p, t in complete.items())  # finished stores were not touched
    assert_same_sweep(reference, again)
