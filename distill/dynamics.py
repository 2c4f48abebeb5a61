"""Representation dynamics during distillation: collapse and escape (Sarnthein et al. 2023,
"Escaping Random Teacher Initialization Enhances Signal Propagation and Representations").

Measures on a fixed set of inputs, per network and per layer:

- `effective_rank` of the embeddings (Roy & Vetterli 2007): ``exp(H(p))`` with
  ``p_i = s_i / sum_j s_j`` the normalised singular values of the (centred) matrix (N, D);
  between 1 (collapse onto one direction) and min(N, D).
- `dead_fraction`: fraction of units whose activation is <= 0 for every input (dead ReLUs).
- `mean_cosine`: mean cosine similarity between the representations of *different* inputs
  (signal propagation: near 1 when every input maps to the same direction).

`DynamicsRecorder` evaluates them at every epoch of `distill.train.distill` (option
``dynamics``) for the teacher and the student, on ``dynamics_examples`` fixed training images;
the values join the run's ``metrics`` Dataset as ``effective_rank`` / ``dead_fraction`` (epoch,
model) and ``layer_cosine`` / ``layer_effective_rank`` (epoch, model, layer).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn

from distill.device import in_mode

NETWORKS = ("teacher", "student")
PER_LAYER = ("layer_cosine", "layer_effective_rank", "layer_dead_fraction")


def effective_rank(z: Tensor, center: bool = True) -> float:
    """Effective rank ``exp(-sum p_i log p_i)``, ``p = s / sum(s)`` over the singular values of
    ``z`` (N, D), centred over the N rows first when ``center``. A zero matrix has rank 0."""
    z = z.detach().double().reshape(len(z), -1)
    if center:
        z = z - z.mean(0, keepdim=True)
    s = torch.linalg.svdvals(z)
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def dead_fraction(z: Tensor, tol: float = 0.0) -> float:
    """Fraction of units (columns of ``z`` (N, D), or channels of (N, C, ...)) that are <= ``tol``
    for every one of the N inputs."""
    z = z.detach()
    if z.dim() > 2:
        z = z.movedim(1, -1).reshape(-1, z.shape[1])
    return float((z.max(0).values <= tol).double().mean())


def mean_cosine(z: Tensor) -> float:
    """Mean cosine similarity between the (flattened) representations of different inputs:
    the mean of the off-diagonal entries of the N x N cosine matrix (N >= 2; zero rows count 0)."""
    z = z.detach().double().reshape(len(z), -1)
    n = len(z)
    if n < 2:
        raise ValueError("mean_cosine needs at least two inputs")
    u = z / z.norm(dim=1, keepdim=True).clamp_min(1e-300)
    total = u.sum(0)
    off = float(total @ total) - float((u * u).sum())
    return off / (n * (n - 1))


def probe_layers(backbone: nn.Module) -> list[str]:
    """Qualified names of the modules whose outputs are measured per layer: every ReLU / GELU
    module and every residual block (ResNet BasicBlock, ViT block), in forward order."""
    from distill.models import BasicBlock

    names = []
    inside: list[str] = []
    for name, m in backbone.named_modules():
        if any(name.startswith(p + ".") for p in inside):
            continue
        if isinstance(m, BasicBlock) or type(m).__name__ == "Block":
            names.append(name)
            inside.append(name)
        elif isinstance(m, (nn.ReLU, nn.GELU)):
            names.append(name)
    return names


@torch.no_grad()
def layer_outputs(backbone: nn.Module, x: Tensor, names: Sequence[str]) -> dict[str, Tensor]:
    """Outputs of the modules ``names`` of ``backbone`` on ``x`` (eval mode), plus ``embedding``."""
    mods = dict(backbone.named_modules())
    got: dict[str, Tensor] = {}
    handles = [
        mods[n].register_forward_hook(lambda m, a, out, n=n: got.__setitem__(n, out.detach().clone())) for n in names
    ]
    try:
        with in_mode(backbone):
            emb = backbone(x)
    finally:
        for h in handles:
            h.remove()
    got["embedding"] = emb.detach()
    return got


class DynamicsRecorder:
    """Per-epoch collapse / escape metrics of teacher and student on fixed inputs ``x`` (N, C, H, W),
    normalised. ``measure(epoch, teacher, student)`` records one epoch; ``variables()`` returns the
    xarray variables to merge into the metrics; ``load(ds, upto)`` restores records on resume."""

    def __init__(self, x: Tensor, backbone: nn.Module) -> None:
        self.x = x
        self.layers = probe_layers(backbone) + ["embedding"]
        self.rows: dict[int, dict[str, dict[str, Any]]] = {}

    def measure(self, epoch: int, teacher: nn.Module, student: nn.Module) -> None:
        """Record the layer statistics of ``teacher`` and ``student`` on the fixed inputs at ``epoch``."""
        row = {}
        for name, net in zip(NETWORKS, (teacher, student)):
            outs = layer_outputs(cast(nn.Module, net.backbone), self.x, self.layers[:-1])
            emb = outs["embedding"]
            row[name] = {
                "effective_rank": effective_rank(emb),
                "dead_fraction": dead_fraction(emb),
                "embedding_cosine": mean_cosine(emb),
                "layer_cosine": [mean_cosine(outs[n]) for n in self.layers],
                "layer_effective_rank": [effective_rank(_units(outs[n])) for n in self.layers],
                "layer_dead_fraction": [dead_fraction(outs[n]) for n in self.layers],
            }
        self.rows[int(epoch)] = row

    def variables(self, epochs: Sequence[int], models: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any]]:
        """(data variables, extra coords) over (epoch, model[, layer]); NaN where not measured. Their
        long_name and units are the metrics' (`distill.schema`)."""
        out: dict[str, Any] = {}
        for var in ("effective_rank", "dead_fraction", "embedding_cosine", *PER_LAYER):
            shape = (len(epochs), len(models)) + ((len(self.layers),) if var in PER_LAYER else ())
            a = np.full(shape, np.nan)
            for i, e in enumerate(epochs):
                for j, m in enumerate(models):
                    if e in self.rows and m in self.rows[e]:
                        a[i, j] = self.rows[e][m][var]
            out[var] = (("epoch", "model", "layer")[: len(shape)], a)
        return out, {"layer": list(self.layers)}

    def load(self, ds: Any, upto: int) -> None:
        """Restore the records of epochs <= ``upto`` from a metrics Dataset (resume)."""
        if "effective_rank" not in ds or "layer" not in ds.coords:
            return
        if [str(v) for v in ds.layer.values] != self.layers:
            return
        for e in ds.epoch.values:
            if int(e) > upto:
                continue
            row: dict[str, dict[str, Any]] = {}
            for m in NETWORKS:
                sel = ds.sel(epoch=e, model=m)
                if np.isnan(float(sel.effective_rank)):
                    continue
                row[m] = {v: float(sel[v]) for v in ("effective_rank", "dead_fraction", "embedding_cosine")}
                row[m].update({v: [float(t) for t in sel[v].values] for v in PER_LAYER})
            if row:
                self.rows[int(e)] = row


def _units(z: Tensor) -> Tensor:
    """(N, D) for the effective rank of a layer: conv maps are averaged over space first."""
    return z.mean(dim=tuple(range(2, z.dim()))) if z.dim() > 2 else z
