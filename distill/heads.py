"""Heads that sit on a backbone's embedding: the DINO projection head, a linear classifier, none.

Also holds the small option checkers shared by `distill.models`; each raises a one-line
``ValueError`` naming the option and what it accepts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

HEADS = ("dino", "linear", None)
LAST_LAYERS = ("plain", "weightnorm")

# Options of each head with their defaults (the DINO values of the paper).
HEAD_DEFAULTS: dict[str | None, dict[str, Any]] = {
    "dino": {
        "out_dim": 65536,
        "hidden_dim": 2048,
        "bottleneck_dim": 256,
        "nlayers": 3,
        "use_bn": False,
        "l2_normalize": True,
        "last_layer": "plain",
        "norm_last_layer": True,
    },
    "linear": {},
    None: {},
}
HEAD_OPTION_NAMES = frozenset(k for opts in HEAD_DEFAULTS.values() for k in opts)


# ----------------------------------------------------------------------------- option checks
def check_int(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` as a Python int >= ``minimum`` (bools and floats are refused)."""
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise ValueError(f"option {name}={value!r} must be an integer >= {minimum}")
    value = int(value.__index__())
    if value < minimum:
        raise ValueError(f"option {name}={value} must be an integer >= {minimum}")
    return value


def check_bool(name: str, value: Any) -> bool:
    """``value`` as a Python bool (only True/False, numpy bools included, are accepted)."""
    if type(value).__name__ not in ("bool", "bool_"):
        raise ValueError(f"option {name}={value!r} must be True or False")
    return bool(value)


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
    """``value`` if it is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"option {name}={value!r} is not valid: choose one of {', '.join(map(repr, choices))}")
    return value


def check_ints(name: str, value: Any, minimum: int = 1) -> list[int]:
    """A non-empty sequence of ints >= ``minimum``, as a list."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) == 0:
        raise ValueError(f"option {name}={value!r} must be a non-empty list of integers >= {minimum}")
    return [check_int(f"{name}[{i}]", v, minimum) for i, v in enumerate(value)]


@torch.no_grad()
def trunc_normal_(tensor: torch.Tensor, std: float = 0.02, bound: float = 2.0) -> torch.Tensor:
    """In place: N(0, std^2) cut to [-bound, bound] (absolute), the DINO / timm convention.

    With std = 0.02 the cut sits at 100 std and never binds, so sampling a normal and clamping
    gives the same distribution as ``torch.nn.init.trunc_normal_`` at a fraction of its CPU cost.
    """
    if bound < 6 * std:
        return nn.init.trunc_normal_(tensor, std=std, a=-bound, b=bound)
    return tensor.normal_(0.0, std).clamp_(-bound, bound)


# ----------------------------------------------------------------------------- DINO head
class DINOHead(nn.Module):
    """DINO projection head: embedding (B, D) -> logits (B, out_dim).

    ``nlayers`` Linear layers D -> hidden_dim -> ... -> hidden_dim -> bottleneck_dim, with GELU
    (and BatchNorm1d before it when ``use_bn``) between them, then L2 normalisation of the
    bottleneck features (``l2_normalize``), then a bias-free ``last_layer`` to ``out_dim``.

    ``last_layer="plain"`` (default) is an ordinary Linear layer: the authors' code computes a
    weight-normalised weight but never uses it, so the paper's numbers come from a plain layer.
    ``last_layer="weightnorm"`` is true weight normalisation, w_i = g_i v_i / ||v_i|| per output
    unit, with g initialised to 1; ``norm_last_layer=True`` keeps g fixed at 1 (it is then a
    buffer, so no optimiser and no ``requires_grad_(True)`` can change it), as in DINO.
    ``norm_last_layer`` has no effect on a plain last layer.

    Every Linear weight is drawn from `trunc_normal_` (std 0.02, cut at +-2 absolute as in
    the DINO reference code, i.e. at 100 std: in effect a normal of std 0.02), biases are zero;
    BatchNorm layers keep PyTorch's default (1, 0).
    """

    def __init__(
        self,
        in_dim: int,
        *,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        nlayers: int = 3,
        use_bn: bool = False,
        l2_normalize: bool = True,
        last_layer: str = "plain",
        norm_last_layer: bool = True,
    ) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (nlayers - 1) + [bottleneck_dim]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(a, b))
            if i < nlayers - 1:  # no activation after the bottleneck projection
                if use_bn:
                    layers.append(nn.BatchNorm1d(b))
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        self.l2_normalize = l2_normalize
        self.last_layer = nn.Linear(bottleneck_dim, out_dim, bias=False)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        if last_layer == "weightnorm":
            weight_norm(self.last_layer, name="weight", dim=0)
            # the weight-norm parametrization of last_layer.weight; original0 is its magnitude g
            plist = cast(nn.ModuleDict, self.last_layer.parametrizations)["weight"]
            g = torch.ones_like(cast(torch.Tensor, plist.original0).detach())  # (out_dim, 1)
            if norm_last_layer:
                del plist.original0
                plist.register_buffer("original0", g)
            else:
                with torch.no_grad():
                    cast(torch.Tensor, plist.original0).copy_(g)

    def bottleneck(self, x: torch.Tensor) -> torch.Tensor:
        """Bottleneck features (B, bottleneck_dim), unit L2 norm per row when ``l2_normalize``."""
        z = self.mlp(x)
        return F.normalize(z, p=2.0, dim=-1) if self.l2_normalize else z

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embedding (B, D) -> logits (B, out_dim)."""
        return self.last_layer(self.bottleneck(x))


def build_head(head: str | None, embed_dim: int, num_classes: int | None, options: dict[str, Any]) -> nn.Module:
    """The head named ``head`` on a ``embed_dim``-wide embedding; ``options`` are already resolved."""
    if head is None:
        return nn.Identity()
    if head == "linear":
        if num_classes is None:
            raise ValueError("head='linear' needs num_classes: pass build_model(..., num_classes=N)")
        return nn.Linear(embed_dim, num_classes)
    o = dict(options)
    o["out_dim"] = check_int("out_dim", o["out_dim"])
    o["hidden_dim"] = check_int("hidden_dim", o["hidden_dim"])
    o["bottleneck_dim"] = check_int("bottleneck_dim", o["bottleneck_dim"])
    o["nlayers"] = check_int("nlayers", o["nlayers"])
    o["use_bn"] = check_bool("use_bn", o["use_bn"])
    o["l2_normalize"] = check_bool("l2_normalize", o["l2_normalize"])
    o["last_layer"] = check_choice("last_layer", o["last_layer"], LAST_LAYERS)
    o["norm_last_layer"] = check_bool("norm_last_layer", o["norm_last_layer"])
    options.update(o)  # normalised values go back into the caller's spec
    return DINOHead(embed_dim, **o)
