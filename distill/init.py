"""Student initialisation relative to a teacher.

Modes (``theta_n`` is a fresh initialisation of the same architecture drawn with ``seed``):

- ``copy``:        theta_s = theta_t
- ``alpha``:       theta_s = ((1 - a) theta_t + a theta_n) / sqrt(a^2 + (1 - a)^2)   (variance-preserving)
- ``eps``:         theta_s = theta_t + eps * theta_n
- ``independent``: theta_s = theta_n  (alpha = 1)

``scope="all"`` (default, the paper's formula as its code applies it): every parameter is
mixed, including BatchNorm/LayerNorm scales and shifts, so a BN scale of 1 becomes
1 / sqrt(a^2 + (1 - a)^2) (up to 1.414 at a = 0.5) and ``eps`` gives 1 + eps.
``scope="random"``: only tensors whose initialisation is random are mixed; a tensor that the
architecture initialises deterministically (BN scale 1 and shift 0, zero biases, ...) comes out
identical in teacher and noise draw and is copied from the teacher unchanged.
``eps_rescale=True``: the eps mode's variance-preserving variant,
theta_s = (theta_t + eps * theta_n) / sqrt(1 + eps^2). Buffers (BN running statistics) are
always copied from the teacher.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

MODES = ("copy", "alpha", "eps", "independent")
SCOPES = ("all", "random")


def fresh_like(model: nn.Module, seed: int) -> nn.Module:
    """A new, independently initialised model of ``model``'s architecture, drawn with ``seed``."""
    from distill.models import build_model, seeded

    spec = getattr(model, "spec", None)
    if spec is None:
        raise ValueError("fresh_like needs a model built with distill.build_model (it has no .spec)")
    with seeded(seed):
        fresh = build_model(**spec)
    device = next(model.parameters()).device
    return fresh.to(device)


@torch.no_grad()
def init_student(
    teacher: nn.Module,
    mode: str = "alpha",
    alpha: float = 1e-10,
    eps: float = 0.0,
    seed: int = 1,
    scope: str = "all",
    eps_rescale: bool = False,
) -> nn.Module:
    """A student initialised relative to ``teacher`` (left untouched); see the module docstring.

    ``scope``: ``all`` parameters (the paper's formula) or only the ``random``ly initialised ones;
    ``eps_rescale``: divide the eps mode's result by sqrt(1 + eps^2).

    ``seed`` draws the noise network; it must differ from the teacher's own seed, or the
    "noise" is the teacher itself.
    """
    if mode not in MODES:
        raise ValueError(f"student init mode {mode!r} is not valid: choose one of {', '.join(MODES)}")
    if mode == "alpha" and not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha} must lie in [0, 1]")
    if scope not in SCOPES:
        raise ValueError(f"init scope {scope!r} is not valid: choose one of {', '.join(SCOPES)}")
    student = copy.deepcopy(teacher)
    student.requires_grad_(True)
    if mode == "copy":
        return student
    noise = fresh_like(teacher, seed)
    if mode == "independent":
        return noise.requires_grad_(True).train(teacher.training)
    n_params = dict(noise.named_parameters())
    scale = 1.0 / math.sqrt(alpha**2 + (1 - alpha) ** 2)
    for name, p in student.named_parameters():
        t, n = p.detach().clone(), n_params[name]
        if scope == "random" and torch.equal(t, n):  # deterministic initialisation: nothing to mix
            continue
        if mode == "alpha":
            if alpha == 0.0:
                continue
            if alpha == 1.0:
                p.copy_(n)
            else:
                p.copy_(((1 - alpha) * t + alpha * n) * scale)
        else:
            p.add_(eps * n)
            if eps_rescale:
                p.div_(math.sqrt(1 + eps**2))
    return student


def parameter_distance(a: nn.Module, b: nn.Module, relative: bool = False) -> float:
    """L2 distance between the parameters of two same-architecture models
    (divided by ||theta_b|| when ``relative``)."""
    pa = dict(a.named_parameters())
    sq, ref = 0.0, 0.0
    for name, q in b.named_parameters():
        p = pa[name]
        # in place on one float64 copy (the same values as subtracting two float64 copies): a
        # 65,536-way head's last layer would otherwise need four transient copies of 134 MB
        sq += p.detach().double().sub_(q.detach().to(p.device)).pow_(2).sum().item()
        ref += q.detach().double().pow_(2).sum().item()
    d = math.sqrt(sq)
    return d / math.sqrt(ref) if relative and ref > 0 else d
