"""Names of the registered models, datasets and probes, answered without importing torch.

The command line builds its help (choices of ``--arch``, ``--dataset``, ``--probes``) from
these. The built-in names are listed here; names registered later (plugins, user code) live in
the registries of :mod:`distill.models` and :mod:`distill.probe`, which are consulted whenever
they are already imported (registering a model or probe imports them).
``tests/distill/test_registry.py`` checks that the lists match the real registries.
"""

from __future__ import annotations

import sys

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
BUILTIN_PROBES: tuple[str, ...] = ("knn", "linear", "linear_std", "knn_std")


def model_names() -> list[str]:
    """Registered architectures, sorted (built-ins plus any registered in this process)."""
    models = sys.modules.get("distill.models")
    return list(models.list_models()) if models is not None else sorted(BUILTIN_MODELS)


def dataset_names() -> list[str]:
    """Names accepted by :func:`distill.load_dataset`."""
    return list(BUILTIN_DATASETS)


def probe_names() -> list[str]:
    """Registered probes in registration order (built-ins first)."""
    probe = sys.modules.get("distill.probe")
    return list(probe.list_probes()) if probe is not None else list(BUILTIN_PROBES)
