"""Optimiser state kept by parameter name, so it survives masking (`landscape.lottery`'s rewinds).

train_supervised's optimiser numbers the trainable parameters in model.parameters() order. Masks
registered as parametrizations move a weight to "<module>.parametrizations.weight.original" and
after the module's own parameters, so that order differs between the dense level-0 model and a
masked one; the state is therefore kept by the (clean) parameter name in between.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from landscape.pruning import _clean_name

OptimizerByName = tuple[dict[str, Tensor], dict[str, Any]]  # ({"<key>/<name>": tensor}, meta)


def trainable(model: nn.Module) -> list[tuple[str, Tensor]]:
    """(clean name, parameter) in the order train_supervised hands them to its optimiser."""
    return [(_clean_name(n), p) for n, p in model.named_parameters() if p.requires_grad]


def optimizer_by_name(model: nn.Module, state: Mapping[str, Any]) -> OptimizerByName:
    """An SGD ``state_dict()`` of an optimiser over ``model``'s trainable parameters, keyed by name."""
    named = trainable(model)
    ids = [i for g in state["param_groups"] for i in g["params"]]
    if len(ids) != len(named):
        raise ValueError(
            f"the optimiser state covers {len(ids)} parameters, the model trains {len(named)}: "
            f"pass the state of an optimiser over this model"
        )
    tensors = {}
    for i, (name, _) in zip(ids, named):
        for key, v in state["state"].get(i, {}).items():
            if isinstance(v, Tensor):
                tensors[f"{key}/{name}"] = v.detach().clone()
    groups = [{k: v for k, v in g.items() if k != "params"} for g in state["param_groups"]]
    return tensors, {"param_groups": groups}


def optimizer_for(model: nn.Module, saved: OptimizerByName, masks: Mapping[str, Tensor] | None) -> dict[str, Any]:
    """The SGD ``state_dict()`` for ``model`` (masked or not) from state kept by name; entries of
    per-parameter tensors at pruned positions are set to zero."""
    tensors, meta = saved
    by_name: dict[str, dict[str, Tensor]] = {}
    for full, t in tensors.items():
        key, _, name = full.partition("/")
        by_name.setdefault(name, {})[key] = t
    named = trainable(model)
    unknown = set(by_name) - {n for n, _ in named}
    if unknown:
        raise ValueError(
            f"the rewound optimiser state names tensors the model does not train "
            f"({', '.join(sorted(unknown)[:3])}): use a store made for this model"
        )
    state: dict[int, dict[str, Tensor]] = {}
    for i, (name, p) in enumerate(named):
        entry = {}
        for key, t in by_name.get(name, {}).items():
            t = t.to(p.device, p.dtype)
            if masks is not None and name in masks and tuple(t.shape) == tuple(p.shape):
                t = t * (masks[name].to(p.device) != 0).to(p.dtype)
            entry[key] = t
        if entry:
            state[i] = entry
    groups = meta.get("param_groups") or [{}]
    return {"state": state, "param_groups": [{**groups[0], "params": list(range(len(named)))}]}
