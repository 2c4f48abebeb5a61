"""Readers during a whole distillation, a second writer, and the size of a finished store."""

import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

from distill.store import Store, StoreBusy, StoreError
from distill.train import distill as run
from landscape.cli import main as rtt
from tests.distill.store_helpers import ROOT, checksums, memory_dir, report, shared_server, write_mnist
from tests.distill.test_train import synthetic, tiny_cfg

READER = textwrap.dedent("""
    import contextlib, io, json, sys, time
    from pathlib import Path
    from distill.store import Store
    from landscape.cli import main as rtt
    path, stop, acks = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    polls = errors = 0
    last_commits, first_error, seen = [], None, set()
    print("ready", flush=True)
    while True:
        finished = stop.exists()  # one more full poll after the writer is done
        if path.exists():
            try:
                s = Store(path)
                commits = s.commits()
                assert commits[: len(last_commits)] == last_commits, "a committed epoch vanished"
                if commits:
                    for e in {s.epochs[0], s.epochs[-1]}:
                        s.student(e)
                    m = s.metrics
                    assert list(m.epoch.values) == list(range(int(m.epoch[-1]) + 1)), "metrics rows skip or repeat"
                    assert int(m.epoch[-1]) >= commits[-1]
                buf = io.StringIO()
                with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
                    code = rtt(["info", str(path)])
                assert code == 0, buf.getvalue()
                last_commits = commits
                seen.add(len(commits))
                polls += 1
                (acks.parent / "acks.tmp").write_text(str(polls))
                (acks.parent / "acks.tmp").replace(acks)
            except Exception as e:
                errors += 1
                first_error = first_error or f"{type(e).__name__}: {e}"
        if finished:
            break
        time.sleep(0.05)
    print(json.dumps({"polls": polls, "errors": errors, "first_error": first_error, "commits": last_commits,
                      "seen": sorted(seen)}))
""")


def test_a_reader_polling_a_whole_run_sees_no_error(tmp_path, capsys):
    path, stop, acks = tmp_path / "live.h5", tmp_path / "stop", tmp_path / "acks"
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(path), str(stop), str(acks)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert reader.stdout.readline().strip() == "ready"
    try:
        lines, done = shared_server().run(
            job="distill", store=str(path), cfg={"epochs": 4, "probes": []}, kill_after_s=None, lockstep=str(acks)
        )
    finally:
        stop.touch()
    out, err = reader.communicate()
    assert done["code"] == 0 and done["signal"] == 0 and not [r for r in lines if "error" in r], lines
    got = json.loads(out.strip().splitlines()[-1])
    assert reader.returncode == 0, err
    assert got["errors"] == 0, got["first_error"]
    # the writer waited for a full poll after each commit, so the reader saw every intermediate state
    assert got["commits"] == list(range(5)) and set(range(1, 6)) <= set(got["seen"]), got
    report(
        capsys,
        f"reader polled student(e), .metrics and rtt info {got['polls']} times during a 4-epoch run "
        f"(after each of its 5 commits at least once): {got['errors']} errors in the reader, 0 in the writer",
    )


def test_a_second_writer_is_refused_naming_the_holder(tmp_path, capsys):
    path = tmp_path / "held.h5"
    root = write_mnist(tmp_path / "mnist")
    server = shared_server()
    server.send(job="hold", store=str(path), kill_after_s=None)
    pid = server.line()["locked"]
    killed = False
    try:
        before = checksums(path)
        argv = [
            "distill",
            "--out",
            str(path),
            "--dataset",
            "mnist",
            "--data-root",
            str(root),
            "--arch",
            "mlp",
            "--arch-options",
            '{"widths": [16]}',
            "--out-dim",
            "16",
            "--hidden-dim",
            "16",
            "--bottleneck-dim",
            "8",
            "--epochs",
            "1",
            "--batch-size",
            "32",
            "--probes",
            "none",
            "--device",
            "cpu",
        ]
        code = rtt(argv)
        err = capsys.readouterr().err
        assert code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert f"is being written by pid {pid} on host" in err
        with pytest.raises(StoreBusy, match=f"pid {pid}") as refused:
            run(tiny_cfg(epochs=1, probes=[]), path, data=synthetic(), progress=False)
        busy = refused.value
        assert isinstance(busy, StoreError) and busy.store == str(path) and busy.holder.startswith(f"pid {pid} on host")
        want = f"{path} is being written by {busy.holder}: wait for it to finish or stop it; readers need no lock"
        assert str(busy) == want
        again = pickle.loads(pickle.dumps(busy))  # how a process pool or dask hands it back
        assert type(again) is StoreBusy and (again.store, again.holder, str(again)) == (busy.store, busy.holder, want)
        # the refusals returned while the holder still holds the lock: nobody waited for it to finish
        os.kill(pid, 0)  # still alive (unreaped children of the server keep their pid)
        assert checksums(path) == before
        os.kill(pid, signal.SIGKILL)
        killed = True
        assert server.replies()[-1]["signal"] == signal.SIGKILL
    finally:
        if not killed:  # a failed check: free the shared server for the next test
            os.kill(pid, signal.SIGKILL)
            server.replies()
    # the killed holder's lock is stale: the same command now runs
    assert rtt(argv) == 0
    assert Store(path).epochs == [0, 1]
    report(capsys, f"second writer refused with the holder named ({err.strip()})")


def _dataset_bytes(path: Path) -> int:
    """Bytes of every dataset in every HDF5 file under ``path``, counted with h5py alone."""
    total = 0
    for f in sorted(path.rglob("*.h5")):
        with h5py.File(f, "r") as h:

            def visit(_, obj):
                nonlocal total
                if isinstance(obj, h5py.Dataset):
                    total += obj.size * obj.dtype.itemsize

            h.visititems(visit)
    return total


def test_a_finished_store_is_compact(tmp_path, capsys):
    cfg = tiny_cfg(arch="mlp", arch_options={"widths": [256, 256]}, epochs=10, save_every=1, probes=[], probe_every=0)
    with memory_dir(tmp_path) as d:  # sizes are the same on any file system; fsyncs cost nothing there
        _compact(run(cfg, d / "ten.h5", data=synthetic(), progress=False), capsys)


def _compact(store: Store, capsys) -> None:
    assert store.epochs == list(range(11))
    files = [p for p in store.path.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    tensors = _dataset_bytes(store.path)
    params = sum(v.numel() * v.element_size() for v in store.student().state_dict().values())
    assert tensors >= 11 * params + 3 * params  # 11 students, the teacher, the Adam moments
    ratio = size / tensors
    assert ratio <= 1.15
    assert not [p for p in files if p.name.startswith(".")]
    report(
        capsys,
        f"10-epoch run, save_every=1: store {size / 1e6:.2f} MB for {tensors / 1e6:.2f} MB of tensors "
        f"= {ratio:.3f}x ({len(files)} files)",
    )
    np.testing.assert_array_equal(store.metrics.epoch.values, np.arange(11))
