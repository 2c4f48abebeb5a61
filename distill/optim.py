"""Adam and AdamW that leave ``torch._dynamo`` unimported: torch's own update, a smaller process.

``torch.optim.Optimizer`` imports ``torch._dynamo`` when it is constructed and at every step (it
only needs it for ``torch.compile``); with triton and sympy installed, as the CUDA wheels of
torch bring them, that import alone adds about 150 MiB to the resident memory of a CPU run. These
classes keep the parameter groups and the state themselves and call torch's functional
``torch.optim.adam.adam`` with the arguments ``torch.optim.Adam.step`` passes it, so every update
is torch's, bit for bit, with the same choice of the single-tensor or foreach implementation.
``state_dict()`` and ``load_state_dict()`` use torch's format: a state written by one loads into
the other.

Only what the training loops use is offered: no closures, amsgrad, maximize, capturable,
differentiable or fused steps, hooks or learning-rate schedulers (set ``group["lr"]`` instead).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim.adam import adam

__all__ = ["Adam", "AdamW"]


def _scalar_dtype() -> torch.dtype:
    # the dtype torch.optim.Adam keeps its step counter in
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


class Adam:
    """Adam (``decoupled_weight_decay=False``: the decay is added to the gradient, as
    ``torch.optim.Adam``) on ``params``: tensors, or dicts of ``params`` and per-group options.

    ``lr`` per step, ``betas`` the moment decays, ``eps`` added to the root of the second moment,
    ``weight_decay`` per step (times ``lr`` when decoupled).
    """

    _decoupled = False

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        for name, value, ok in (
            ("lr", lr, lr >= 0),
            ("eps", eps, eps >= 0),
            ("weight_decay", weight_decay, weight_decay >= 0),
            ("betas", betas, len(betas) == 2 and all(0 <= b < 1 for b in betas)),
        ):
            if not ok:
                raise ValueError(
                    f"{name}={value} is invalid: lr, eps and weight_decay >= 0, betas two values in [0, 1)"
                )
        # the keys and order of torch.optim.Adam's defaults, so that state_dict() is the same
        self.defaults: dict[str, Any] = {
            "lr": lr,
            "betas": (float(betas[0]), float(betas[1])),
            "eps": eps,
            "weight_decay": weight_decay,
            "amsgrad": False,
            "maximize": False,
            "foreach": None,
            "capturable": False,
            "differentiable": False,
            "fused": None,
            "decoupled_weight_decay": self._decoupled,
        }
        given = list(params)
        if not given:
            raise ValueError("the optimiser got an empty parameter list; pass the model's parameters")
        groups = given if isinstance(given[0], dict) else [{"params": given}]
        self.param_groups: list[dict[str, Any]] = []
        self.state: dict[Tensor, dict[str, Tensor]] = {}
        seen: set[int] = set()
        for g in groups:
            if not isinstance(g, dict) or "params" not in g:
                raise ValueError("parameter groups must all be dicts with a 'params' entry")
            ps = [g["params"]] if isinstance(g["params"], Tensor) else list(g["params"])
            for p in ps:
                if not isinstance(p, Tensor) or not p.is_leaf:
                    raise ValueError("the optimiser can only update leaf tensors; pass model.parameters()")
                if id(p) in seen:
                    raise ValueError("a parameter appears in more than one group; list each once")
                seen.add(id(p))
            group = {"params": ps, **{k: v for k, v in g.items() if k != "params"}}
            for k, v in self.defaults.items():
                group.setdefault(k, v)
            self.param_groups.append(group)

    @torch.no_grad()
    def step(self) -> None:
        """One update of every parameter that has a gradient (the same as torch's ``step()``)."""
        for group in self.param_groups:
            params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("Adam does not support sparse gradients; use torch.optim.SparseAdam")
                state = self.state.get(p)
                if not state:
                    state = self.state[p] = {
                        "step": torch.tensor(0.0, dtype=_scalar_dtype()),
                        "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                        "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
                    }
                params.append(p)
                grads.append(p.grad)
                exp_avgs.append(state["exp_avg"])
                exp_avg_sqs.append(state["exp_avg_sq"])
                steps.append(state["step"])
            beta1, beta2 = group["betas"]
            adam(
                params,
                grads,
                exp_avgs,
                exp_avg_sqs,
                [],
                steps,
                amsgrad=False,
                has_complex=any(torch.is_complex(p) for p in params),
                beta1=beta1,
                beta2=beta2,
                lr=group["lr"],
                weight_decay=group["weight_decay"],
                eps=group["eps"],
                maximize=False,
                foreach=group["foreach"],
                capturable=False,
                differentiable=False,
                fused=group["fused"],
                grad_scale=None,
                found_inf=None,
                decoupled_weight_decay=group["decoupled_weight_decay"],
            )

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop the gradients (``set_to_none``) or zero them in place."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    if p.grad.grad_fn is not None:
                        p.grad.detach_()
                    else:
                        p.grad.requires_grad_(False)
                    p.grad.zero_()

    def state_dict(self) -> dict[str, Any]:
        """``{"state": {index: {"step", "exp_avg", "exp_avg_sq"}}, "param_groups": [...]}`` as
        ``torch.optim.Adam.state_dict()`` (parameters numbered in group order; tensors not copied)."""
        index: dict[int, int] = {}
        groups = []
        for g in self.param_groups:
            packed = {k: v for k, v in g.items() if k != "params"}
            packed["params"] = [index.setdefault(id(p), len(index)) for p in g["params"]]
            groups.append(packed)
        return {"state": {index[id(p)]: s for p, s in self.state.items()}, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state from `state_dict` or from torch's Adam/AdamW (moments cast to each
        parameter's dtype and device, the step counter left as it is)."""
        saved = copy.deepcopy(state_dict["param_groups"])
        if len(saved) != len(self.param_groups) or any(
            len(s["params"]) != len(g["params"]) for s, g in zip(saved, self.param_groups)
        ):
            raise ValueError(
                "the loaded optimiser state has other parameter groups than this optimiser; "
                "load it into an optimiser built the same way"
            )
        id_map = {i: p for s, g in zip(saved, self.param_groups) for i, p in zip(s["params"], g["params"])}
        state: dict[Tensor, dict[str, Tensor]] = {}
        for i, values in state_dict["state"].items():
            if i not in id_map:
                continue
            p = id_map[i]
            state[p] = {
                k: v
                if k == "step" or not isinstance(v, Tensor)
                else v.to(dtype=p.dtype, device=p.device)
                if p.is_floating_point()
                else v.to(device=p.device)
                for k, v in values.items()
            }
        for s, g in zip(saved, self.param_groups):
            s["params"] = g["params"]
            for k, v in self.defaults.items():
                s.setdefault(k, v)
            if self._decoupled:
                s["decoupled_weight_decay"] = True
        self.param_groups = saved
        self.state = state


class AdamW(Adam):
    """AdamW: Adam with the decay applied to the weights, ``p -= lr * weight_decay * p``, as
    ``torch.optim.AdamW`` (whose default ``weight_decay`` of 0.01 is kept)."""

    _decoupled = True

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
    ) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
