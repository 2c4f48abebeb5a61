"""The datasets the analyses run on: loaded with the test split cut for smoke presets, or cut to some
of their classes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from analyses.context import Context


def tiny_test(data: Any, n_test: int | None) -> Any:
    """``data`` with its test split cut to a stratified ``n_test`` images (None: unchanged); smoke presets."""
    import dataclasses

    from distill.data import Split, stratified_indices

    if n_test is None or n_test >= len(data.test):
        return data
    idx = stratified_indices(data.test.labels, n_test, data.num_classes, 0)
    return dataclasses.replace(data, test=Split(data.test.images[idx], data.test.labels[idx]))


def load(name: str, ctx: Context, subset: int | None = None, n_test: int | None = None, seed: int = 0) -> Any:
    """A dataset (``distill.load_dataset``) with ``ctx.root`` for CIFAR, the test split optionally cut."""
    from distill.data import load_dataset

    root = ctx.root if "cifar" in name else None
    return tiny_test(load_dataset(name, root=root, subset=subset, seed=seed), n_test)


def keep_classes(data: Any, classes: Sequence[int]) -> Any:
    """The images of ``classes`` only (both splits), relabelled 0..len(classes)-1 in the given order."""
    import dataclasses

    import torch

    from distill.data import Split

    def split(s: Any) -> Any:
        lut = torch.full((int(s.labels.max()) + 1,), -1, dtype=torch.long)
        lut[torch.as_tensor(list(classes))] = torch.arange(len(classes))
        new = lut[s.labels]
        keep = new >= 0
        return Split(s.images[keep], new[keep])

    name = f"{data.name}[{','.join(map(str, classes))}]"
    kept = [data.classes[c] for c in classes]
    return dataclasses.replace(data, name=name, train=split(data.train), test=split(data.test), classes=kept)
