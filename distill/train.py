"""The distillation loop: a frozen random teacher, a student trained to match its outputs.

``distill(cfg, out)`` builds teacher and student, saves both into an HDF5 store, trains,
probes at the configured epochs, and resumes from the last saved epoch when ``out``
already holds a run of the same configuration. `train_one_epoch` is one epoch of steps; the
objective is `distill.losses`, the optimiser and learning rates `distill.optim`, the metrics
`distill.history`, the store's training state `distill.resume` and the probes `distill.probing`.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn

from distill.config import DistillConfig
from distill.data import Dataset, iterate, load_dataset, normalize, shuffled_order
from distill.device import resolve_device

# the imports marked noqa: F401 are names distill.train offers, from the modules of its parts
from distill.history import History, distillation_gain, probed_accuracy, summary_table  # noqa: F401
from distill.init import init_student
from distill.loop import autocast, epoch_bar, epoch_seed, nonfinite_as_run_error, prepare_kernels  # noqa: F401
from distill.losses import (  # noqa: F401
    DistillationLoss,
    EntropyLog,
    cross_entropy_from_log_probs,
    cross_entropy_to_probs,
    distillation_loss,
    distillation_terms,
    student_log_probs,
    teacher_probs,
)
from distill.meter import EpochMeter, NonFinite
from distill.models import build_model, seeded
from distill.multicrop import multicrop
from distill.optim import lr_schedule, make_optimizer, set_lr  # noqa: F401
from distill.probing import EpochProbes, backbone_of, probe_dataset, recalibrated_teacher, run_probes  # noqa: F401
from distill.resume import TrainingState, commit_epoch, open_or_create, restore
from distill.store import Store

# a step's forward pass: (loss, teacher logits still needed, student and teacher embeddings or None)
StepOutput = tuple[Tensor, list[Tensor], Tensor | None, Tensor | None]
Forward = Callable[[Tensor], StepOutput]


# ---------------------------------------------------------------------------- pieces
def build_teacher(cfg: DistillConfig, in_shape: tuple[int, ...]) -> nn.Module:
    """The random teacher, drawn with ``cfg.seed`` (independent of the global RNG)."""
    with seeded(cfg.seed):
        return build_model(
            cfg.arch,
            in_shape,
            head="dino",
            out_dim=cfg.out_dim,
            hidden_dim=cfg.hidden_dim,
            bottleneck_dim=cfg.bottleneck_dim,
            last_layer=cfg.last_layer,
            **cfg.arch_options,
        )


def set_teacher_mode(teacher: nn.Module, bn_mode: str) -> nn.Module:
    """Freeze the teacher; ``eval``: BN uses its running statistics; ``train``: batch statistics,
    running statistics left untouched (momentum 0)."""
    teacher.requires_grad_(False)
    if bn_mode == "eval":
        return teacher.eval()
    teacher.train()
    for m in teacher.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = 0.0
    return teacher


def epoch_steps(n: int, batch_size: int, drop_last: bool) -> int:
    """Optimiser steps per epoch over ``n`` images: floor(n / b) with ``drop_last``, else ceil(n / b),
    less a final batch of a single image (BatchNorm cannot normalise one sample)."""
    if drop_last:
        return max(1, n // batch_size)
    return max(1, -(-n // batch_size) - (1 if n % batch_size == 1 and n > 1 else 0))


def _head(model: nn.Module) -> nn.Module:
    """``model.head`` of a `Model`."""
    return cast(nn.Module, model.head)


def input_stats(cfg: DistillConfig, data: Dataset) -> Dataset:
    """``data`` normalised as ``cfg.input_stats`` says: its measured statistics, or the reference code's
    fixed constants where it has them (CIFAR-10; other datasets keep the measured ones)."""
    from distill.config import REFERENCE_INPUT_STATS

    if cfg.input_stats != "reference":
        return data
    base = data.name.split(":")[-1].split("[")[0]  # gaussian:cifar10 and class splits cifar10[0,1] too
    if base not in REFERENCE_INPUT_STATS:
        return data
    mean, std = REFERENCE_INPUT_STATS[base]
    return dataclasses.replace(data, mean=mean, std=std)


def _validate_run(cfg: DistillConfig, data: Dataset) -> nn.Module:
    """What can fail before training, checked before the store is touched (the configuration itself,
    probes included, is validated when it is built): a training set holding at least one batch, and
    the teacher's architecture (returned, built)."""
    n = len(data.train.labels)
    if cfg.drop_last and n < cfg.batch_size:
        raise ValueError(
            f"the training set holds {n} images, fewer than batch_size={cfg.batch_size} with "
            "drop_last: no batch to train on; lower --batch-size, raise --subset or pass --no-drop-last"
        )
    _check_memory(cfg, data.in_shape)
    try:
        return build_teacher(cfg, data.in_shape)
    except TypeError as e:
        raise ValueError(
            f"arch={cfg.arch!r} with arch_options={cfg.arch_options}: {e}; check the options "
            "the architecture takes (distill.list_models())"
        ) from None


def _check_memory(cfg: DistillConfig, in_shape: tuple[int, ...]) -> None:
    """A one-line ValueError, before any memory is allocated, when the teacher, the student and the
    optimiser's two moments would not fit in this machine's memory (the teacher counted on the meta
    device)."""
    try:
        with torch.device("meta"):
            meta = build_teacher(cfg, in_shape)
    except Exception:  # noqa: BLE001 - an architecture that cannot be built on meta is checked when built
        return
    n = sum(t.numel() for t in meta.state_dict().values())
    need = 4 * n * 4  # fp32 teacher, student and two Adam moments
    try:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    if need > have:
        raise ValueError(
            f"arch={cfg.arch!r} with out_dim={cfg.out_dim}, hidden_dim={cfg.hidden_dim} and arch_options="
            f"{json.dumps(cfg.arch_options)} has {n:,} parameters, needing about {need / 1e9:.0f} GB for teacher, "
            f"student and optimiser, more than this machine's {have / 1e9:.0f} GB: choose smaller sizes"
        )


def distill(
    cfg: DistillConfig,
    out: str | Path,
    *,
    data: Dataset | None = None,
    resume: bool = True,
    progress: bool | None = None,
    tensorboard: str | Path | None = None,
) -> Store:
    """Distil a student from a random teacher; returns the `Store` at ``out``.

    The store receives the teacher, the student at epoch 0, every ``save_every`` epochs and
    at the end, the training state for resuming, and the ``metrics`` Dataset (dims epoch,
    model, probe). An existing ``out`` with the same configuration is resumed from its last
    saved epoch (extending ``epochs`` is allowed). A NaN or infinite loss raises RunError;
    what was saved before stays intact.

    Progress: a tqdm bar on a terminal, else one ``logging`` line per epoch; either way one
    JSON-lines record per epoch beside the store (`distill.progress`), and TensorBoard
    scalars in ``tensorboard`` (a folder) when given. Under ``torchrun`` the run is data-parallel
    (`distill.ddp`): rank 0 writes the store and probes; the store records the world size.
    """
    from distill import ddp

    out = Path(out)
    world = ddp.from_env(resolve_device(cfg.device))
    world.check_batch(cfg.batch_size)
    early = None
    if resume and (out.exists() or out.is_symlink()):  # the writer lock before any data or model: a busy store
        early = world.open_store(lambda: open_or_create(cfg, out, resume), out)  # is refused at once
    try:
        return _distill(cfg, out, world, early, data, resume, progress, tensorboard)
    finally:
        if early is not None:
            early[0].close()


def _distill(
    cfg: DistillConfig,
    out: Path,
    world: Any,
    early: tuple[Store, bool] | None,
    data: Dataset | None,
    resume: bool,
    progress: bool | None,
    tensorboard: str | Path | None,
) -> Store:
    """`distill` once the store, when it exists, is open for writing (``early``)."""
    from distill.provenance import provenance

    device = world.device
    if data is None:
        data = load_dataset(cfg.dataset, root=cfg.data_root, subset=cfg.subset, seed=cfg.data_seed)
    if not cfg.drop_last and len(data.train.labels) % cfg.batch_size:  # the last, partial batch splits too
        world.check_batch(
            len(data.train.labels) % cfg.batch_size,
            what="the last partial batch",
            fix="use --drop-last or a --subset that makes it divisible",
        )
    data = input_stats(cfg, data)
    pdata = probe_dataset(cfg, data)
    teacher = _validate_run(cfg, data).to(device)
    prov = provenance(cfg, kind="distill", device=device, precision=cfg.precision, world_size=world.world_size)
    store, resumed = early or world.open_store(lambda: open_or_create(cfg, out, resume, prov), out)
    try:
        _train(cfg, out, store, resumed, teacher, data, pdata, world, prov, progress, tensorboard)
    finally:
        store.close()  # releases the writer lock
    world.close()
    return Store(out)


def _train(
    cfg: DistillConfig,
    out: Path,
    store: Store,
    resumed: bool,
    teacher: nn.Module,
    data: Dataset,
    pdata: Dataset,
    world: Any,
    prov: dict[str, Any],
    progress: bool | None,
    tensorboard: str | Path | None,
) -> None:
    """The loop of `distill`; every epoch ends in one commit of the store (student checkpoint
    when due, the training state that resumes after it, the metrics up to it)."""
    from distill.progress import EpochReporter

    device = world.device
    run = _new_run(cfg, teacher, data, device, world, prov)
    restored = restore(run, cfg, store, resumed, world)
    start = restored or 0
    steps = epoch_steps(len(data.train.labels), cfg.batch_size, cfg.drop_last)
    lrs = lr_schedule(cfg, steps)
    bar = epoch_bar(
        range(start + 1, cfg.epochs + 1), cfg.run_name, progress if world.is_main else False, start, cfg.epochs
    )
    log_lines = bool(bar.disable)  # no progress bar: a log line per epoch, and probes announced after epoch 0
    report = EpochReporter(
        out, cfg.run_name, cfg.epochs, start, enabled=world.is_main, log_lines=log_lines, tensorboard=tensorboard
    )
    probes = EpochProbes(cfg, pdata, device, world.is_main, announce_later=log_lines)
    end_epoch = _EpochEnd(cfg, run, store, probes, report, steps)
    if restored is None:  # a fresh start (a resume from epoch 0 has its commit already)
        norms = _initial_norms(cfg, run, data, device)
        end_epoch(0, time.perf_counter(), loss=np.nan, kl=np.nan, **norms)  # epoch 0: the probes' time
    amp = autocast(cfg.precision, device)
    channels_last = prepare_kernels(device, run.teacher, run.student)
    train_split = data.train.to(device)  # uint8 on the device: batches are sliced and normalised there
    entropy = EntropyLog(cfg, run.teacher, train_split, data, device, amp, channels_last)
    aug_gen = torch.Generator()
    # the teacher's logits are needed after the step only for the centre or a per-step entropy
    forward = _forward(cfg, run, world, amp, aug_gen, keep_logits=run.loss.center is not None or not entropy.fixed)
    if start < cfg.epochs:
        entropy.prepare()
    run.student.train()
    diverged = functools.partial(_diverged, steps=steps, out=out, store=store)
    for epoch in bar:
        t0 = time.perf_counter()
        aug_gen.manual_seed(epoch_seed(cfg.aug_seed, epoch))
        seed = epoch_seed(cfg.data_seed, epoch)
        batches = iterate(
            train_split,
            cfg.batch_size,
            data.mean,
            data.std,
            shuffle=True,
            seed=seed,
            drop_last=cfg.drop_last,
            device=device,
            with_index=True,
            channels_last=channels_last,
        )
        with nonfinite_as_run_error(diverged):
            means = train_one_epoch(run, forward, batches, epoch, steps, lrs, cfg, world, entropy)
        visited = shuffled_order(len(train_split), seed, train_split.images.device)[: steps * cfg.batch_size]
        loss, kl = run.loss.logged(means.get("loss", math.nan), entropy.epoch_mean(means, visited))
        s_norm, t_norm = means.get("student_norm", math.nan), means.get("teacher_norm", math.nan)
        end_epoch(epoch, t0, loss=loss, kl=kl, student_norm=s_norm, teacher_norm=t_norm)
        bar.set_postfix_str(f"loss {loss:.6f} kl {kl:.2e}{end_epoch.last_probe}")
    bar.close()
    report.close()


def _diverged(bad: NonFinite, steps: int, out: Path, store: Store) -> str:
    """What a RunError says when the loss became ``bad.value`` at global step ``bad.step``."""
    return (
        f"loss became {bad.value} at epoch {bad.step // steps + 1}, step {bad.step % steps}: "
        f"lower --lr, raise --adam-eps or use --warmup-epochs; "
        f"{out} keeps the checkpoints up to epoch {max(store.epochs)}"
    )


class _EpochEnd:
    """The end of an epoch: its probes when due, its metrics recorded, its commit, its report."""

    def __init__(
        self, cfg: DistillConfig, run: TrainingState, store: Store, probes: EpochProbes, report: Any, steps: int
    ) -> None:
        self.cfg, self.run, self.store, self.probes, self.report, self.steps = cfg, run, store, probes, report, steps
        every = set(range(cfg.probe_every, cfg.epochs + 1, cfg.probe_every)) if cfg.probe_every else set()
        self.probe_at = {0, cfg.epochs} | every
        self.last_probe = ""  # the student's last probe accuracies, for the progress bar

    def __call__(self, epoch: int, t0: float, **values: float) -> None:
        """End ``epoch``, begun at ``t0`` (``time.perf_counter``); ``values`` as `History.record` takes."""
        run = self.run
        if epoch in self.probe_at:
            self.probes(epoch, run.teacher, run.student, run.history)
            if epoch > 0 and epoch in run.history.probes:
                p = run.history.probes[epoch]["student"]
                self.last_probe = " | student " + " ".join(f"{k} {100 * v:.1f}" for k, v in p.items())
        run.history.record(epoch, run.student, run.teacher, seconds=time.perf_counter() - t0, **values)
        metrics = run.history.to_dataset(self.cfg, self.probes.device, len(self.probes.pdata.train.labels))
        commit_epoch(run, self.cfg, self.store, epoch, epoch * self.steps, metrics)
        self.report.record(epoch, run.history)


def _new_run(
    cfg: DistillConfig, teacher: nn.Module, data: Dataset, device: torch.device, world: Any, prov: dict[str, Any]
) -> TrainingState:
    """A run before its first step: the student drawn from the teacher, its optimiser, the loss and
    the metrics (with the training dynamics' examples when ``cfg.dynamics``)."""
    student = init_student(
        teacher,
        cfg.init,
        alpha=cfg.alpha,
        eps=cfg.eps,
        seed=cfg.noise_seed,
        scope=cfg.init_scope,
        eps_rescale=cfg.eps_rescale,
    ).to(device)
    set_teacher_mode(teacher, cfg.teacher_bn)
    world.prepare(teacher, student)
    opt = make_optimizer(cfg, student)
    history = History(provenance=prov)
    if cfg.dynamics:
        from distill.dynamics import DynamicsRecorder

        g = torch.Generator().manual_seed(cfg.probe_seed)
        idx = torch.randperm(len(data.train.labels), generator=g)[: cfg.dynamics_examples]
        examples = normalize(data.train.images[idx].to(device), data.mean, data.std)
        history.dynamics = DynamicsRecorder(examples, backbone_of(teacher))
    return TrainingState(student, teacher, opt, DistillationLoss.from_config(cfg).to(device), history)


def _initial_norms(cfg: DistillConfig, run: TrainingState, data: Dataset, device: torch.device) -> dict[str, float]:
    """Mean embedding norms of student and teacher on the first batch, before training."""
    with torch.no_grad():  # on a copy: a train-mode forward would move the student's BN statistics
        x0 = normalize(data.train.images[: cfg.batch_size].to(device), data.mean, data.std)
        s_norm = backbone_of(copy.deepcopy(run.student).train())(x0).norm(dim=1).mean().item()
        t_norm = backbone_of(run.teacher)(x0).norm(dim=1).mean().item()
    return {"student_norm": s_norm, "teacher_norm": t_norm}


def _forward(
    cfg: DistillConfig, run: TrainingState, world: Any, amp: Any, aug_gen: torch.Generator, keep_logits: bool
) -> Forward:
    """A step's forward pass on a global batch (under ``amp``), on this rank's share of it: one view,
    compiled when ``cfg.compile``, or DINO's multicrop views drawn with ``aug_gen``."""
    teacher, student, objective = run.teacher, run.student, run.loss

    def one_view(x: Tensor) -> StepOutput:
        # The teacher's softmax is taken before the student's forward and its logits are dropped
        # when not needed, so neither coexists with the student's saved activations (peak memory).
        with torch.no_grad():
            t_emb = backbone_of(teacher)(x)
            t_logits = _head(teacher)(t_emb)
            pt = objective.targets(t_logits)
            t_outs = [t_logits] if keep_logits else []
            del t_logits
        emb = backbone_of(student)(x)
        # the logits are freed once their log-softmax exists (they are not needed for the gradient)
        return objective(pt, objective.log_probs(_head(student)(emb))), t_outs, emb, t_emb

    def views(x: Tensor) -> StepOutput:
        crops = [world.shard(v) for v in multicrop(x, cfg.global_crops, cfg.local_crops, aug_gen)]
        with torch.no_grad():
            t_outs = [teacher(v) for v in crops[: cfg.global_crops]]
        return objective.multicrop(t_outs, [student(v) for v in crops]), t_outs, None, None

    step = torch.compile(one_view) if cfg.compile else one_view

    def forward(x: Tensor) -> StepOutput:
        with amp, world.step():  # views drawn for the global batch, then this rank's share
            return views(x) if cfg.augment == "multicrop" else step(world.shard(x))

    return forward


def train_one_epoch(
    run: TrainingState,
    forward: Forward,
    batches: Iterable[tuple[Tensor, ...]],
    epoch: int,
    steps: int,
    lrs: np.ndarray,
    cfg: DistillConfig,
    world: Any,
    entropy: EntropyLog,
) -> dict[str, float]:
    """The ``steps`` optimiser steps of epoch ``epoch`` (from 1) on ``batches`` (global batches, with
    image indices), the learning rate of step k being ``lrs[k]``. Returns the epoch's means over the
    global batch: ``loss`` (cross-entropy, nats), ``entropy`` (teacher entropy, nats, when taken per
    step), ``student_norm`` and ``teacher_norm`` (embeddings, one view only). Raises `NonFinite`."""
    student, teacher, objective, opt = run.student, run.teacher, run.loss, run.opt
    meter = EpochMeter(world.device)
    for i, (x, _, _idx) in enumerate(batches):
        if i >= steps:  # a last batch of one image (BN cannot train on it) is skipped
            break
        step = (epoch - 1) * steps + i
        set_lr(opt, float(lrs[min(step, len(lrs) - 1)]))
        loss, t_outs, emb, t_emb = forward(x)
        meter.add("loss", loss, step, weight=x.shape[0])  # per-image mean; on the CPU this raises here
        opt.zero_grad(set_to_none=True)
        loss.backward()
        # gradients (and the teacher mean for the center) averaged over the ranks of a data-parallel
        # run; unchanged in one process
        t_mean = t_outs[0].detach().float().mean(0) if objective.center is not None and t_outs else None
        (t_mean,) = world.average_gradients(student, t_mean)
        if cfg.clip_grad:
            nn.utils.clip_grad_norm_(student.parameters(), cfg.clip_grad)
        opt.step()
        opt.zero_grad(set_to_none=True)  # gradients freed before the next forward (peak memory)
        with torch.no_grad():
            entropy.observe(meter, objective, t_outs, step, x.shape[0])
            if emb is not None and t_emb is not None:
                meter.add("student_norm", emb.float().norm(dim=1).mean(), step)
                meter.add("teacher_norm", t_emb.float().norm(dim=1).mean(), step)
            if cfg.ema_teacher:
                for pt, ps in zip(teacher.parameters(), student.parameters()):
                    pt.mul_(cfg.ema_momentum).add_(ps.detach(), alpha=1 - cfg.ema_momentum)
            objective.update_center(t_mean)
    means = meter.epoch_means()  # one host read per epoch; checks that every loss was finite
    return dict(zip(means, world.mean(list(means.values()))))  # this rank's share -> global batch
