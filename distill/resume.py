"""A distillation run's state in its store: opening or creating the store, committing an epoch
(checkpoint, training state, metrics) and restoring the state to resume from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from distill.config import DistillConfig
from distill.history import History
from distill.losses import DistillationLoss
from distill.optim import Optimizer, load_state_tensors, make_optimizer, state_tensors
from distill.registry import canonical_dataset
from distill.store import Store, StoreError, load_into, student_name

if TYPE_CHECKING:
    import xarray

# fields that may change when a run is resumed or extended
RESUMABLE = {
    "epochs",
    "save_every",
    "save_epochs",
    "resume_every",
    "probe_every",
    "device",
    "dynamics",
    "dynamics_examples",
    "compile",
    "store_dtype",
}


@dataclass
class TrainingState:
    """What a distillation run carries from epoch to epoch: the student and its optimiser, the
    teacher (trained too when it is an EMA of the student), the loss (its center) and the metrics."""

    student: nn.Module
    teacher: nn.Module
    opt: Optimizer
    loss: DistillationLoss
    history: History


def open_or_create(
    cfg: DistillConfig, out: Path, resume: bool, prov: dict[str, Any] | None = None
) -> tuple[Store, bool]:
    """The store at ``out`` open for writing, and whether it existed (then with ``cfg``'s run in it,
    up to the `RESUMABLE` fields); a new one (with provenance ``prov``) otherwise."""
    if out.exists():
        if not resume:
            raise StoreError(f"{out} already exists: pass another --out, or resume it (the default)")
        store = Store(out, "a", store_dtype=cfg.store_dtype)
        old = dict(store.config)
        if isinstance(old.get("dataset"), str):  # stores written before names were stored canonically
            old["dataset"] = canonical_dataset(old["dataset"])
        diff = [k for k, v in cfg.to_dict().items() if k not in RESUMABLE and k in old and old[k] != v]
        if diff:  # every differing setting named, in one line
            was = ", ".join(f"{k}={old[k]!r}" for k in diff)
            now = ", ".join(f"{k}={getattr(cfg, k)!r}" for k in diff)
            raise StoreError(f"{out} holds a run with {was}, not {now}: choose another --out to start a new run")
        return store, True
    seeds = {k: getattr(cfg, k) for k in ("seed", "noise_seed", "data_seed", "aug_seed", "probe_seed")}
    return Store.create(
        out, cfg.to_dict(), kind="distill", seeds=seeds, store_dtype=cfg.store_dtype, provenance=prov
    ), False


def restore(run: TrainingState, cfg: DistillConfig, store: Store, resumed: bool, world: Any) -> int | None:
    """Load into ``run`` the training state of the newest commit of ``store`` that holds one (older
    ones are deleted after each commit) and roll the store back to it: the epoch it resumes after.
    None for a fresh run, whose teacher is then saved."""
    out, device = store.path, world.device
    found = store.load_state_group("train") if resumed else None
    if found is None:
        if resumed and store.epochs:
            raise StoreError(f"{out} has students but no training state to resume from: choose another --out")
        world.barrier()
        store.rollback(-1)
        store.save_module("teacher", run.teacher, {"epoch": 0, "bn_mode": cfg.teacher_bn})
        return None
    tensors, meta = found
    start = int(meta["epoch"])
    exact = {k[6:]: v for k, v in tensors.items() if k.startswith("model/")}
    if exact:  # half-precision checkpoints, or a state between saved students: the full-precision copy
        load_into(run.student, exact, where=f"{out}:state/train")
        run.student.train()
    else:
        run.student = store.student(start, device).train()
    world.prepare(run.student)
    run.opt = make_optimizer(cfg, run.student)
    load_state_tensors(run.opt, {k[4:]: v for k, v in tensors.items() if k.startswith("opt/")}, meta["param_groups"])
    if cfg.ema_teacher:
        from distill.train import set_teacher_mode

        run.teacher = store.load_module("teacher_ema", device)
        ema = {k[4:]: v for k, v in tensors.items() if k.startswith("ema/")}
        if ema:
            load_into(run.teacher, ema, where=f"{out}:state/train")
        set_teacher_mode(run.teacher, cfg.teacher_bn)
        world.prepare(run.teacher)
    if run.loss.center is not None:
        run.loss.center = tensors["center"].to(device)
    fresh, run.history = run.history, History.from_dataset(store.metrics, start)
    run.history.provenance = fresh.provenance
    if fresh.dynamics is not None:
        fresh.dynamics.load(store.metrics, start)
        run.history.dynamics = fresh.dynamics
    world.barrier()  # every rank has read what it resumes from before rank 0 writes
    store.rollback(start)  # epochs after the resumable one are trained again
    return start


def commit_epoch(
    run: TrainingState, cfg: DistillConfig, store: Store, epoch: int, step: int, metrics: xarray.Dataset
) -> None:
    """One epoch, one commit: the student (when ``epoch`` is a saved one), the state resuming after
    it (when due; ``step`` optimiser steps done) and ``metrics`` become visible together, or not at
    all. Between saved students the state alone is saved every ``resume_every`` epochs, with the
    student's weights in it."""
    save = epoch in saved_epochs(cfg)
    between = not save and cfg.resume_every > 0 and epoch % cfg.resume_every == 0
    with store.commit(epoch):
        if save or between:
            if save:
                store.save_module(student_name(epoch), run.student, {"epoch": epoch, "step": step})
            if cfg.ema_teacher:
                store.save_module("teacher_ema", run.teacher, {"epoch": epoch})
            tensors, groups = state_tensors(run.opt)
            tensors = {f"opt/{k}": v for k, v in tensors.items()}
            if run.loss.center is not None:
                tensors["center"] = run.loss.center
            if cfg.store_dtype != "fp32" or between:
                tensors.update(_prefixed("model/", run.student))
                if cfg.ema_teacher:
                    tensors.update(_prefixed("ema/", run.teacher))
            store.save_state("train", tensors, {"epoch": epoch, "param_groups": groups})
        store.write_result("metrics", metrics)


def saved_epochs(cfg: DistillConfig) -> set[int]:
    """The epochs whose student is saved: 0, every ``save_every``, the ``save_epochs`` and the last."""
    every = set(range(cfg.save_every, cfg.epochs + 1, cfg.save_every)) if cfg.save_every else set()
    return {0, cfg.epochs} | every | {int(e) for e in cfg.save_epochs}


def _prefixed(prefix: str, model: nn.Module) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in model.state_dict().items()}
