"""A fork server for the store's kill tests: imports torch and the toolkit once, then forks one
writer process per request and SIGKILLs it after a given delay (or lets it finish).

Requests (one JSON object per line on stdin): {"job": "append"|"distill"|"hold", "store": PATH,
"kill_after_s": float or null (counted from when the job reports that its work starts), ...}.
Replies (JSON lines on stdout): what the writer reports
({"saved": i}, {"oplog": [...]}, {"error": "..."}), then {"done": pid, "signal": n, "code": n}.
Forking keeps each writer's start-up to milliseconds, so hundreds of kills fit in seconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
torch.set_num_threads(1)

import distill  # noqa: E402
from distill.store import Store, fsio  # noqa: E402

LEAN = "--lean" in sys.argv  # only the appender: no training code, a smaller process forks faster


def say(**kw: object) -> None:
    sys.stdout.write(json.dumps(kw) + "\n")
    sys.stdout.flush()


def tiny_model(i: int) -> torch.nn.Module:
    m = distill.build_model("mlp", (1, 4, 4), head=None, widths=[8])
    with torch.no_grad():
        for p in m.parameters():
            p.fill_(i)
    return m


READY_FD = -1


def ready() -> None:
    """Tell the server that the job's work starts now (its kill delay counts from here)."""
    os.write(READY_FD, b"r")


def append(req: dict) -> None:
    """Append checkpoints as fast as possible: even i on their own, odd i in an epoch commit with
    a training state that holds i."""
    path = Path(req["store"])
    s = Store(path, "a") if path.exists() else Store.create(path)
    names = s.names("ck/")
    i = int(names[-1].split("/")[1]) + 1 if names else 0
    ready()
    while True:
        if i % 2 == 0:
            s.save_module(f"ck/{i:05d}", tiny_model(i), {"i": i})
        else:
            with s.commit(i):
                s.save_module(f"ck/{i:05d}", tiny_model(i), {"i": i})
                s.save_state("st", {"i": torch.full((3,), i)}, {"i": i})
        say(saved=i)
        i += 1
        if req.get("count") and i >= req["count"]:
            return


def job_distill(req: dict) -> None:
    from distill.train import distill as run_distill
    from tests.distill.test_train import synthetic, tiny_cfg

    if req.get("crash_after") is not None or req.get("log"):
        fsio.crash_after(req.get("crash_after"), log=bool(req.get("log")))
    if req.get("lockstep"):
        lockstep(Path(req["lockstep"]))
    ready()
    run_distill(tiny_cfg(**req["cfg"]), req["store"], data=synthetic(), progress=False)
    if req.get("log"):
        say(oplog=fsio.OPLOG)


def lockstep(acks: Path) -> None:
    """After each epoch's commit, wait until a reader has finished a whole poll that started after
    it (the reader writes its poll count to ``acks``): every commit is then seen by a reader,
    however fast the run and however slow the reader's polls on a busy machine."""
    from distill.store import core

    def polls() -> int:
        try:
            return int(acks.read_text() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    plain = core.Store.commit

    @contextlib.contextmanager
    def commit(self, epoch):  # type: ignore[no-untyped-def]
        with plain(self, epoch) as s:
            yield s
        n, deadline = polls(), time.monotonic() + 300  # the deadline only keeps a broken reader from hanging CI
        while polls() < n + 2 and time.monotonic() < deadline:
            time.sleep(0.005)

    core.Store.commit = commit  # type: ignore[method-assign]


def hold(req: dict) -> None:
    path = Path(req["store"])
    s = Store(path, "a") if path.exists() else Store.create(path, {"held": True})
    ready()
    say(locked=os.getpid(), store=str(s.path))
    time.sleep(3600)


JOBS = {"append": append, "distill": job_distill, "hold": hold}


def main() -> None:
    global READY_FD
    from distill.store import objects

    with tempfile.TemporaryDirectory() as tmp:  # first-call costs paid before forking
        objects.write_object(Path(tmp) / "w.h5", "warm-up", tiny_model(0).state_dict(), {})
    if not LEAN:
        with tempfile.TemporaryDirectory() as tmp:  # (lazy imports of xarray, h5netcdf, the models...)
            READY_FD = os.open(os.devnull, os.O_WRONLY)
            job_distill({"cfg": {"epochs": 1, "probes": []}, "store": str(Path(tmp) / "warm.h5")})
            _ = Store(Path(tmp) / "warm.h5").metrics
    say(ready=os.getpid())
    for line in sys.stdin:
        req = json.loads(line)
        r_fd, w_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r_fd)
            READY_FD = w_fd
            code = 0
            try:
                JOBS[req["job"]](req)
            except BaseException as e:  # noqa: BLE001 - reported to the test
                say(error=f"{type(e).__name__}: {e}")
                code = 1
            sys.stdout.flush()
            os._exit(code)
        os.close(w_fd)
        os.read(r_fd, 1)  # the job started its work (or died before: end of file)
        os.close(r_fd)
        delay = req.get("kill_after_s")
        t0 = time.monotonic()
        while True:
            got, status = os.waitpid(pid, os.WNOHANG)
            if got:
                break
            if delay is not None and time.monotonic() - t0 >= delay:
                os.kill(pid, signal.SIGKILL)
                _, status = os.waitpid(pid, 0)
                break
            time.sleep(0.001)
        say(
            done=pid,
            signal=os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0,
            code=os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1,
        )


if __name__ == "__main__":
    main()
