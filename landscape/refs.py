"""Checkpoint references: the one resolver every landscape function uses, and the classifier check.

A reference is an ``nn.Module`` or ``(store_or_path, epoch | name)``: ``(store, 10)`` is the
student saved at epoch 10, ``(store, -1)`` the last one, ``(store, "teacher")`` or
``(store, "children/0")`` a named module (`distill.store.as_module`).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from distill.device import in_mode


def load_ref(ref: Any, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """A private copy of the module behind ``ref`` and its provenance.

    Args:
        ref: an ``nn.Module`` (deep-copied, never modified) or ``(store_or_path, epoch | name)``; a

    negative epoch counts from the last saved one.

    Returns:
        (module on ``device``, info) with info ``source`` (``"<path>#epoch=10"``,
        ``"<path>#name=teacher"`` or ``"module"``) and, when known, ``store``, ``epoch`` or ``name`` and
        ``config`` (the store's configuration as JSON). Every value is a str or an int (netCDF attrs).
    """
    from distill.store import Store, as_module

    if isinstance(ref, nn.Module):
        module = copy.deepcopy(ref).to(device)
        where = getattr(ref, "store_ref", None)
        if isinstance(where, tuple) and len(where) == 2:
            return module, {"source": f"{where[0]}#name={where[1]}", "store": str(where[0]), "name": str(where[1])}
        return module, {"source": "module"}
    if isinstance(ref, (tuple, list)) and len(ref) == 2:
        store, which = ref
        store = store if isinstance(store, Store) else Store(store)
        if isinstance(which, (int, np.integer)):
            which = resolve_epoch(store, int(which))
        module = as_module((store, which), device)
        path = str(store.path)
        if isinstance(which, (int, np.integer)):
            epoch = int(which)
            info: dict[str, Any] = {"source": f"{path}#epoch={epoch}", "store": path, "epoch": epoch}
        else:
            info = {"source": f"{path}#name={which}", "store": path, "name": str(which)}
        try:
            config = store.config
        except Exception:  # noqa: BLE001 - provenance only: an unreadable config must not stop the analysis
            config = None
        if isinstance(config, Mapping) and config:
            info["config"] = json.dumps(config, sort_keys=True, default=str)
        return module, info
    raise TypeError(f"expected an nn.Module or a (store, epoch | name) pair, got {type(ref).__name__}")


def model_spec_attrs(attrs: dict[str, Any], model: nn.Module) -> None:
    """Record ``model.spec`` (a `distill.build_model` network's architecture) as JSON attr ``model_spec``."""
    spec = getattr(model, "spec", None)
    if isinstance(spec, Mapping):
        attrs["model_spec"] = json.dumps(spec, sort_keys=True, default=str)


def resolve_epoch(store: Any, epoch: int) -> int:
    """The saved epoch that ``epoch`` names in ``store``: itself when >= 0, else counted back from
    the last saved student (-1: the last). A ValueError names the saved epochs when it counts back
    past the first."""
    if epoch >= 0:
        return epoch
    epochs = list(store.epochs)
    if -epoch > len(epochs):
        saved = ", ".join(map(str, epochs)) or "none"
        raise ValueError(
            f"{store.path}:{epoch} counts back past the first saved student ({len(epochs)} saved, epochs "
            f"{saved}): pass one of those epochs, or -1 (the last) to -{len(epochs)}"
            if epochs
            else f"{store.path} holds no saved student: name a module instead, e.g. {store.path}:teacher"
        )
    return int(epochs[epoch])


def _num_classes(data: Any) -> int:
    """``data.num_classes``, else one more than the largest label of either split."""
    n = getattr(data, "num_classes", None)
    if n is not None:
        return int(n)
    return int(max(int(data.train.labels.max()), int(data.test.labels.max()))) + 1


@torch.no_grad()
def require_classifier(model: nn.Module, data: Any, what: str, source: str = "module") -> None:
    """Raise a one-line ValueError unless ``model`` maps ``data``'s images to one logit per class.

    One forward pass in eval mode on two training images (no statistics change) checks that the
    output is (2, data.num_classes). A distilled student fails it: its DINO head has ``out_dim``
    (65,536 by default) outputs, and its loss and error along a path would mean nothing.
    ``what`` names the argument in the message (e.g. "a"), ``source`` where it came from.
    """
    n = _num_classes(data)
    images = data.train.images[:2]
    param = next(model.parameters(), None)
    dev = param.device if param is not None else torch.device("cpu")
    mean = torch.tensor([float(m) for m in data.mean], device=dev).view(1, -1, *[1] * (images.dim() - 2))
    std = torch.tensor([float(s) for s in data.std], device=dev).view(1, -1, *[1] * (images.dim() - 2))
    x = (images.to(dev).float() / 255 - mean) / std
    with in_mode(model):
        out = model(x)
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else None
    if shape == (len(x), n):
        return
    outputs = f"{shape[1]} outputs" if shape is not None and len(shape) == 2 else f"output shape {shape}"
    raise ValueError(
        f"{what} ({source}) is not a classifier for the data's {n} classes ({outputs} per image): "
        f"compare networks trained with labels, e.g. the children of landscape.instability "
        f"(rtt instability), or give a student a head with distill.supervised.with_classifier(model, "
        f"{n}) and train it with train_supervised"
    )
