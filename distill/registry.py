"""Names of the registered models, datasets and probes, answered without importing torch.

The command line builds its help (choices of ``--arch``, ``--dataset``, ``--probes``) from
these. The built-in names are listed here; names registered later (plugins, user code) live in
the registries of `distill.models` and `distill.probe`, which are consulted whenever
they are already imported (registering a model or probe imports them).
``tests/distill/test_registry.py`` checks that the lists match the real registries.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

BUILTIN_MODELS: tuple[str, ...] = (
    "convnet",
    "mlp",
    "resnet18",
    "resnet20",
    "resnet34",
    "resnet56",
    "vgg11",
    "vgg11_bn",
    "vgg13",
    "vgg13_bn",
    "vgg16",
    "vgg16_bn",
    "vgg19",
    "vgg19_bn",
    "vit_small",
    "vit_tiny",
)
BASE_DATASETS: tuple[str, ...] = ("cifar10", "cifar100", "fashion-mnist", "mnist")
BUILTIN_DATASETS: tuple[str, ...] = (*BASE_DATASETS, "gaussian", *(f"gaussian:{n}" for n in BASE_DATASETS))
DEFAULT_PROBES: tuple[str, ...] = ("knn", "linear", "linear_std")  # what a run probes unless told otherwise
BUILTIN_PROBES: tuple[str, ...] = (*DEFAULT_PROBES, "knn_std")
# other spellings of the base datasets; configs and stores hold the canonical name
DATASET_ALIASES: dict[str, str] = {
    "fmnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "cifar-10": "cifar10",
    "cifar-100": "cifar100",
}


def model_names() -> list[str]:
    """Registered architectures, sorted (built-ins plus any registered in this process)."""
    models = sys.modules.get("distill.models")
    return list(models.list_models()) if models is not None else sorted(BUILTIN_MODELS)


def dataset_names() -> list[str]:
    """Names accepted by `distill.load_dataset`."""
    return list(BUILTIN_DATASETS)


def canonical_dataset(name: str) -> str:
    """The canonical spelling of a dataset name: lower case, ``-`` for ``_``, aliases resolved
    (``FashionMNIST`` -> ``fashion-mnist``, ``gaussian:cifar-10`` -> ``gaussian:cifar10``).
    Unknown names come back normalised but otherwise unchanged."""
    key = str(name).strip().lower().replace("_", "-")
    base, sep, rest = key.partition(":")
    return f"{DATASET_ALIASES.get(base, base)}{sep}{DATASET_ALIASES.get(rest, rest)}"


def suggest(name: str, choices: list[str] | tuple[str, ...]) -> str:
    """`` (did you mean 'X'?)`` for the closest of ``choices`` to ``name``, or an empty string."""
    import difflib

    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def probe_names() -> list[str]:
    """Registered probes in registration order (built-ins first)."""
    probe = sys.modules.get("distill.probe")
    return list(probe.list_probes()) if probe is not None else list(BUILTIN_PROBES)


Fn = TypeVar("Fn", bound=Callable[..., Any])


def registering(table: dict[str, Any], kind: str, name: str, admit: Callable[[str, Any], None]) -> Callable[[Fn], Fn]:
    """A decorator that files a function in ``table`` under ``name``: a taken name is refused, then
    ``admit(name, fn)`` may refuse the pair (ValueError) or note it."""

    def decorate(fn: Fn) -> Fn:
        if name in table:
            raise ValueError(f"{kind} name {name!r} is already registered; choose another name")
        admit(name, fn)
        table[name] = fn
        return fn

    return decorate
