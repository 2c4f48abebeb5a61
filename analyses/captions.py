"""A result's setting in words, from its attrs alone: dataset and architecture names as a paper writes
them, and figure titles."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import xarray as xr

DATASET_NAME = {
    "fashion-mnist": "Fashion-MNIST",
    "mnist": "MNIST",
    "cifar10": "CIFAR-10",
    "cifar100": "CIFAR-100",
    "svhn": "SVHN",
}
TRAIN_IMAGES = {"fashion-mnist": 60_000, "mnist": 60_000, "cifar10": 50_000, "cifar100": 50_000}
NUM_CLASSES = {"fashion-mnist": 10, "mnist": 10, "cifar10": 10, "cifar100": 100}  # all equally sized


def dataset_name(name: str) -> str:
    """A dataset's name as a paper writes it: ``fashion-mnist`` -> ``Fashion-MNIST``,
    ``gaussian:cifar10`` -> ``Gaussian noise (CIFAR-10 shape)``."""
    kind, _, base = str(name).partition(":")
    if base:
        return f"{kind.capitalize()} noise ({dataset_name(base)} shape)"
    return DATASET_NAME.get(kind, kind)


def arch_name(arch: str, options: dict[str, Any] | None = None) -> str:
    """An architecture as a paper writes it: ``convnet`` with depth 4, width 32 -> ``4x32 ConvNet``,
    ``resnet20`` -> ``ResNet20``, ``vit_tiny`` -> ``ViT-Tiny`` (BN is left to :func:`describe`)."""
    options = options or {}
    arch = str(arch)
    if arch == "convnet":
        depth, width = options.get("depth"), options.get("width")
        return f"{depth}x{width} ConvNet" if depth and width else "ConvNet"
    if arch == "mlp":
        return "MLP"
    for prefix, nice in (("resnet", "ResNet"), ("vgg", "VGG")):
        if arch.startswith(prefix):
            return nice + arch[len(prefix) :]
    if arch.startswith("vit"):
        return "ViT-" + "-".join(p.capitalize() for p in arch.split("_")[1:]) if "_" in arch else "ViT"
    return arch


def _configs(ds: xr.Dataset) -> list[dict[str, Any]]:
    """The distillation configs in a result's ``config`` attr (one config or a dict of them), those that
    name a dataset and an architecture (supervised children's recipes do not)."""
    try:
        raw = json.loads(ds.attrs.get("config", "{}"))
    except (TypeError, ValueError):
        return []
    if not isinstance(raw, dict):
        return []
    found = [raw] if "arch" in raw else [v for v in raw.values() if isinstance(v, dict)]
    return [c for c in found if c.get("dataset") and c.get("arch")]


def _train_images(cfg: dict[str, Any]) -> int | None:
    """The training images of a config without ``subset``: the whole split, or the share of the classes it
    keeps (:data:`NUM_CLASSES`: equally sized); None when unknown."""
    name = str(cfg["dataset"]).split(":")[-1]
    full = TRAIN_IMAGES.get(name)
    classes = cfg.get("classes")
    if full is None or not classes:
        return full
    return full * len(classes) // NUM_CLASSES[name]


def _joined(values: Sequence[Any], fmt: Callable[[Any], str] = str) -> str:
    """Distinct values in first-seen order, formatted and joined with `` / ``."""
    seen: list[Any] = []
    for v in values:
        if v not in seen:
            seen.append(v)
    return " / ".join(fmt(v) for v in seen)


def describe(ds: xr.Dataset, training: bool = True) -> str:
    """The setting of a result in words, from its attrs alone (never its command line): architecture,
    dataset, the preset's scale and the number of seeds, e.g. ``4x32 ConvNet, Fashion-MNIST, 2,000 images,
    3 epochs, 3 seeds``. Values that differ between the runs are joined (``500 / 2,000 images``).
    ``training=False`` leaves out the images and epochs of distillation (random teachers, not trained)."""
    a = ds.attrs
    configs = _configs(ds)
    parts: list[str] = []
    if configs:
        names = _joined([arch_name(c["arch"], c.get("arch_options")) for c in configs])
        bn = {(c.get("arch_options") or {}).get("bn") for c in configs if c["arch"] == "convnet"}
        with_bn = {("False", "True"): " with and without BN", ("True",): " with BN", ("False",): " without BN"}
        names += with_bn.get(tuple(sorted(map(str, bn))), "")  # nothing where a config does not say
        parts += [names, _joined([c["dataset"] for c in configs], dataset_name)]
        if training:
            sizes = [c.get("subset") or _train_images(c) for c in configs]
            if all(sizes):
                parts.append(_joined(sorted(sizes), lambda n: f"{int(n):,}") + " images")
            parts.append(_joined(sorted(int(c["epochs"]) for c in configs)) + " epochs")
    else:  # results that keep their setting in attrs of their own
        if a.get("arch"):
            parts.append(arch_name(str(a["arch"])))
        if a.get("dataset"):
            parts.append(dataset_name(str(a["dataset"])))
        images = a.get("train_subset") or a.get("train_images")
        if images:
            parts.append(f"{int(images):,} images")
    try:
        n = len(json.loads(a["seeds"]))
        parts.append(f"{n} seed{'s' if n != 1 else ''}")
    except (KeyError, TypeError, ValueError):
        pass
    return ", ".join(parts)


def title(ds: xr.Dataset, what: str, note: str = "", training: bool = True) -> str:
    """A figure's title: ``what`` it shows, then a line with the setting (:func:`describe`) and a ``note``
    (what the bands mean, say)."""
    setting = describe(ds, training=training)
    second = "; ".join(p for p in (setting, note) if p)
    return f"{what}\n{second}" if second else what
