"""Executors for sweeps: choose one from the shell, run work units, skip the ones already done.

A sweep (locality points, instability children, ...) is a list of *work units*: picklable objects
holding plain data (configs as dicts, paths, tensors), each writing its own store, with

    unit.done() -> bool     # its store is complete: nothing to compute
    unit()      -> Any      # compute (resuming its own store) and return a small result

`run_units` skips the units that are done (counted and logged), runs the others in
order in this process or through any ``concurrent.futures.Executor``, and re-raises the first
failure after cancelling what has not started; rerunning the sweep then computes only what is
missing. `open_executor` turns an ``--executor`` spec into an executor:

    dask:SCHEDULER      a running dask.distributed scheduler, e.g. dask:tcp://10.0.0.5:8786
    dask-local:N        a dask LocalCluster of N worker processes (one thread each) on this machine
    submitit:FOLDER     submitit.AutoExecutor: SLURM jobs where sbatch exists, else local processes;
                        ``submitit:FOLDER,key=value,...`` passes parameters, e.g.
                        submitit:runs/slurm,slurm_partition=gpu,timeout_min=600,gpus_per_node=1
    process:N           a pool of N local processes (spawned)
    thread:N            a pool of N threads in this process

Results do not depend on the executor; they are bit-identical to the sequential run when the
workers use as many intra-op threads as it did (dask workers use one; set ``OMP_NUM_THREADS``
for the others), and otherwise equal up to float reassociation.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

from distill.store import StoreBusy, StoreError

log = logging.getLogger("landscape.sweep")

SPECS = "dask:SCHEDULER, dask-local:N, submitit:FOLDER[,key=value...], process:N or thread:N"


class ExecutorSpecError(ValueError):
    """An ``--executor`` spec that names no usable executor (the message says what to pass)."""


@dataclass(frozen=True)
class _Busy:
    store: str
    holder: str


def _busy_as_result(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` in a submitit job; a store busy in another process comes back as a
    value (submitit turns a job's exceptions into a traceback text, which would lose it)."""
    try:
        return fn(*args, **kwargs)
    except StoreBusy as e:
        return _Busy(e.store, e.holder)


class SubmititExecutor(Executor):
    """A ``concurrent.futures.Executor`` over a submitit executor (``AutoExecutor``, ``LocalExecutor``,
    ``SlurmExecutor``): each submit is one job; its future resolves when the job ends."""

    def __init__(self, executor: Any) -> None:
        self.executor = executor
        self.jobs: list[Any] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:  # type: ignore[override]
        job = self.executor.submit(_busy_as_result, fn, *args, **kwargs)
        self.jobs.append(job)
        future: Future = Future()
        future.set_running_or_notify_cancel()
        future.job = job  # type: ignore[attr-defined]

        def wait() -> None:
            try:
                result = job.result()
            except BaseException as e:  # the job's failure, re-raised by future.result()
                future.set_exception(e)
                return
            if isinstance(result, _Busy):
                future.set_exception(StoreBusy(result.store, result.holder))
            else:
                future.set_result(result)

        threading.Thread(target=wait, daemon=True, name=f"submitit-{job.job_id}").start()
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if cancel_futures:
            for job in self.jobs:
                if not job.done():
                    with contextlib.suppress(Exception):
                        job.cancel()


def _count(spec: str, text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise ExecutorSpecError(f"--executor {spec!r}: the worker count must be a positive integer (e.g. process:4)")
    return n


def _parameters(spec: str, items: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ExecutorSpecError(f"--executor {spec!r}: submitit parameters are key=value (e.g. timeout_min=60)")
        parsed: Any = value
        for cast in (int, float):
            try:
                parsed = cast(value)
                break
            except ValueError:
                continue
        out[key.strip()] = parsed
    return out


@contextlib.contextmanager
def open_executor(spec: str | None) -> Iterator[Executor | None]:
    """The executor named by ``spec`` (see the module docstring), shut down on exit; None for
    ``None``, ``""`` or ``"none"`` (run in this process). A bad spec is a one-line
    `ExecutorSpecError` (a ValueError)."""
    if spec is None or spec.strip().lower() in ("", "none", "sequential"):
        yield None
        return
    kind, sep, rest = spec.partition(":")
    kind = kind.strip().lower()
    if not sep or not rest:
        raise ExecutorSpecError(f"--executor {spec!r} is not valid: use {SPECS}")
    if kind in ("process", "thread"):
        from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

        n = _count(spec, rest)
        if kind == "thread":
            pool: Executor = ThreadPoolExecutor(n)
        else:
            import multiprocessing

            pool = ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"))
        with pool:
            yield pool
        return
    if kind in ("dask", "dask-local"):
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise ExecutorSpecError(
                f"--executor {spec!r} needs dask.distributed: pip install 'random-teachers[distributed]'"
            ) from None
        # not the default client: this process's own dask and xarray work stays local
        if kind == "dask":
            with Client(rest, set_as_default=False) as client:
                yield client.get_executor()
            return
        n = _count(spec, rest)
        with (
            LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
            Client(cluster, set_as_default=False) as client,
        ):
            yield client.get_executor()
        return
    if kind == "submitit":
        try:
            import submitit
        except ImportError:
            raise ExecutorSpecError(f"--executor {spec!r} needs submitit: pip install submitit") from None
        folder, *params = rest.split(",")
        ex = submitit.AutoExecutor(folder=folder)
        if params:
            ex.update_parameters(**_parameters(spec, params))
        wrapped = SubmititExecutor(ex)
        try:
            yield wrapped
        finally:
            wrapped.shutdown()
        return
    raise ExecutorSpecError(f"--executor {spec!r}: unknown kind {kind!r}; use {SPECS}")


class SweepIncomplete(StoreError):
    """Some work units of a sweep are being written by another live process; the others finished."""


def run_units(
    units: Sequence[Any], executor: Executor | None = None, *, desc: str = "sweep", progress: bool | None = None
) -> tuple[list[Any], int]:
    """Run the work units that are not done; returns (results in unit order, None for the skipped
    ones; number skipped). Sequential in this process when ``executor`` is None.

    A unit whose store another live process is writing (the store's writer lock refuses this one)
    is left to that process: the other units still run, then `SweepIncomplete` names the
    busy stores in one line; a rerun once they finish skips them. Any other failure is re-raised
    at once, after cancelling what has not started."""
    todo = [i for i, u in enumerate(units) if not u.done()]
    skipped = len(units) - len(todo)
    if skipped:
        log.info("%s: %d of %d work units already complete, skipped", desc, skipped, len(units))
    results: list[Any] = [None] * len(units)
    busy: list[str] = []
    disable = None if progress is None else not progress

    def outcome(i: int, get: Callable[[], Any]) -> None:
        try:
            results[i] = get()
        except Exception as e:
            if not isinstance(e, StoreBusy):  # another live process writes this unit's store
                raise
            log.warning("%s: %s; left to it", desc, e)
            busy.append(f"{e.store} by {e.holder}")

    if executor is None:
        for k, i in enumerate(tqdm(todo, desc=desc, disable=disable), 1):
            outcome(i, units[i])
            log.info("%s: work unit %d of %d done (%d skipped as complete)", desc, k, len(todo), skipped)
    else:
        futures = {i: executor.submit(units[i]) for i in todo}
        try:
            for i in tqdm(todo, desc=desc, disable=disable):
                outcome(i, futures[i].result)
        except BaseException:
            for f in futures.values():
                f.cancel()
            raise
    if busy:
        raise SweepIncomplete(
            f"{desc}: {len(busy)} of {len(units)} work units are being written by another process "
            f"({'; '.join(busy)}): rerun the sweep when it finishes (finished units are kept and skipped)"
        )
    return results, skipped
