"""The distillation loop: a frozen random teacher, a student trained to match its outputs.

``distill(cfg, out)`` builds teacher and student, saves both into an HDF5 store, trains,
probes at the configured epochs, and resumes from the last saved epoch when ``out``
already holds a run of the same configuration.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from distill.bn import has_batchnorm, recalibrate_bn
from distill.config import DistillConfig, RunError
from distill.data import Dataset, Split, iterate, load_dataset, normalize, shuffled_order
from distill.device import has_conv2d, resolve_device
from distill.init import init_student, parameter_distance
from distill.meter import EpochMeter, NonFinite
from distill.models import build_model, seeded
from distill.optim import Adam, AdamW
from distill.registry import canonical_dataset
from distill.store import Store, StoreError, load_into, student_name

note = logging.getLogger("distill.progress")  # what a long step is about to do (before it starts)

if TYPE_CHECKING:
    import xarray

# what make_optimizer returns: the same step/zero_grad/state_dict/load_state_dict/param_groups
Optimizer = Adam | torch.optim.SGD

MODELS = ("teacher", "teacher_bn", "student", "input")
# fields that may change when a run is resumed or extended
_RESUMABLE = {
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


def distillation_terms(
    t_out: torch.Tensor,
    s_out: torch.Tensor,
    teacher_temp: float = 1.0,
    student_temp: float = 1.0,
    center: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch means of the cross-entropy H(p_t, p_s) and of the teacher entropy H(p_t), in nats.

    p_t = softmax((t_out - center) / teacher_temp), p_s = softmax(s_out / student_temp);
    t_out, s_out: (B, K) logits. KL(p_t || p_s) = H(p_t, p_s) - H(p_t).
    """
    # at least fp32 (bf16 logits under autocast), fp64 kept
    t = t_out.to(torch.promote_types(t_out.dtype, torch.float32))
    s = s_out.to(torch.promote_types(s_out.dtype, torch.float32))
    if center is not None:
        t = t - center
    log_pt = F.log_softmax(t / teacher_temp, dim=-1)
    log_ps = F.log_softmax(s / student_temp, dim=-1)
    pt = log_pt.exp()
    return -(pt * log_ps).sum(-1).mean(), -(pt * log_pt).sum(-1).mean()


def distillation_loss(
    t_out: torch.Tensor,
    s_out: torch.Tensor,
    teacher_temp: float = 1.0,
    student_temp: float = 1.0,
    center: torch.Tensor | None = None,
    kind: str = "ce",
) -> torch.Tensor:
    """Mean over the batch of H(p_t, p_s) (``ce``) or KL(p_t || p_s) (``kl``); same gradient.

    ``ce`` computes only the cross-entropy (what the gradient needs); ``kl`` also the teacher entropy.
    """
    if kind == "kl":
        ce, ent = distillation_terms(t_out, s_out, teacher_temp, student_temp, center)
        return ce - ent
    return soft_cross_entropy(t_out, s_out, teacher_temp, student_temp, center)


def soft_cross_entropy(
    t_out: torch.Tensor,
    s_out: torch.Tensor,
    teacher_temp: float = 1.0,
    student_temp: float = 1.0,
    center: torch.Tensor | None = None,
) -> torch.Tensor:
    """Batch mean of H(p_t, p_s) in nats, computing nothing else: one softmax of the teacher (no
    gradient) and torch's fused cross-entropy with probability targets. Logits (B, K), at least fp32."""
    return cross_entropy_to_probs(teacher_probs(t_out, teacher_temp, center), s_out, student_temp)


def teacher_probs(t_out: torch.Tensor, teacher_temp: float = 1.0, center: torch.Tensor | None = None) -> torch.Tensor:
    """p_t = softmax((t_out - center) / teacher_temp) (B, K), at least fp32, without gradient."""
    with torch.no_grad():
        t = t_out.to(torch.promote_types(t_out.dtype, torch.float32))
        if center is not None:
            t = t - center
        return F.softmax(t / teacher_temp if teacher_temp != 1.0 else t, dim=-1)


def cross_entropy_to_probs(pt: torch.Tensor, s_out: torch.Tensor, student_temp: float = 1.0) -> torch.Tensor:
    """Batch mean of H(p_t, softmax(s_out / student_temp)) in nats; ``pt`` (B, K) probabilities.

    The value and gradient of ``F.cross_entropy(s_out / student_temp, pt)``, bit for bit."""
    return cross_entropy_from_log_probs(pt, student_log_probs(s_out, student_temp))


def student_log_probs(s_out: torch.Tensor, student_temp: float = 1.0) -> torch.Tensor:
    """log softmax(s_out / student_temp) (B, K), at least fp32, as ``F.cross_entropy`` takes it."""
    s = s_out.to(torch.promote_types(s_out.dtype, torch.float32))
    s = s / student_temp if student_temp != 1.0 else s
    return F.log_softmax(s, dim=1, dtype=s.dtype)


def cross_entropy_from_log_probs(pt: torch.Tensor, log_ps: torch.Tensor) -> torch.Tensor:
    """Batch mean of -sum_k pt log_ps, the operations (and so the numbers and the gradient) of
    ``F.cross_entropy`` with probability targets after its log-softmax; (B, K) each."""
    # F.cross_entropy computes exactly this after its log_softmax, but as one call it keeps the
    # student's logits alive beside the log-probabilities and the product (64 MiB each at 256 x
    # 65,536): taking the log-softmax first lets the caller drop the logits before the product.
    return -(log_ps * pt).sum() / (log_ps.numel() // log_ps.shape[1])


def teacher_entropy(t_out: torch.Tensor, teacher_temp: float = 1.0, center: torch.Tensor | None = None) -> torch.Tensor:
    """Per-example entropy H(p_t) in nats (B,), float64 accumulation of fp32 logits (B, K)."""
    t = t_out.to(torch.promote_types(t_out.dtype, torch.float32))
    if center is not None:
        t = t - center
    log_pt = F.log_softmax(t / teacher_temp, dim=-1)
    return -(log_pt.exp() * log_pt).sum(-1).double()


def lr_schedule(cfg: DistillConfig, steps_per_epoch: int) -> np.ndarray:
    """Learning rate for every step, precomputed: linear warm-up, then constant or cosine to 0."""
    total = cfg.epochs * steps_per_epoch
    warm = int(round(cfg.warmup_epochs * steps_per_epoch))
    lr = np.full(total, cfg.lr, dtype=np.float64)
    if warm:
        lr[:warm] = cfg.lr * (np.arange(warm) + 1) / warm
    if cfg.schedule == "cosine" and total > warm:
        t = np.arange(total - warm) / max(1, total - warm)
        lr[warm:] = cfg.lr * 0.5 * (1 + np.cos(np.pi * t))
    return lr


def make_optimizer(cfg: DistillConfig, model: nn.Module) -> Optimizer:
    """Optimiser with two parameter groups: weights, and biases/norm parameters (1-d tensors).

    Adam and AdamW are `distill.optim`'s (torch's update and state format, without the
    150 MiB import of ``torch._dynamo`` that ``torch.optim.Optimizer`` makes); SGD is torch's."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    other = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    nb = cfg.weight_decay if cfg.norm_bias_decay is None else cfg.norm_bias_decay
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": other, "weight_decay": nb}]
    if cfg.optimizer == "adamw":
        return AdamW(groups, lr=cfg.lr, eps=cfg.adam_eps)
    if cfg.optimizer == "adam":  # L2 penalty in the gradient, as torch's Adam
        return Adam(groups, lr=cfg.lr, eps=cfg.adam_eps)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)


def _opt_tensors(opt: Optimizer) -> tuple[dict[str, torch.Tensor], list]:
    sd = opt.state_dict()
    tensors = {
        f"{i}/{k}": (v if torch.is_tensor(v) else torch.tensor(v))
        for i, st in sd["state"].items()
        for k, v in st.items()
    }
    groups = [{k: v for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, groups


def _load_opt(opt: Optimizer, tensors: dict[str, torch.Tensor], groups: list) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        i, k = key.split("/", 1)
        state.setdefault(int(i), {})[k] = t
    opt.load_state_dict({"state": state, "param_groups": groups})


def multicrop(
    x: torch.Tensor, n_global: int, n_local: int, generator: torch.Generator, local_size: int | None = None
) -> list[torch.Tensor]:
    """DINO-style views of a batch (B, C, H, W): per-image random resized crops (scale 0.4-1 for
    global views at full size, 0.05-0.4 for local views at ~3/7 size) and random horizontal flips,
    done for the whole batch at once with ``torchvision.ops.roi_align``."""
    from torchvision.ops import roi_align

    b, _, h, w = x.shape
    views = []
    local_size = local_size or max(4, round(h * 3 / 7))
    for i in range(n_global + n_local):
        lo, hi, size = (0.4, 1.0, h) if i < n_global else (0.05, 0.4, local_size)
        area = (lo + (hi - lo) * torch.rand(b, generator=generator)) * h * w
        logr = math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * torch.rand(b, generator=generator)
        ratio = torch.exp(logr)
        cw = torch.sqrt(area * ratio).clamp(1, w)
        ch = torch.sqrt(area / ratio).clamp(1, h)
        x0 = torch.rand(b, generator=generator) * (w - cw)
        y0 = torch.rand(b, generator=generator) * (h - ch)
        boxes = torch.stack([torch.arange(b, dtype=torch.float32), x0, y0, x0 + cw, y0 + ch], 1).to(x)
        v = roi_align(x, boxes, output_size=size, spatial_scale=1.0, sampling_ratio=2, aligned=True)
        flip = (torch.rand(b, generator=generator) < 0.5).to(x.device)
        views.append(torch.where(flip[:, None, None, None], v.flip(-1), v))
    return views


def epoch_steps(n: int, batch_size: int, drop_last: bool) -> int:
    """Optimiser steps per epoch over ``n`` images: floor(n / b) with ``drop_last``, else ceil(n / b),
    less a final batch of a single image (BatchNorm cannot normalise one sample)."""
    if drop_last:
        return max(1, n // batch_size)
    return max(1, -(-n // batch_size) - (1 if n % batch_size == 1 and n > 1 else 0))


# ---------------------------------------------------------------------------- probes
def probe_dataset(cfg: DistillConfig, data: Dataset) -> Dataset:
    """Real images to probe on: the FULL training split of the dataset (as the paper), whatever
    ``cfg.subset`` is; a stratified ``cfg.probe_subset`` of it only when that is set explicitly.
    For Gaussian-noise runs the source dataset's real images."""
    n = cfg.probe_subset
    if cfg.dataset.startswith("gaussian"):
        source = cfg.dataset.split(":", 1)[1] if ":" in cfg.dataset else "cifar10"
        return load_dataset(source, root=cfg.data_root, subset=n, seed=cfg.probe_seed)
    if n is None:
        return data if cfg.subset is None else load_dataset(cfg.dataset, root=cfg.data_root)
    if n == len(data.train.labels) and n == cfg.subset:
        return data
    return load_dataset(cfg.dataset, root=cfg.data_root, subset=n, seed=cfg.probe_seed)


def run_probes(
    cfg: DistillConfig, backbone: nn.Module | None, data: Dataset, device: torch.device, seed: int | None = None
) -> dict[str, float]:
    """All configured probes on ``backbone``'s embedding (raw pixels when ``backbone`` is None);
    ``seed`` overrides ``cfg.probe_seed``."""
    from distill import probe

    kw = probe_options(cfg, seed)
    if backbone is None:
        return probe.probe_input(data, **kw)
    return probe.probe_model(backbone, data, device=device, **kw)


def probe_options(cfg: DistillConfig, seed: int | None = None) -> dict[str, Any]:
    """The keyword arguments of `distill.probe.probe_features` that ``cfg`` sets (``seed``
    overrides ``cfg.probe_seed``)."""
    return dict(
        probes=tuple(cfg.probes),
        knn_k=cfg.knn_k,
        knn_metric=cfg.knn_metric,
        knn_weighted=cfg.knn_metric == "cosine",
        linear_epochs=cfg.linear_epochs,
        linear_weight_decay=cfg.probe_weight_decay,
        linear_reshuffle=cfg.probe_reshuffle,
        until_convergence=cfg.probe_converge,
        seed=cfg.probe_seed if seed is None else seed,
    )


def recalibrated_teacher(
    teacher: nn.Module, data: Dataset, cfg: DistillConfig, device: torch.device, max_batches: int = 50
) -> nn.Module:
    """The teacher's weights with BN running statistics re-estimated on training data (no training)."""
    t = copy.deepcopy(teacher)
    if has_batchnorm(t):
        batches = (
            x
            for i, (x, _) in enumerate(
                iterate(
                    data.train,
                    cfg.batch_size,
                    data.mean,
                    data.std,
                    shuffle=True,
                    seed=cfg.probe_seed,
                    device=device,
                    channels_last=has_conv2d(t),
                )
            )
            if i < max_batches
        )
        recalibrate_bn(t, batches)
    return t.eval()


def use_channels_last(device: torch.device, model: nn.Module) -> bool:
    """Channels-last memory format for training: on CUDA, for networks with 2-d convolutions."""
    return device.type == "cuda" and has_conv2d(model)


class _EntropyLog:
    """The teacher entropy H(p_t) behind the logged KL = H(p_t, p_s) - H(p_t); never in the gradient.

    When the teacher's output for an image cannot change during the run (frozen teacher with BN in
    eval mode, no centering, no EMA, one view: the paper's setup), each training image's entropy is
    computed once per process, in one teacher pass over the training split before the first
    epoch, and an epoch's mean is taken over exactly the images that epoch visited: the logged KL
    is then the same as a per-step computation (up to float rounding) at no cost per step.
    Otherwise it is computed at every step from the logits the step already has.
    """

    def __init__(
        self,
        cfg: DistillConfig,
        teacher: nn.Module,
        split: Split,
        data: Dataset,
        device: torch.device,
        autocast: Any,
        channels_last: bool,
    ):
        self.cfg, self.teacher, self.split, self.data = cfg, teacher, split, data
        self.device, self.autocast, self.channels_last = device, autocast, channels_last
        self.fixed = not cfg.ema_teacher and not cfg.center and cfg.augment == "none" and cfg.teacher_bn == "eval"
        self.per_image: torch.Tensor | None = None

    def prepare(self) -> None:
        """The one teacher pass (fixed case only); called before the first timed epoch."""
        if not self.fixed or self.per_image is not None:
            return
        parts = []
        with torch.no_grad(), self.autocast:
            for x, _ in iterate(
                self.split,
                self.cfg.batch_size,
                self.data.mean,
                self.data.std,
                device=self.device,
                channels_last=self.channels_last,
            ):
                parts.append(teacher_entropy(self.teacher(x), self.cfg.teacher_temp))
        self.per_image = torch.cat(parts)

    def observe(
        self, meter: EpochMeter, t_out: torch.Tensor | None, center: torch.Tensor | None, step: int, weight: int = 1
    ) -> None:
        if not self.fixed and t_out is not None:
            meter.add("entropy", teacher_entropy(t_out, self.cfg.teacher_temp, center).mean(), step, weight=weight)

    def epoch_mean(self, means: dict[str, float], visited: torch.Tensor) -> float:
        """Mean teacher entropy (nats) over the epoch's steps; ``visited``: the epoch's image indices."""
        if self.fixed and self.per_image is not None:
            return float(self.per_image[visited.to(self.per_image.device)].mean())
        return means.get("entropy", math.nan)


# ---------------------------------------------------------------------------- metrics
def _probe_interval(cfg: DistillConfig) -> str:
    """What the probed epochs of ``cfg`` are, and what that means for a best over epochs (metrics attrs)."""
    every = f"every {cfg.probe_every} epochs" if cfg.probe_every else "at epoch 0 and the last epoch only"
    n = 1 + (cfg.epochs // cfg.probe_every + (cfg.epochs % cfg.probe_every > 0) if cfg.probe_every else 1)
    seeds = "a fresh probe seed each (probe_seed + epoch)" if cfg.probe_reseed else "one probe seed"
    return (
        f"probes {every} ({n} probed epochs of {cfg.epochs}, {seeds}); a best over epochs is a maximum over "
        f"these {n} fits, where the reference code probes every epoch ({cfg.epochs + 1} fits)"
    )


@dataclass
class History:
    """Per-epoch records, turned into the store's ``metrics`` Dataset."""

    epochs: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)
    student_norm: list[float] = field(default_factory=list)
    teacher_norm: list[float] = field(default_factory=list)
    distance: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    probes: dict[int, dict[str, dict[str, float]]] = field(default_factory=dict)
    dynamics: Any = None  # a distill.dynamics.DynamicsRecorder when cfg.dynamics
    provenance: dict[str, Any] = field(default_factory=dict)  # distill.provenance keys, added to the attrs

    def to_dataset(self, cfg: DistillConfig, device: torch.device, n_probe: int = 0) -> xarray.Dataset:
        """The metrics Dataset (dims epoch, model, probe) that the store holds as ``metrics``."""
        import xarray as xr

        import distill

        probes = list(cfg.probes)
        acc = np.full((len(self.epochs), len(MODELS), len(probes)), np.nan)
        for i, e in enumerate(self.epochs):
            for j, m in enumerate(MODELS):
                for k, p in enumerate(probes):
                    acc[i, j, k] = self.probes.get(e, {}).get(m, {}).get(p, np.nan)

        def var(values: list[float], long_name: str, units: str) -> Any:
            return ("epoch", np.asarray(values, dtype=np.float64), {"long_name": long_name, "units": units})

        extra, extra_coords = ({}, {}) if self.dynamics is None else self.dynamics.variables(self.epochs, MODELS)
        return xr.Dataset(
            {
                **extra,
                "accuracy": (("epoch", "model", "probe"), acc, {"long_name": "probe accuracy", "units": "fraction"}),
                "loss": var(self.loss, "distillation loss (mean over the epoch)", "nats"),
                "kl": var(self.kl, "KL(teacher || student) (mean over the epoch)", "nats"),
                "student_norm": var(self.student_norm, "student embedding L2 norm (mean)", "1"),
                "teacher_norm": var(self.teacher_norm, "teacher embedding L2 norm (mean)", "1"),
                "distance": var(self.distance, "parameter distance student - teacher (L2)", "1"),
                "seconds": var(self.seconds, "wall time of the epoch (epoch 0: its probes)", "s"),
            },
            coords={
                "epoch": np.asarray(self.epochs, dtype=np.int64),
                "model": list(MODELS),
                "probe": probes,
                **extra_coords,
            },
            attrs={
                "config": cfg.to_json(),
                "toolkit_version": distill.__version__,
                "torch_version": str(torch.__version__),
                "device": str(device),
                "precision": cfg.precision,
                "recipe": cfg.recipe,
                "probe_train_images": int(n_probe),
                "models": "teacher: random teacher as used in distillation; teacher_bn: teacher weights with BN "
                "statistics re-estimated on training data; student; input: raw pixels",
                "epoch_0": "before any training",
                "probe_interval": _probe_interval(cfg),
                **self.provenance,
            },
        )

    @classmethod
    def from_dataset(cls, ds: Any, upto: int) -> History:
        """The history of epochs <= ``upto`` restored from a stored metrics Dataset (to resume)."""
        ds = ds.sel(epoch=ds.epoch <= upto)
        h = cls(epochs=[int(e) for e in ds.epoch.values])
        for name in ("loss", "kl", "student_norm", "teacher_norm", "distance", "seconds"):
            setattr(h, name, [float(v) for v in ds[name].values])
        for e in h.epochs:
            row = ds.accuracy.sel(epoch=e)
            got = {
                str(m): {
                    str(p): float(row.sel(model=m, probe=p))
                    for p in ds.probe.values
                    if not np.isnan(row.sel(model=m, probe=p))
                }
                for m in ds.model.values
            }
            if any(got.values()):
                h.probes[e] = got
        return h


# ---------------------------------------------------------------------------- the loop
def _open_or_create(
    cfg: DistillConfig, out: Path, resume: bool, prov: dict[str, Any] | None = None
) -> tuple[Store, bool]:
    if out.exists():
        if not resume:
            raise StoreError(f"{out} already exists: pass another --out, or resume it (the default)")
        store = Store(out, "a", store_dtype=cfg.store_dtype)
        old = dict(store.config)
        if isinstance(old.get("dataset"), str):  # stores written before names were stored canonically
            old["dataset"] = canonical_dataset(old["dataset"])
        diff = [k for k, v in cfg.to_dict().items() if k not in _RESUMABLE and k in old and old[k] != v]
        if diff:
            k = diff[0]
            raise StoreError(
                f"{out} holds a run with {k}={old[k]!r}, not {getattr(cfg, k)!r}: "
                f"choose another --out to start a new run"
            )
        return store, True
    seeds = {k: getattr(cfg, k) for k in ("seed", "noise_seed", "data_seed", "aug_seed", "probe_seed")}
    return Store.create(
        out, cfg.to_dict(), kind="distill", seeds=seeds, store_dtype=cfg.store_dtype, provenance=prov
    ), False


def _backbone(model: nn.Module) -> nn.Module:
    """``model.backbone`` of a `Model` (torch types module attributes loosely)."""
    return cast(nn.Module, model.backbone)


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
        early = world.open_store(lambda: _open_or_create(cfg, out, resume), out)  # is refused at once
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
    store, resumed = early or world.open_store(lambda: _open_or_create(cfg, out, resume, prov), out)
    try:
        _train(cfg, out, store, resumed, teacher, data, pdata, device, progress, world, prov, tensorboard)
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
    device: torch.device,
    progress: bool | None,
    world: Any,
    prov: dict[str, Any],
    tensorboard: str | Path | None = None,
) -> None:
    """The loop of `distill`; every epoch ends in one commit of the store (student checkpoint
    when due, the training state that resumes after it, the metrics up to it)."""
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
    center = torch.zeros(cfg.out_dim, device=device) if cfg.center else None
    steps_per_epoch = epoch_steps(len(data.train.labels), cfg.batch_size, cfg.drop_last)
    lrs = lr_schedule(cfg, steps_per_epoch)
    start, history = 0, History(provenance=prov)
    dynamics = None
    if cfg.dynamics:
        from distill.dynamics import DynamicsRecorder

        g = torch.Generator().manual_seed(cfg.probe_seed)
        idx = torch.randperm(len(data.train.labels), generator=g)[: cfg.dynamics_examples]
        dynamics = DynamicsRecorder(
            normalize(data.train.images[idx].to(device), data.mean, data.std), _backbone(teacher)
        )
        history.dynamics = dynamics

    # the training state of the newest commit that holds one (older ones are deleted after each commit)
    state = store.load_state_group("train") if resumed else None
    if state is not None:
        tensors, meta = state
        start = int(meta["epoch"])
        exact = {k[6:]: v for k, v in tensors.items() if k.startswith("model/")}
        if exact:  # half-precision checkpoints, or a state between saved students: the full-precision copy
            load_into(student, exact, where=f"{out}:state/train")
            student.train()
        else:
            student = store.student(start, device).train()
        world.prepare(student)
        opt = make_optimizer(cfg, student)
        _load_opt(opt, {k[4:]: v for k, v in tensors.items() if k.startswith("opt/")}, meta["param_groups"])
        if cfg.ema_teacher:
            teacher = store.load_module("teacher_ema", device)
            ema = {k[4:]: v for k, v in tensors.items() if k.startswith("ema/")}
            if ema:
                load_into(teacher, ema, where=f"{out}:state/train")
            set_teacher_mode(teacher, cfg.teacher_bn)
            world.prepare(teacher)
        if center is not None:
            center = tensors["center"].to(device)
        history = History.from_dataset(store.metrics, start)
        history.provenance = prov
        if dynamics is not None:
            dynamics.load(store.metrics, start)
            history.dynamics = dynamics
        world.barrier()  # every rank has read what it resumes from before rank 0 writes
        store.rollback(start)  # epochs after the resumable one are trained again
    elif resumed and store.epochs:
        raise StoreError(f"{out} has students but no training state to resume from: choose another --out")
    else:
        world.barrier()
        store.rollback(-1)
    if not resumed or state is None:
        store.save_module("teacher", teacher, {"epoch": 0, "bn_mode": cfg.teacher_bn})

    fixed: dict[str, dict[str, float]] = {}  # teacher / teacher_bn / input probes (fixed unless EMA)
    # probe_reseed (the reference code): the frozen teachers are probed again at every probed epoch with
    # that epoch's seed, on embeddings computed once, so their best over epochs is the code's number
    frozen_features: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    n_probe = (len(pdata.train.labels), len(pdata.test.labels))
    announce = {"later_epochs": True}  # after epoch 0 only without a progress bar (not to break it)

    def say(epoch: int, what: str, embed: bool = True) -> None:
        """Announce a long step (probing embeds every probe image) before it starts."""
        if epoch > 0 and not announce["later_epochs"]:
            return
        images = f", embedding {n_probe[0]:,} + {n_probe[1]:,} images" if embed else ""
        note.info(f"{cfg.run_name} epoch {epoch}: probing the {what} ({', '.join(cfg.probes)}{images})")

    def probe_epoch(epoch: int) -> None:
        if not cfg.probes or not world.is_main:
            return
        seed = cfg.probe_seed + epoch if cfg.probe_reseed else None
        if cfg.probe_reseed and not cfg.ema_teacher:
            from distill.probe import embed_splits, probe_features

            say(
                epoch,
                "teacher" + (" and the BN-recalibrated teacher" if has_batchnorm(teacher) else ""),
                embed=not frozen_features,
            )
            if not frozen_features:
                frozen_features["teacher"] = embed_splits(_backbone(teacher), pdata, device=device)
                if has_batchnorm(teacher):
                    t_bn = _backbone(recalibrated_teacher(teacher, pdata, cfg, device))
                    frozen_features["teacher_bn"] = embed_splits(t_bn, pdata, device=device)
            for name in ("teacher", "teacher_bn"):
                feats = frozen_features.get(name, frozen_features["teacher"])
                fixed[name] = probe_features(*feats, device=device, **probe_options(cfg, seed))
        elif not fixed or cfg.ema_teacher:
            say(epoch, "teacher")
            fixed["teacher"] = run_probes(cfg, _backbone(teacher), pdata, device)
            if has_batchnorm(teacher):
                say(epoch, "BN-recalibrated teacher")
            fixed["teacher_bn"] = (
                run_probes(cfg, _backbone(recalibrated_teacher(teacher, pdata, cfg, device)), pdata, device)
                if has_batchnorm(teacher)
                else fixed["teacher"]
            )
        if "input" not in fixed:
            say(epoch, "input (raw pixels)", embed=False)
            fixed["input"] = run_probes(cfg, None, pdata, device)
        say(epoch, "student")
        was = student.training
        student.eval()
        history.probes[epoch] = {**fixed, "student": run_probes(cfg, _backbone(student), pdata, device, seed)}
        student.train(was)

    def measure(epoch: int, loss: float, kl: float, s_norm: float, t_norm: float, seconds: float) -> None:
        history.epochs.append(epoch)
        history.loss.append(float(loss))
        history.kl.append(float(kl))
        history.student_norm.append(s_norm)
        history.teacher_norm.append(t_norm)
        history.distance.append(parameter_distance(student, teacher))
        history.seconds.append(seconds)
        if dynamics is not None:
            dynamics.measure(epoch, teacher, student)

    def commit(epoch: int, save: bool) -> None:
        """One epoch, one commit: the student and the state resuming after it (when due) and the
        metrics up to ``epoch`` become visible together, or not at all. Between saved students the
        state alone is saved every ``resume_every`` epochs, with the student's weights in it."""
        between = not save and cfg.resume_every > 0 and epoch % cfg.resume_every == 0
        with store.commit(epoch):
            if save or between:
                if save:
                    store.save_module(student_name(epoch), student, {"epoch": epoch, "step": epoch * steps_per_epoch})
                if cfg.ema_teacher:
                    store.save_module("teacher_ema", teacher, {"epoch": epoch})
                tensors, groups = _opt_tensors(opt)
                tensors = {f"opt/{k}": v for k, v in tensors.items()}
                if center is not None:
                    tensors["center"] = center
                if cfg.store_dtype != "fp32" or between:
                    tensors.update({f"model/{k}": v for k, v in student.state_dict().items()})
                    if cfg.ema_teacher:
                        tensors.update({f"ema/{k}": v for k, v in teacher.state_dict().items()})
                store.save_state("train", tensors, {"epoch": epoch, "param_groups": groups})
            store.write_result("metrics", history.to_dataset(cfg, device, len(pdata.train.labels)))

    from distill.progress import EpochReporter

    bar = tqdm(
        range(start + 1, cfg.epochs + 1),
        desc=cfg.run_name,
        unit="epoch",
        disable=(None if progress is None else not progress) if world.is_main else True,
        initial=start,
        total=cfg.epochs,
    )
    report = EpochReporter(
        out,
        cfg.run_name,
        cfg.epochs,
        start,
        enabled=world.is_main,
        log_lines=bool(bar.disable),
        tensorboard=tensorboard,
    )
    announce["later_epochs"] = bool(bar.disable)
    if state is None:  # a fresh start (a resume from epoch 0 has its commit already)
        with torch.no_grad():  # on a copy: a train-mode forward would move the student's BN statistics
            x0 = normalize(data.train.images[: cfg.batch_size].to(device), data.mean, data.std)
            s_norm = _backbone(copy.deepcopy(student).train())(x0).norm(dim=1).mean().item()
            t_norm = _backbone(teacher)(x0).norm(dim=1).mean().item()
        t0 = time.perf_counter()
        probe_epoch(0)
        measure(0, np.nan, np.nan, s_norm, t_norm, time.perf_counter() - t0)  # epoch 0: the probes' time
        commit(0, True)
        report.record(0, history)

    save_at = set(range(cfg.save_every, cfg.epochs + 1, cfg.save_every)) if cfg.save_every else set()
    save_at |= {int(e) for e in cfg.save_epochs} | {cfg.epochs}
    probe_at = set(range(cfg.probe_every, cfg.epochs + 1, cfg.probe_every)) if cfg.probe_every else set()
    probe_at |= {cfg.epochs}

    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if cfg.precision == "bf16" and device.type == "cuda"
        else torch.autocast("cpu", enabled=False)
    )
    channels_last = use_channels_last(device, student)
    if channels_last:
        teacher.to(memory_format=torch.channels_last)
        student.to(memory_format=torch.channels_last)
    if device.type == "cuda" and not torch.are_deterministic_algorithms_enabled():
        torch.backends.cudnn.benchmark = True
    train_split = data.train.to(device)  # uint8 on the device: batches are sliced and normalised there
    entropy = _EntropyLog(cfg, teacher, train_split, data, device, autocast, channels_last)

    # The teacher's logits are needed after the step only for the centre or a per-step entropy.
    keep_logits = center is not None or not entropy.fixed

    def forward(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
        # The teacher's softmax is taken before the student's forward and its logits are dropped
        # when not needed, so neither coexists with the student's saved activations (peak memory).
        with torch.no_grad():
            t_emb = _backbone(teacher)(x)
            t_logits = _head(teacher)(t_emb)
            pt = teacher_probs(t_logits, cfg.teacher_temp, center)
            t_out = t_logits if keep_logits else None
            del t_logits
        emb = _backbone(student)(x)
        # the logits are freed once their log-softmax exists (they are not needed for the gradient)
        log_ps = student_log_probs(_head(student)(emb), cfg.student_temp)
        loss = cross_entropy_from_log_probs(pt, log_ps)
        return loss, t_out, emb, t_emb

    step_forward = torch.compile(forward) if cfg.compile else forward
    if start < cfg.epochs:
        entropy.prepare()
    aug_gen = torch.Generator()
    student.train()
    last_probe = ""
    for epoch in bar:
        t0 = time.perf_counter()
        meter = EpochMeter(device)
        aug_gen.manual_seed(cfg.aug_seed * 1_000_003 + epoch)
        seed = cfg.data_seed * 1_000_003 + epoch
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
        step = (epoch - 1) * steps_per_epoch
        t_out: torch.Tensor | None
        try:
            for i, (x, _, _idx) in enumerate(batches):
                if i >= steps_per_epoch:  # a last batch of one image (BN cannot train on it) is skipped
                    break
                step = (epoch - 1) * steps_per_epoch + i
                for group in opt.param_groups:
                    group["lr"] = float(lrs[min(step, len(lrs) - 1)])
                with autocast, world.step():
                    if cfg.augment == "multicrop":  # views drawn for the global batch, then this rank's share
                        views = [world.shard(v) for v in multicrop(x, cfg.global_crops, cfg.local_crops, aug_gen)]
                        with torch.no_grad():
                            t_outs = [teacher(v) for v in views[: cfg.global_crops]]
                        s_outs = [student(v) for v in views]
                        terms = [
                            soft_cross_entropy(t, s, cfg.teacher_temp, cfg.student_temp, center)
                            for ti, t in enumerate(t_outs)
                            for si, s in enumerate(s_outs)
                            if si != ti
                        ]
                        loss = torch.stack(terms).mean()
                        with torch.no_grad():  # each global view's teacher is in the same number of pairs
                            meter.add(
                                "entropy",
                                torch.stack(
                                    [teacher_entropy(t, cfg.teacher_temp, center).mean() for t in t_outs]
                                ).mean(),
                                step,
                                weight=x.shape[0],
                            )
                        t_out, emb, t_emb = t_outs[0], None, None
                    else:
                        loss, t_out, emb, t_emb = step_forward(world.shard(x))
                # per-image mean; on the CPU this raises here, before the update
                meter.add("loss", loss, step, weight=x.shape[0])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                # gradients (and the teacher mean for the center) averaged over the ranks of a
                # data-parallel run; unchanged in one process
                (t_mean,) = world.average_gradients(
                    student, t_out.detach().float().mean(0) if center is not None and t_out is not None else None
                )
                if cfg.clip_grad:
                    nn.utils.clip_grad_norm_(student.parameters(), cfg.clip_grad)
                opt.step()
                opt.zero_grad(set_to_none=True)  # gradients freed before the next forward (peak memory)
                with torch.no_grad():
                    if emb is not None and t_emb is not None:
                        entropy.observe(meter, t_out, center, step, x.shape[0])
                        meter.add("student_norm", emb.float().norm(dim=1).mean(), step)
                        meter.add("teacher_norm", t_emb.float().norm(dim=1).mean(), step)
                    if cfg.ema_teacher:
                        for pt, ps in zip(teacher.parameters(), student.parameters()):
                            pt.mul_(cfg.ema_momentum).add_(ps.detach(), alpha=1 - cfg.ema_momentum)
                    if center is not None:
                        center.mul_(cfg.center_momentum).add_(t_mean, alpha=1 - cfg.center_momentum)
            means = meter.epoch_means()  # one host read per epoch; checks that every loss was finite
            means = dict(zip(means, world.mean(list(means.values()))))  # this rank's share -> global batch
        except NonFinite as bad:
            raise RunError(
                f"loss became {bad.value} at epoch {bad.step // steps_per_epoch + 1}, step "
                f"{bad.step % steps_per_epoch}: lower --lr, raise --adam-eps or use --warmup-epochs; "
                f"{out} keeps the checkpoints up to epoch {max(store.epochs)}"
            ) from None
        ce = means.get("loss", math.nan)
        ent = entropy.epoch_mean(
            means, shuffled_order(len(train_split), seed, train_split.images.device)[: steps_per_epoch * cfg.batch_size]
        )
        kl = ce - ent
        if epoch in probe_at and cfg.probes and world.is_main:
            probe_epoch(epoch)
            p = history.probes[epoch]["student"]
            last_probe = " | student " + " ".join(f"{k} {100 * v:.1f}" for k, v in p.items())
        bar.set_postfix_str(f"loss {kl if cfg.loss == 'kl' else ce:.6f} kl {kl:.2e}{last_probe}")
        measure(
            epoch,
            kl if cfg.loss == "kl" else ce,
            kl,
            means.get("student_norm", math.nan),
            means.get("teacher_norm", math.nan),
            time.perf_counter() - t0,
        )
        commit(epoch, epoch in save_at)
        report.record(epoch, history)
    bar.close()
    report.close()


def probed_accuracy(metrics: Any) -> xarray.DataArray:
    """``metrics.accuracy`` without the epochs that were not probed (their rows are all NaN):
    dims (epoch, model, probe), fractions."""
    acc: xarray.DataArray = metrics.accuracy.dropna("epoch", how="all")
    return acc


def summary_table(metrics: Any) -> str:
    """Probe accuracies (percent) of the last probed epoch, one row per model, with the
    distillation gain: student minus the better of teacher and BN-recalibrated teacher."""
    acc = probed_accuracy(metrics)
    last = acc.isel(epoch=-1)
    probes = [str(p) for p in acc.probe.values]
    lines = [f"epoch {int(last.epoch)}".ljust(14) + "".join(f"{p:>12}" for p in probes)]
    for m in metrics.model.values:
        lines.append(f"{m:<14}" + "".join(f"{100 * float(last.sel(model=m, probe=p)):12.2f}" for p in probes))
    gain = last.sel(model="student") - np.maximum(last.sel(model="teacher"), last.sel(model="teacher_bn"))
    lines.append(f"{'gain':<14}" + "".join(f"{100 * float(gain.sel(probe=p)):+12.2f}" for p in probes))
    return "\n".join(lines)


def distillation_gain(metrics: Any, epoch: int | None = None) -> xarray.DataArray:
    """Student minus max(teacher, teacher_bn) accuracy per probe, at ``epoch`` (default: last probed)."""
    acc = probed_accuracy(metrics)
    row = acc.isel(epoch=-1) if epoch is None else acc.sel(epoch=epoch)
    return row.sel(model="student") - np.maximum(row.sel(model="teacher"), row.sel(model="teacher_bn"))
