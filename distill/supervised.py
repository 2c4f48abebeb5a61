"""Supervised training with labels: the one small loop shared by instability and lottery tickets.

``train_supervised(model, data, cfg)`` trains a classifier in place with SGD + momentum, weight
decay, an optional linear warm-up and a step decay (x ``gamma`` at the ``milestones``), on
batches that are augmented on the device (random horizontal flip + 4-pixel padded random
crop, drawn per image). Data order and augmentation are seeded per epoch by ``cfg.data_seed``
and ``cfg.aug_seed``, independently of the global RNG, so a run is reproducible.

A run can be continued: ``train_supervised(..., start_step=k, optimizer_state=sd)`` on the model
and optimiser state of a run stopped after k steps takes the same steps k+1, k+2, ... (same
learning rates, batches and augmentation) as the uninterrupted run; ``snapshot_step=k`` returns
such a state, taken right after step k.

Example:

```python
model = with_classifier(store.student(), data.num_classes)
result = train_supervised(model, data, SupervisedConfig.preset("cpu"))
result["test_accuracy"]
```
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.bn import has_batchnorm
from distill.config import SupervisedConfig
from distill.data import Split, iterate
from distill.device import in_mode, resolve_device
from distill.loop import autocast, epoch_bar, epoch_seed, nonfinite_as_run_error, prepare_kernels
from distill.meter import EpochMeter, NonFinite
from distill.optim import set_lr, supervised_optimizer

PADDING = 4  # pixels of padding of the random crop (paper's recipe)


# ----------------------------------------------------------------------------- augmentation
def pad_crop(x: Tensor, dy: Tensor, dx: Tensor, padding: int = PADDING, fill: float | Tensor = 0.0) -> Tensor:
    """Per-image crops of a padded batch.

    Each image of ``x`` (B, C, H, W) is padded by ``padding`` pixels on every side with ``fill``
    (a scalar or one value per channel, shape (C,)); image i is then cut back to (H, W) from rows
    ``dy[i] : dy[i] + H`` and columns ``dx[i] : dx[i] + W`` of its padded version.
    ``dy``, ``dx``: integer tensors (B,) with values in [0, 2 * padding]. Returns (B, C, H, W).
    """
    b, c, h, w = x.shape
    p = int(padding)
    padded = x.new_empty((b, c, h + 2 * p, w + 2 * p))
    if isinstance(fill, Tensor):
        padded.copy_(fill.to(x.device, x.dtype).view(1, c, 1, 1).expand_as(padded))
    else:
        padded.fill_(fill)
    padded[:, :, p : p + h, p : p + w] = x
    dy, dx = dy.to(x.device, torch.long), dx.to(x.device, torch.long)
    rows = (dy.view(b, 1) + torch.arange(h, device=x.device)).view(b, 1, h, 1).expand(b, c, h, w + 2 * p)
    out = padded.gather(2, rows)
    cols = (dx.view(b, 1) + torch.arange(w, device=x.device)).view(b, 1, 1, w).expand(b, c, h, w)
    return out.gather(3, cols)


def flip(x: Tensor, mask: Tensor) -> Tensor:
    """Mirror the images of ``x`` (B, C, H, W) left-right where the bool ``mask`` (B,) is True."""
    return torch.where(mask.to(x.device).view(-1, *[1] * (x.dim() - 1)), x.flip(-1), x)


def augment(x: Tensor, generator: torch.Generator, padding: int = PADDING, fill: float | Tensor = 0.0) -> Tensor:
    """Random ``padding``-pixel padded crop, then random horizontal flip (probability 1/2), per image.

    The random numbers come from ``generator`` (a CPU generator, so results do not depend on the
    device): first B flip draws, then 2 x B crop offsets (rows, then columns).
    """
    flips, offsets = _draws(x.shape[0], generator, padding)
    return flip(pad_crop(x, offsets[0], offsets[1], padding, fill), flips)


def _epoch_draws(
    sizes: list[int], generator: torch.Generator, device: torch.device, padding: int = PADDING
) -> list[tuple[Tensor, Tensor]]:
    """`_draws` for every batch of an epoch (``sizes``: the batch sizes in order), drawn in the
    same order as batch-by-batch calls, then moved to ``device`` in one copy per kind (no per-step
    host-to-device transfer). Returns per batch (flips (B,) bool, offsets (2, B) int64)."""
    if not sizes:
        return []
    parts = [_draws(b, generator, padding) for b in sizes]
    flips = torch.cat([f for f, _ in parts]).to(device, non_blocking=True)
    offsets = torch.cat([o for _, o in parts], dim=1).to(device, non_blocking=True)
    out, start = [], 0
    for b in sizes:
        out.append((flips[start : start + b], offsets[:, start : start + b]))
        start += b
    return out


def _draws(b: int, generator: torch.Generator, padding: int = PADDING) -> tuple[Tensor, Tensor]:
    """The random numbers `augment` uses for a batch of ``b`` images: flips (B,) bool and
    crop offsets (2, B) (rows, then columns); called alone to skip a batch consistently."""
    flips = torch.rand(b, generator=generator) < 0.5
    offsets = torch.randint(0, 2 * padding + 1, (2, b), generator=generator)
    return flips, offsets


# ----------------------------------------------------------------------------- schedule
def lr_schedule(cfg: SupervisedConfig, steps_per_epoch: int) -> np.ndarray:
    """Learning rate of every optimiser step (float64, length ``cfg.epochs * steps_per_epoch``).

    ``lr * gamma ** k`` where k counts the milestones m with ``m <= completed epochs`` (as
    ``torch.optim.lr_scheduler.MultiStepLR`` stepped once per epoch: with milestones [80, 120]
    epochs 1-80 use lr, 81-120 lr * gamma, the rest lr * gamma^2), times a linear warm-up factor
    ``(step + 1) / warmup_steps`` over the first ``round(warmup_epochs * steps_per_epoch)`` steps.
    """
    total = cfg.epochs * steps_per_epoch
    completed = np.arange(total) // steps_per_epoch
    drops = np.zeros(total, dtype=np.int64)
    for m in cfg.milestones:
        drops += completed >= int(m)
    lr = cfg.lr * np.power(float(cfg.gamma), drops)
    warm = min(total, int(round(cfg.warmup_epochs * steps_per_epoch)))
    if warm:
        lr[:warm] *= (np.arange(warm) + 1) / warm
    return lr


# ----------------------------------------------------------------------------- classifier heads
def check_classifier(model: nn.Module, num_classes: int) -> None:
    """Raise ValueError unless ``model.head`` is an ``nn.Linear`` with ``num_classes`` outputs."""
    head = getattr(model, "head", None)
    if isinstance(head, nn.Linear) and head.out_features == num_classes:
        return
    spec = getattr(model, "spec", None)
    if isinstance(head, nn.Linear):
        what = f"a linear head with {head.out_features} outputs"
    elif isinstance(spec, dict) and "head" in spec:
        what = f"head={spec['head']!r}"
    else:
        what = f"head {type(head).__name__}" if head is not None else "no .head"
    raise ValueError(
        f"supervised training needs a linear classifier with {num_classes} outputs but the model has "
        f"{what}: use distill.supervised.with_classifier(model, {num_classes})"
    )


def with_classifier(model: nn.Module, num_classes: int, seed: int = 0) -> nn.Module:
    """A copy of ``model`` (a `distill.models.Model`) whose head is a fresh ``nn.Linear``
    classifier (embed_dim -> num_classes, PyTorch's default init drawn with ``seed``).

    The backbone is copied unchanged and made trainable; the copy's ``spec`` says head="linear"
    and ``num_classes``, so ``build_model(**spec)`` rebuilds its architecture.
    """
    from distill.heads import HEAD_OPTION_NAMES, build_head
    from distill.models import Model, seeded

    spec = getattr(model, "spec", None)
    source, embed_dim = getattr(model, "backbone", None), getattr(model, "embed_dim", None)
    if not isinstance(spec, dict) or not isinstance(source, nn.Module) or not isinstance(embed_dim, (int, np.integer)):
        raise ValueError("with_classifier needs a model built with distill.build_model (backbone, embed_dim, spec)")
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes={num_classes!r}: pass a positive integer")
    backbone = copy.deepcopy(source)
    with seeded(seed):
        head = build_head("linear", int(embed_dim), int(num_classes), {})
    param = next(backbone.parameters(), None)
    if param is not None:
        head = head.to(param.device)
    new_spec = {k: v for k, v in spec.items() if k not in HEAD_OPTION_NAMES}
    new_spec.update(head="linear", num_classes=int(num_classes))
    out = Model(backbone, head, int(embed_dim), new_spec)
    return out.requires_grad_(True).train(model.training)


# ----------------------------------------------------------------------------- evaluation
def fit_head(model: nn.Module, data: Any, epochs: int, seed: int = 0, device: str | torch.device = "cpu") -> nn.Module:
    """Fit ``model``'s linear head (in place) on the frozen backbone's embeddings of ``data``'s training
    split: `distill.probe.fit_linear` for ``epochs`` epochs (AdamW lr 1e-3, batch 256), as the
    reference code's ``pre_epochs_clf``. Returns ``model``."""
    from distill.probe import embed, fit_linear

    check_classifier(model, data.num_classes)
    dev = resolve_device(device)
    was = model.training
    feats = embed(cast(nn.Module, model.backbone).eval(), data.train.images, data.mean, data.std, device=dev)
    layer, _ = fit_linear(feats, data.train.labels, epochs=epochs, seed=seed, num_classes=data.num_classes, device=dev)
    head = cast(nn.Linear, model.head)
    with torch.no_grad():
        head.weight.copy_(layer.weight.to(head.weight.device))
        head.bias.copy_(layer.bias.to(head.bias.device))
    return model.train(was)


def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def evaluate(
    model: nn.Module, data: Any, split: str = "test", batch_size: int = 1000, device: str | torch.device | None = None
) -> tuple[float, float]:
    """(mean cross-entropy in nats, accuracy as a fraction) of ``model`` on ``data.<split>``.

    Runs in eval mode under ``no_grad`` in fp32 and restores the model's train/eval flag.
    ``device``: None = where the model is; otherwise the model is moved there (in place).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split={split!r}: choose 'train' or 'test'")
    dev = _model_device(model) if device is None else resolve_device(device)
    model.to(dev)
    part = getattr(data, split)
    n = len(part.labels)
    if n == 0:
        raise ValueError(f"the {split} split is empty: nothing to evaluate")
    total = torch.zeros((), dtype=torch.float64, device=dev)
    correct = torch.zeros((), dtype=torch.long, device=dev)
    with in_mode(model):
        for x, y in iterate(part, batch_size, data.mean, data.std, device=dev):
            out = model(x).float()
            total += F.cross_entropy(out, y, reduction="sum").double()
            correct += (out.argmax(1) == y).sum()
    return float(total) / n, int(correct) / n


# ----------------------------------------------------------------------------- the loop
def steps_per_epoch(model: nn.Module, n: int, batch_size: int) -> int:
    """Optimiser steps per epoch over ``n`` training images: ``ceil(n / batch_size)``, except that a
    last batch of a single image is dropped for networks with BatchNorm (``n // batch_size``)."""
    drop_last = n % batch_size == 1 and has_batchnorm(model)
    return n // batch_size if drop_last else math.ceil(n / batch_size)


def _check_step(name: str, value: Any, low: int, high: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= int(value) <= high:
        raise ValueError(
            f"{name}={value!r} must be an integer step from {low} to {high} ({what}): pass a step in that range"
        )
    return int(value)


def train_supervised(
    model: nn.Module,
    data: Any,
    cfg: SupervisedConfig,
    *,
    device: str | torch.device | None = None,
    progress: bool | None = None,
    on_step: Callable[[int, nn.Module], Any] | None = None,
    eval_every: int | None = None,
    start_step: int = 0,
    optimizer_state: Mapping[str, Any] | None = None,
    snapshot_step: int | None = None,
) -> dict[str, Any]:
    """Train ``model`` (in place, moved to the device) with labels; see the module docstring.

    Args:
        model: a classifier whose ``head`` is ``nn.Linear(D, data.num_classes)``
            (``build_model(..., head="linear", num_classes=N)`` or `with_classifier`).
        data: a `distill.data.Dataset` (uint8 images, per-channel mean/std).
        cfg: the recipe (`distill.config.SupervisedConfig`). Every epoch visits the whole
            training split once in an order drawn with ``cfg.data_seed``; the last batch may be
            smaller (196 steps per epoch for 50,000 images at batch 256), except that a last batch of a
            single image is dropped for networks with BatchNorm. Weight decay applies to all parameters.
            Crops pad with black pixels (intensity 0), as torchvision's RandomCrop(padding=4).
        device: None = ``cfg.device``; "auto" picks CUDA when present. bf16 autocast only on CUDA.
        on_step: ``on_step(step, model)`` after every optimiser step, step counted from 1 (from
            ``start_step + 1`` when continuing).
        eval_every: evaluate test accuracy every this many epochs (None: ``cfg.eval_every``; 0: only
            at the end).
        start_step: continue a run that already took this many steps (0 to ``cfg.epochs`` x steps per
            epoch): the learning-rate schedule starts at this step and the first ``start_step``
            batches of the uninterrupted run are skipped untrained, their data order and augmentation
            draws consumed, so every later batch is the same as in the uninterrupted run.
        optimizer_state: a ``torch.optim.SGD.state_dict()`` (e.g. a snapshot's ``"optimizer"``) of
            a run of a model with the same trainable parameters in the same order; its momentum
            buffers are copied into the fresh optimiser, whose hyperparameters stay ``cfg``'s.
        snapshot_step: also return the state right after this step (``start_step`` to the last
            step; ``start_step`` itself: before the first step taken here).

    Returns:
        ``{"test_accuracy", "best_test_accuracy", "test_loss" (nats), "steps",
        "start_step", "steps_per_epoch", "history": {"epoch", "train_loss", "test_accuracy", "lr"}}``;
        ``steps`` is the step count reached (``start_step`` + steps taken here). History lists have one
        entry per epoch trained here (a continued epoch's train loss covers its trained batches only;
        test accuracy NaN where not evaluated, lr of the epoch's last step); with ``start_step`` at the
        end of the recipe nothing is trained and only the final evaluation is made. With
        ``snapshot_step`` the dict also holds ``"snapshot": {"step", "model": state_dict copy,
        "optimizer": deep copy of the optimiser's state_dict}``.
        Raises RunError when the loss becomes NaN or infinite (before that step is applied).
    """
    check_classifier(model, data.num_classes)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(
            "the model has no trainable parameters (e.g. a frozen Store.teacher()): "
            "call model.requires_grad_(True) first"
        )
    dev = resolve_device(cfg.device if device is None else device)
    model.to(dev)
    train = Split(data.train.images.to(dev), data.train.labels.to(dev))
    per_epoch = steps_per_epoch(model, len(train.labels), cfg.batch_size)
    start_step, snapshot_step = _check_steps(cfg, len(train.labels), per_epoch, start_step, snapshot_step)
    lrs = lr_schedule(cfg, per_epoch)
    opt = supervised_optimizer(cfg, params, optimizer_state)
    run = _Run(model, opt, data, train, cfg, lrs, on_step, snapshot_step, start_step)
    eval_every = cfg.eval_every if eval_every is None else int(eval_every)
    history: dict[str, list] = {"epoch": [], "train_loss": [], "test_accuracy": [], "lr": []}
    first_epoch, skip = start_step // per_epoch + 1, start_step % per_epoch
    test_loss, test_acc = math.nan, math.nan
    model.train()
    bar = epoch_bar(range(first_epoch, cfg.epochs + 1), "supervised", progress)
    for epoch in bar:
        loss = run.epoch(epoch, skip if epoch == first_epoch else 0)
        acc = math.nan
        if epoch == cfg.epochs or (eval_every and epoch % eval_every == 0):
            test_loss, acc = _evaluated(model, data, dev)
            test_acc = acc
        history["epoch"].append(epoch)
        history["train_loss"].append(loss)
        history["lr"].append(float(opt.param_groups[0]["lr"]))
        history["test_accuracy"].append(acc)
        post = f"loss {loss:.4f}"
        bar.set_postfix_str(post + (f" | test acc {100 * test_acc:.2f}" if not math.isnan(test_acc) else ""))
    bar.close()
    if first_epoch > cfg.epochs:  # continued at the very end: nothing trained, evaluate as is
        test_loss, test_acc = _evaluated(model, data, dev)
    evaluated = [a for a in history["test_accuracy"] if not math.isnan(a)]
    out = {
        "test_accuracy": float(test_acc),
        "best_test_accuracy": float(max(evaluated)) if evaluated else float(test_acc),
        "test_loss": float(test_loss),
        "steps": run.step,
        "start_step": start_step,
        "steps_per_epoch": per_epoch,
        "history": history,
    }
    return out if snapshot_step is None else {**out, "snapshot": run.snapshot}


def _evaluated(model: nn.Module, data: Any, device: torch.device) -> tuple[float, float]:
    """`evaluate` on the test split, leaving ``model`` in training mode."""
    result = evaluate(model, data, "test", device=device)
    model.train()
    return result


def _check_steps(
    cfg: SupervisedConfig, n: int, per_epoch: int, start_step: int, snapshot_step: int | None
) -> tuple[int, int | None]:
    """``start_step`` and ``snapshot_step`` checked against the recipe's steps (ValueError otherwise)."""
    if per_epoch == 0:
        raise ValueError(f"the training split has {n} image(s): supervised training needs at least 2")
    total_steps = cfg.epochs * per_epoch
    what = f"{cfg.epochs} epochs x {per_epoch} steps"
    start_step = _check_step("start_step", start_step, 0, total_steps, what)
    if snapshot_step is not None:
        snapshot_step = _check_step(
            "snapshot_step", snapshot_step, start_step, total_steps, f"from start_step to the end of {what}"
        )
    return start_step, snapshot_step


class _Run:
    """The epochs of a supervised run: its optimiser steps, counted in ``step`` (from ``start``), the
    snapshot taken right after ``snapshot_step`` and ``on_step(step, model)`` after every step."""

    def __init__(
        self,
        model: nn.Module,
        opt: torch.optim.Optimizer,
        data: Any,
        train: Split,
        cfg: SupervisedConfig,
        lrs: np.ndarray,
        on_step: Callable[[int, nn.Module], Any] | None,
        snapshot_step: int | None,
        start: int,
    ) -> None:
        self.model, self.opt, self.data, self.train, self.cfg, self.lrs = model, opt, data, train, cfg, lrs
        self.on_step, self.snapshot_step, self.step = on_step, snapshot_step, start
        self.device = train.images.device
        # black (0-intensity) padding, expressed in normalised units
        self.fill = torch.tensor([-m / s for m, s in zip(data.mean, data.std)], dtype=torch.float32, device=self.device)
        self.amp = autocast(cfg.precision, self.device)
        self.gen = torch.Generator()
        self.channels_last = prepare_kernels(self.device, model)
        self.snapshot = self.snap() if snapshot_step == start else None

    def snap(self) -> dict[str, Any]:
        """The step count, and copies of the model's and the optimiser's states."""
        return {
            "step": self.step,
            "model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            "optimizer": copy.deepcopy(self.opt.state_dict()),
        }

    def epoch(self, epoch: int, skip: int) -> float:
        """Train epoch ``epoch`` but its first ``skip`` batches (their data order and augmentation
        draws consumed untrained); the mean cross-entropy (nats) of its trained batches, 0 if none."""
        n, bs = len(self.train.labels), self.cfg.batch_size
        drop_last = n % bs == 1 and has_batchnorm(self.model)
        self.gen.manual_seed(epoch_seed(self.cfg.aug_seed, epoch))
        batches = iterate(
            self.train,
            bs,
            self.data.mean,
            self.data.std,
            shuffle=True,
            seed=epoch_seed(self.cfg.data_seed, epoch),
            drop_last=drop_last,
            device=self.device,
            channels_last=self.channels_last,
        )
        sizes = [min(bs, n - k) for k in range(0, n - (n % bs if drop_last else 0), bs)]
        # the epoch's flip and crop draws, made batch by batch exactly as augment() would, moved in one copy
        draws = _epoch_draws(sizes, self.gen, self.device) if self.cfg.augment == "flip_crop" else None
        meter = EpochMeter(self.device, check_every=1 if self.on_step is not None else None)
        with nonfinite_as_run_error(self._failure):
            for index, (x, y) in enumerate(batches):
                if index < skip:  # taken before start_step: same draws, no training
                    continue
                if draws is not None:
                    flips, offsets = draws[index]
                    x = flip(pad_crop(x, offsets[0], offsets[1], PADDING, self.fill), flips)
                    if self.channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                self._step(x, y, meter)
            return meter.epoch_means().get("loss", 0.0)

    def _step(self, x: Tensor, y: Tensor, meter: EpochMeter) -> None:
        set_lr(self.opt, float(self.lrs[self.step]))
        with self.amp:
            out = self.model(x)
        loss = F.cross_entropy(out.float(), y)
        meter.add("loss", loss, self.step, weight=len(y))  # on the CPU (or with on_step): raises before the update
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.step += 1
        if self.step == self.snapshot_step:
            self.snapshot = self.snap()
        if self.on_step is not None:
            self.on_step(self.step, self.model)

    def _failure(self, bad: NonFinite) -> str:
        per_epoch = steps_per_epoch(self.model, len(self.train.labels), self.cfg.batch_size)
        return (
            f"supervised loss became {bad.value} at epoch {bad.step // per_epoch + 1}, step "
            f"{bad.step + 1} (lr {self.lrs[bad.step]:g}): lower the learning rate or use a warm-up"
        )
