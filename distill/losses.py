"""The distillation objective: cross-entropy from the teacher's softmax to the student's.

`DistillationLoss` holds it for a training run (temperatures, centering, one view or DINO's
multicrop pairs); the functions below are its pieces, in at least fp32, logits (B, K).
`EntropyLog` gives the teacher entropy that turns the logged cross-entropy into a KL.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.config import DistillConfig
from distill.data import Dataset, Split, iterate
from distill.meter import EpochMeter


def _at_least_fp32(x: Tensor, center: Tensor | None = None) -> Tensor:
    # bf16 logits under autocast become fp32, fp64 is kept
    x = x.to(torch.promote_types(x.dtype, torch.float32))
    return x if center is None else x - center


def distillation_terms(
    t_out: Tensor, s_out: Tensor, teacher_temp: float = 1.0, student_temp: float = 1.0, center: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Batch means of the cross-entropy H(p_t, p_s) and of the teacher entropy H(p_t), in nats.

    p_t = softmax((t_out - center) / teacher_temp), p_s = softmax(s_out / student_temp);
    t_out, s_out: (B, K) logits. KL(p_t || p_s) = H(p_t, p_s) - H(p_t).
    """
    log_pt = F.log_softmax(_at_least_fp32(t_out, center) / teacher_temp, dim=-1)
    log_ps = F.log_softmax(_at_least_fp32(s_out) / student_temp, dim=-1)
    pt = log_pt.exp()
    return -(pt * log_ps).sum(-1).mean(), -(pt * log_pt).sum(-1).mean()


def distillation_loss(
    t_out: Tensor,
    s_out: Tensor,
    teacher_temp: float = 1.0,
    student_temp: float = 1.0,
    center: Tensor | None = None,
    kind: str = "ce",
) -> Tensor:
    """Mean over the batch of H(p_t, p_s) (``ce``) or KL(p_t || p_s) (``kl``); same gradient.

    ``ce`` computes only the cross-entropy (what the gradient needs); ``kl`` also the teacher entropy.
    """
    if kind == "kl":
        ce, ent = distillation_terms(t_out, s_out, teacher_temp, student_temp, center)
        return ce - ent
    return soft_cross_entropy(t_out, s_out, teacher_temp, student_temp, center)


def soft_cross_entropy(
    t_out: Tensor, s_out: Tensor, teacher_temp: float = 1.0, student_temp: float = 1.0, center: Tensor | None = None
) -> Tensor:
    """Batch mean of H(p_t, p_s) in nats, computing nothing else: one softmax of the teacher (no
    gradient) and torch's fused cross-entropy with probability targets. Logits (B, K), at least fp32."""
    return cross_entropy_to_probs(teacher_probs(t_out, teacher_temp, center), s_out, student_temp)


def teacher_probs(t_out: Tensor, teacher_temp: float = 1.0, center: Tensor | None = None) -> Tensor:
    """p_t = softmax((t_out - center) / teacher_temp) (B, K), at least fp32, without gradient."""
    with torch.no_grad():
        t = _at_least_fp32(t_out, center)
        return F.softmax(t / teacher_temp if teacher_temp != 1.0 else t, dim=-1)


def cross_entropy_to_probs(pt: Tensor, s_out: Tensor, student_temp: float = 1.0) -> Tensor:
    """Batch mean of H(p_t, softmax(s_out / student_temp)) in nats; ``pt`` (B, K) probabilities.

    The value and gradient of ``F.cross_entropy(s_out / student_temp, pt)``, bit for bit."""
    return cross_entropy_from_log_probs(pt, student_log_probs(s_out, student_temp))


def student_log_probs(s_out: Tensor, student_temp: float = 1.0) -> Tensor:
    """log softmax(s_out / student_temp) (B, K), at least fp32, as ``F.cross_entropy`` takes it."""
    s = _at_least_fp32(s_out)
    s = s / student_temp if student_temp != 1.0 else s
    return F.log_softmax(s, dim=1, dtype=s.dtype)


def cross_entropy_from_log_probs(pt: Tensor, log_ps: Tensor) -> Tensor:
    """Batch mean of -sum_k pt log_ps, the operations (and so the numbers and the gradient) of
    ``F.cross_entropy`` with probability targets after its log-softmax; (B, K) each."""
    # F.cross_entropy computes exactly this after its log_softmax, but as one call it keeps the
    # student's logits alive beside the log-probabilities and the product (64 MiB each at 256 x
    # 65,536): taking the log-softmax first lets the caller drop the logits before the product.
    return -(log_ps * pt).sum() / (log_ps.numel() // log_ps.shape[1])


def teacher_entropy(t_out: Tensor, teacher_temp: float = 1.0, center: Tensor | None = None) -> Tensor:
    """Per-example entropy H(p_t) in nats (B,), float64 accumulation of fp32 logits (B, K)."""
    log_pt = F.log_softmax(_at_least_fp32(t_out, center) / teacher_temp, dim=-1)
    return -(log_pt.exp() * log_pt).sum(-1).double()


class DistillationLoss(nn.Module):
    """H(p_t, p_s), p_t = softmax((t - center) / teacher_temp), p_s = softmax(s / student_temp).

    One view: ``loss(loss.targets(t), loss.log_probs(s))``, in two halves so that a step can drop the
    teacher's logits before the student's forward and the student's logits before the product.
    Multicrop: `multicrop`, DINO's mean over (teacher view, other student view) pairs.
    ``center`` (K,) is a buffer when centering is on, else None; ``kind`` which value is logged as
    the loss: the cross-entropy (``ce``) or KL(p_t || p_s) = H(p_t, p_s) - H(p_t) (``kl``).
    """

    center: Tensor | None

    def __init__(
        self,
        out_dim: int,
        teacher_temp: float = 1.0,
        student_temp: float = 1.0,
        center: bool = False,
        center_momentum: float = 0.9,
        kind: str = "ce",
    ) -> None:
        super().__init__()
        self.teacher_temp, self.student_temp, self.kind = teacher_temp, student_temp, kind
        self.center_momentum = center_momentum  # fraction of the center kept per step
        self.register_buffer("center", torch.zeros(out_dim) if center else None)

    @classmethod
    def from_config(cls, cfg: DistillConfig) -> DistillationLoss:
        """The objective ``cfg`` sets (its temperatures, centering and ``loss``)."""
        return cls(cfg.out_dim, cfg.teacher_temp, cfg.student_temp, cfg.center, cfg.center_momentum, cfg.loss)

    def targets(self, t_out: Tensor) -> Tensor:
        """The teacher's probabilities p_t (B, K), without gradient."""
        return teacher_probs(t_out, self.teacher_temp, self.center)

    def log_probs(self, s_out: Tensor) -> Tensor:
        """The student's log-probabilities log p_s (B, K)."""
        return student_log_probs(s_out, self.student_temp)

    def forward(self, pt: Tensor, log_ps: Tensor) -> Tensor:
        """Batch mean of H(p_t, p_s) in nats (0-d)."""
        return cross_entropy_from_log_probs(pt, log_ps)

    def multicrop(self, t_outs: list[Tensor], s_outs: list[Tensor]) -> Tensor:
        """Mean of H over every pair of a teacher view i (the global views) and a student view j != i."""
        terms = [
            soft_cross_entropy(t, s, self.teacher_temp, self.student_temp, self.center)
            for ti, t in enumerate(t_outs)
            for si, s in enumerate(s_outs)
            if si != ti
        ]
        return torch.stack(terms).mean()

    def entropy(self, t_out: Tensor) -> Tensor:
        """Per-example teacher entropy H(p_t) in nats (B,), float64."""
        return teacher_entropy(t_out, self.teacher_temp, self.center)

    @torch.no_grad()
    def update_center(self, t_mean: Tensor | None) -> None:
        """Move the center towards ``t_mean``, the batch mean of the teacher's logits (K,)."""
        if self.center is not None and t_mean is not None:
            self.center.mul_(self.center_momentum).add_(t_mean, alpha=1 - self.center_momentum)

    def logged(self, ce: float, entropy: float) -> tuple[float, float]:
        """(loss, KL) to log for an epoch's mean cross-entropy and teacher entropy, in nats."""
        kl = ce - entropy
        return (kl if self.kind == "kl" else ce), kl


class EntropyLog:
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
        self.per_image: Tensor | None = None

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

    def observe(self, meter: EpochMeter, loss: DistillationLoss, t_outs: list[Tensor], step: int, weight: int) -> None:
        """Add a step's mean teacher entropy over its teacher views ``t_outs`` (per-step case only)."""
        if self.fixed or not t_outs:
            return
        if len(t_outs) == 1:
            meter.add("entropy", loss.entropy(t_outs[0]).mean(), step, weight=weight)
        else:  # each global view's teacher is in the same number of pairs
            meter.add("entropy", torch.stack([loss.entropy(t).mean() for t in t_outs]).mean(), step, weight=weight)

    def epoch_mean(self, means: dict[str, float], visited: Tensor) -> float:
        """Mean teacher entropy (nats) over the epoch's steps; ``visited``: the epoch's image indices."""
        if self.fixed and self.per_image is not None:
            return float(self.per_image[visited.to(self.per_image.device)].mean())
        return means.get("entropy", math.nan)
