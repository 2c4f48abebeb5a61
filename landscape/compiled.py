"""A network's eval-mode forward compiled once per architecture and process (``torch.compile``),
shared by every point of every path between networks of that architecture."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

Forward = Callable[[Mapping[str, Tensor], Tensor], Tensor]
_COMPILED: dict[tuple[Any, ...], Forward] = {}


def _arch_key(model: nn.Module) -> tuple[Any, ...]:
    """What a compiled graph depends on: the module type and every state tensor's name, shape,
    dtype and device (not the values)."""
    state = tuple((k, tuple(v.shape), str(v.dtype), str(v.device)) for k, v in model.state_dict().items())
    return (type(model).__module__, type(model).__qualname__, state)


def compiled_forward(model: nn.Module, backend: str | Callable[..., Any] = "inductor") -> Forward:
    """``fn(state, x) -> logits``: ``model``'s eval-mode forward with every parameter and buffer
    passed as an input (``torch.func.functional_call`` on a private copy), compiled with
    ``torch.compile(backend=backend, dynamic=False)``.

    Cached per architecture (`_arch_key`) and backend for the process, so every point of a
    path and every further path between networks of that architecture (the next pruning level,
    another pair of children) reuses the same graph; a new input shape (a last, smaller batch)
    compiles one more. ``state``: the ``state_dict`` keys of ``model``.
    """
    key = (_arch_key(model), backend if isinstance(backend, str) else id(backend))
    fn = _COMPILED.get(key)
    if fn is None:
        template = copy.deepcopy(model).eval().requires_grad_(False)

        def forward(state: Mapping[str, Tensor], x: Tensor) -> Tensor:
            return functional_call(template, dict(state), (x,))

        fn = torch.compile(forward, backend=backend, dynamic=False)
        _COMPILED[key] = fn
    return fn


def compile_name(backend: str | Callable[..., Any] | None) -> str:
    """How a compile backend is recorded in attrs: ``none``, its name, or a callable's name."""
    if backend is None:
        return "none"
    return backend if isinstance(backend, str) else getattr(backend, "__name__", type(backend).__name__)
