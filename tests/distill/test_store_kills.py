"""Crash safety of the store under SIGKILL: a fast checkpoint appender killed hundreds of times,
a real distillation killed at random instants and between every pair of file operations of one
epoch's commit. The counts are printed in the test output."""

import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from distill.store import Store
from tests.distill.store_helpers import ForkServer, memory_dir, report, shared_server


@pytest.fixture
def fast_tmp(tmp_path):
    with memory_dir(tmp_path) as d:
        yield d


@pytest.fixture(scope="module")
def server():
    return shared_server()


def check_appended(path: Path, saved: set[int]) -> int:
    """Reopen, list and read back every checkpoint: each one holds exactly its index, every index
    whose save returned is present, the training state belongs to the newest commit."""
    s = Store(path)
    names = s.names("ck/")
    have = set()
    for name in names:
        state, attrs = s.load_state(name)
        i = int(attrs["i"])
        assert name == f"ck/{i:05d}"
        assert state and all(torch.all(t == i) for t in state.values()), name
        have.add(i)
    lost = saved - have
    assert not lost, f"checkpoints whose save returned are missing: {sorted(lost)}"
    odd = [i for i in have if i % 2]
    if odd:
        tensors, meta = s.load_state_group("st")
        assert meta["i"] == max(odd) and torch.all(tensors["i"] == max(odd))
    assert s.commits() == sorted(odd)
    return len(names)


def test_200_kills_of_a_fast_appender_lose_nothing(fast_tmp, capsys):
    server = ForkServer(lean=True)
    rng = np.random.default_rng(0)
    # many small stores: every kill is followed by reading back all of its store's checkpoints
    stores = [fast_tmp / f"s{k}.h5" for k in range(41)]
    saved: dict[Path, set[int]] = {p: set() for p in stores}
    kills = 0
    for trial in range(205):
        path = stores[trial % len(stores)]
        lines, done = server.run(job="append", store=str(path), kill_after_s=float(rng.uniform(0.0, 0.05)))
        assert not [r for r in lines if "error" in r], lines
        assert done["signal"] == signal.SIGKILL
        kills += 1
        saved[path] |= {r["saved"] for r in lines if "saved" in r}
        if path.exists():
            check_appended(path, saved[path])
    total = sum(len(v) for v in saved.values())
    # every store stays appendable: one more writer appends three checkpoints to each and finishes
    for path in stores:
        s = Store(path)
        names = s.names("ck/")
        nxt = int(names[-1].split("/")[1]) + 1 if names else 0
        lines, done = server.run(job="append", store=str(path), count=nxt + 3, kill_after_s=None)
        assert done["signal"] == 0 and done["code"] == 0, lines
        got = {r["saved"] for r in lines if "saved" in r}
        assert got == {nxt, nxt + 1, nxt + 2}
        saved[path] |= got
        check_appended(path, saved[path])
    server.close()
    report(
        capsys,
        f"{kills} SIGKILLs of the appender over {len(stores)} stores, {total} checkpoints whose save "
        "returned: 0 lost, 0 altered, every store reopened and appended to",
    )


# ---------------------------------------------------------------------------- real distillations
CFG = {"epochs": 2, "save_every": 1, "probes": [], "probe_every": 0}


def contents(path: Path) -> dict:
    """Everything a store holds that an uninterrupted run fixes: every object's tensors and attrs
    (bar write times), the epochs and commits, the files, the metrics apart from wall time."""
    s = Store(path)
    out: dict = {"epochs": s.epochs, "commits": s.commits()}
    for root in ("modules", "masks", "state"):
        out[root] = {}
        for name in s.names(root=root):
            tensors, attrs = s._read_object(root, name)
            out[root][name] = tensors, {k: v for k, v in attrs.items() if k not in ("written_at", "object")}
    out["files"] = sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file() and p.name != "lock")
    m = s.metrics
    m.attrs.pop("started_at", None)  # provenance: when each process started (wall time)
    out["metrics"] = m.drop_vars("seconds")
    return out


_REFERENCE: dict[str, dict] = {}


def same_store(ref: Path, b: Path) -> None:
    """Every tensor bit for bit, the same names, metrics equal apart from wall time, one row per epoch."""
    if str(ref) not in _REFERENCE:  # the reference never changes: read once
        _REFERENCE[str(ref)] = contents(ref)
    want = _REFERENCE[str(ref)]
    got = contents(b)
    for root in ("modules", "masks", "state"):
        assert list(got[root]) == list(want[root]), root
        for name, (tb, ab) in got[root].items():
            ta, aa = want[root][name]
            assert ta.keys() == tb.keys()
            for k in ta:
                assert ta[k].dtype == tb[k].dtype and torch.equal(ta[k], tb[k]), f"{root}/{name}:{k}"
            assert aa == ab, f"{root}/{name}"
    assert got["epochs"] == want["epochs"] and got["commits"] == want["commits"]
    assert got["files"] == want["files"]  # nothing left over: no temporaries, no superseded states
    assert list(got["metrics"].epoch.values) == list(range(CFG["epochs"] + 1))  # no row missing or duplicated
    assert got["metrics"].identical(want["metrics"])


@pytest.fixture(scope="module")
def reference(server, tmp_path_factory):
    with memory_dir(tmp_path_factory.mktemp("ref")) as d:
        yield _reference(server, d / "ref.h5")


def _reference(server, path: Path) -> tuple[Path, list[str], float]:
    t0 = time.monotonic()
    lines, done = server.run(job="distill", store=str(path), cfg=CFG, log=True, kill_after_s=None)
    seconds = time.monotonic() - t0  # only to spread the random kills over a run; nothing asserts on it
    assert done["code"] == 0, lines
    return path, next(r["oplog"] for r in lines if "oplog" in r), seconds


def resume_to_end(server, path: Path) -> None:
    lines, done = server.run(job="distill", store=str(path), cfg=CFG, kill_after_s=None)
    assert done["code"] == 0 and done["signal"] == 0, lines


def test_random_kills_of_a_distillation_resume_to_the_same_store(server, reference, fast_tmp, capsys):
    ref, _, seconds = reference
    rng = np.random.default_rng(1)
    kills, runs, stores = 0, 0, 0
    while kills < 20 and runs < 100:  # stores of up to five kills each, until 20 kills landed
        path = fast_tmp / f"run{stores}.h5"
        stores += 1
        for _ in range(5):  # kills at random instants of the run, each followed by a resume
            left = 1 - (len(Store(path).commits()) / (CFG["epochs"] + 1) if path.exists() else 0)
            if left <= 0:
                break
            # drawn over about the time the resumed run still needs (a heuristic: a kill that comes too
            # late finds the run finished, which is checked the same way)
            delay = float(rng.uniform(0, seconds * left))
            lines, done = server.run(job="distill", store=str(path), cfg=CFG, kill_after_s=delay)
            runs += 1
            assert not [r for r in lines if "error" in r], lines
            if done["signal"] != signal.SIGKILL:
                break  # the run finished before its kill
            kills += 1
        resume_to_end(server, path)
        same_store(ref, path)
    report(
        capsys,
        f"{kills} SIGKILLs at random instants over {runs} runs of a distillation ({stores} stores), each "
        "resumed: final stores equal the uninterrupted run bit for bit",
    )
    assert kills >= 20


def kill_after_op(server, path: Path, k: int, want: list[int]) -> None:
    """Run the distillation on ``path`` until it dies right after its ``k``-th file operation; the
    store then holds exactly the commits ``want``, each with its student and metrics row."""
    lines, done = server.run(job="distill", store=str(path), cfg=CFG, crash_after=k, kill_after_s=None)
    assert done["signal"] == signal.SIGKILL, (k, lines)
    s = Store(path)
    assert s.commits() == want, k
    assert s.epochs == want and list(s.metrics.epoch.values) == want, k


def test_kill_between_every_file_operation_of_an_epoch_commit(server, reference, fast_tmp, capsys):
    ref, oplog, _ = reference
    # a fresh run killed right after the commits of epochs 0 and 1, each resumed; the second store
    # (epochs 0 and 1 committed, the state that epoch 1 supersedes not yet removed) is kept
    after = {e: oplog.index(f"rename commit {e}") + 1 for e in (0, 1)}  # op k counts from 1
    snapshot = fast_tmp / "after-epoch-1.h5"
    for e, k in after.items():
        path = fast_tmp / f"fresh{e}.h5"
        kill_after_op(server, path, k, list(range(e + 1)))
        if e == 1:
            shutil.copytree(path, snapshot)
        resume_to_end(server, path)
        same_store(ref, path)
    # epoch 2's commit as the run resuming from that store makes it: its file operations, logged once
    logged = fast_tmp / "logged.h5"
    shutil.copytree(snapshot, logged)
    lines, done = server.run(job="distill", store=str(logged), cfg=CFG, log=True, kill_after_s=None)
    assert done["code"] == 0, lines
    ops = next(r["oplog"] for r in lines if "oplog" in r)
    same_store(ref, logged)
    first = ops.index("mkdir pending")  # from its hidden folder to the removal of the state it supersedes
    ks = list(range(first, len(ops) + 1))  # kill after op k: just before the commit starts ... after its last op
    for k in ks:
        path = fast_tmp / f"k{k}.h5"
        shutil.copytree(snapshot, path)
        kill_after_op(server, path, k, [0, 1, 2] if k > ops.index("rename commit 2") else [0, 1])
        resume_to_end(server, path)
        same_store(ref, path)
    report(
        capsys,
        f"{len(ks) + len(after)} targeted kills: one after each of the {len(ks) - 1} file operations of epoch 2's "
        f"commit ({', '.join(ops[first:])}) and one just before it, in a run resuming after epoch 1, and one "
        "after each of the commits of epochs 0 and 1 of a fresh run; each resumed: final stores equal the "
        "uninterrupted run bit for bit",
    )
