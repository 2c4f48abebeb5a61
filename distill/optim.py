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
`make_optimizer` and `lr_schedule` build a distillation run's optimiser and learning rates;
`state_tensors` and `load_state_tensors` turn an optimiser's state into named tensors and back;
`supervised_optimizer` builds the optimiser of `distill.supervised.train_supervised`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.optim.adam import adam

from distill.config import DistillConfig, SupervisedConfig

__all__ = [
    "Adam",
    "AdamW",
    "Optimizer",
    "load_state_tensors",
    "lr_schedule",
    "make_optimizer",
    "state_tensors",
    "supervised_optimizer",
]

Params = Iterable[Tensor] | Iterable[dict[str, Any]]


def _scalar_dtype() -> torch.dtype:
    # the dtype torch.optim.Adam keeps its step counter in
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


class Adam:
    """Adam (``decoupled_weight_decay=False``: the decay is added to the gradient, as
    ``torch.optim.Adam``) on ``params``: tensors, or dicts of ``params`` and per-group options.

    ``lr`` per step, ``betas`` the moment decays, ``eps`` added to the root of the second moment,
    ``weight_decay`` per step (times ``lr`` when decoupled; None: torch's default, 0 for Adam, 0.01
    for AdamW).
    """

    _decoupled = False
    _default_weight_decay = 0.0

    def __init__(
        self,
        params: Params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float | None = None,
    ) -> None:
        if weight_decay is None:
            weight_decay = self._default_weight_decay
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
    _default_weight_decay = 1e-2


# what make_optimizer returns: the same step/zero_grad/state_dict/load_state_dict/param_groups
Optimizer = Adam | torch.optim.SGD


def make_optimizer(cfg: DistillConfig, model: nn.Module) -> Optimizer:
    """Optimiser with two parameter groups: weights, and biases/norm parameters (1-d tensors).

    Adam and AdamW are this module's (torch's update and state format, without the 150 MiB
    import of ``torch._dynamo`` that ``torch.optim.Optimizer`` makes); SGD is torch's."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    other = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    nb = cfg.weight_decay if cfg.norm_bias_decay is None else cfg.norm_bias_decay
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": other, "weight_decay": nb}]
    if cfg.optimizer == "adamw":
        return AdamW(groups, lr=cfg.lr, eps=cfg.adam_eps)
    if cfg.optimizer == "adam":  # L2 penalty in the gradient, as torch's Adam
        return Adam(groups, lr=cfg.lr, eps=cfg.adam_eps)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)


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


def set_lr(opt: Optimizer | torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group of ``opt``."""
    for group in opt.param_groups:
        group["lr"] = lr


def state_tensors(opt: Optimizer) -> tuple[dict[str, Tensor], list[dict[str, Any]]]:
    """``opt``'s state as tensors named ``"<parameter index>/<name>"``, and its parameter groups."""
    sd = opt.state_dict()
    tensors = {
        f"{i}/{k}": (v if torch.is_tensor(v) else torch.tensor(v))
        for i, st in sd["state"].items()
        for k, v in st.items()
    }
    return tensors, [dict(g) for g in sd["param_groups"]]


def load_state_tensors(opt: Optimizer, tensors: dict[str, Tensor], groups: list[dict[str, Any]]) -> None:
    """Load a state written by `state_tensors` into ``opt``."""
    state: dict[int, dict[str, Tensor]] = {}
    for key, t in tensors.items():
        i, k = key.split("/", 1)
        state.setdefault(int(i), {})[k] = t
    opt.load_state_dict({"state": state, "param_groups": groups})


def supervised_optimizer(
    cfg: SupervisedConfig, params: list[nn.Parameter], state: Mapping[str, Any] | None
) -> torch.optim.Optimizer:
    """torch's SGD (momentum, weight decay on every parameter) or AdamW, with ``state``'s momentum
    buffers (SGD only)."""
    opt: torch.optim.Optimizer
    if cfg.optimizer == "adamw":
        if state is not None:
            raise ValueError("optimizer_state holds SGD momentum buffers: continuing is offered with optimizer='sgd'")
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if state is not None:
        load_momentum(opt, state)
    return opt


def load_momentum(opt: torch.optim.Optimizer, state: Mapping[str, Any]) -> None:
    """Load the per-parameter state (momentum buffers) of ``state`` into ``opt``, keeping ``opt``'s
    hyperparameters; tensors are copied, so ``state`` is never changed by training."""
    if not isinstance(state, Mapping) or not {"state", "param_groups"} <= set(state):
        raise ValueError(
            "optimizer_state must be a torch.optim.SGD state_dict() (keys 'state' and "
            "'param_groups'): pass optimizer.state_dict() or a snapshot's 'optimizer'"
        )
    params = opt.param_groups[0]["params"]
    groups = state["param_groups"]
    ids = [i for g in groups for i in g["params"]]
    if len(groups) != 1 or len(ids) != len(params):
        raise ValueError(
            f"optimizer_state holds {len(ids)} parameters in {len(groups)} group(s), this model "
            f"trains {len(params)} in one: pass the optimiser state of a run of the same model"
        )
    per_param: dict[Any, dict[str, Any]] = {}
    for i, p in zip(ids, params):
        entry = state["state"].get(i)
        if entry is None:
            continue
        buf = entry.get("momentum_buffer")
        if isinstance(buf, Tensor) and tuple(buf.shape) != tuple(p.shape):
            raise ValueError(
                f"optimizer_state has a momentum buffer of shape {tuple(buf.shape)} for a parameter "
                f"of shape {tuple(p.shape)}: pass a state whose parameter order matches the model's"
            )
        per_param[i] = {k: v.detach().clone() if isinstance(v, Tensor) else copy.deepcopy(v) for k, v in entry.items()}
    hyper = {k: v for k, v in opt.param_groups[0].items() if k != "params"}
    opt.load_state_dict({"state": per_param, "param_groups": [{**hyper, "params": list(ids)}]})
