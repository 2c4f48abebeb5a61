"""What a path, a plane and a surface share: the settings of evaluating a network at a point, the
inputs they draw, the memory-format choice and the stamping of their results."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

from distill.provenance import stamp
from landscape.evaluate import PathInputs, prepare_inputs
from landscape.refs import model_spec_attrs


def use_channels_last(option: bool | None, device: torch.device, model: nn.Module, ndim: int, evaluator: str) -> bool:
    """Whether the inputs and model run channels-last: never for the vmap evaluator; else as asked,
    and by default for conv nets on the CPU (results then match a contiguous evaluation to float
    rounding, ~1e-6, rather than bit for bit)."""
    if evaluator != "loop":
        return False
    if option is not None:
        return bool(option)
    return device.type == "cpu" and ndim == 4 and any(isinstance(m, nn.Conv2d) for m in model.modules())


def check_same_architecture(sd_a: Mapping[str, Tensor], sd_x: Mapping[str, Tensor], which: str = "b") -> None:
    """A one-line ValueError naming the first state_dict key where ``sd_a`` (network a) and ``sd_x``
    (network ``which``) differ in presence, shape or floating-point kind."""
    for k in list(sd_a) + [k for k in sd_x if k not in sd_a]:
        ta, tx = sd_a.get(k), sd_x.get(k)
        if ta is None or tx is None or ta.shape != tx.shape or ta.is_floating_point() != tx.is_floating_point():
            raise ValueError(
                f"models differ at state_dict key {k!r}: a has {_described(ta)}, {which} has {_described(tx)}; "
                "pass models of one architecture"
            )


def _described(t: Tensor | None) -> str:
    return "no such key" if t is None else f"{tuple(t.shape)} ({str(t.dtype).replace('torch.', '')})"


@dataclass(frozen=True)
class EvalSettings:
    """How the points are evaluated: BN statistics reset on ``bn_batches`` batches of
    ``bn_batch_size`` training images drawn with ``bn_seed``; each split evaluated
    ``eval_batch_size`` images at a time, on a subset of ``max_examples`` drawn with ``eval_seed``
    (None: the whole split)."""

    bn_batches: int
    bn_batch_size: int
    bn_seed: int
    eval_batch_size: int
    max_examples: int | None
    eval_seed: int

    @classmethod
    def of(cls, config: Any) -> EvalSettings:
        """The settings held by an analysis config (its fields of the same names)."""
        return cls(*(getattr(config, f.name) for f in fields(cls)))

    def inputs(
        self, data: Any, splits: Sequence[str], device: torch.device, need_bn: bool, channels_last: bool, empty: str
    ) -> PathInputs:
        """The BN batches (when ``need_bn``) and evaluation subsets on ``device``
        (`landscape.evaluate.prepare_inputs`); a ValueError saying ``empty`` when a split has no example."""
        drawn = {k: getattr(self, k) for k in ("bn_batches", "bn_batch_size", "bn_seed", "max_examples", "eval_seed")}
        inputs = prepare_inputs(data, splits, device=device, need_bn=need_bn, channels_last=channels_last, **drawn)
        if any(inputs.counts[s] == 0 for s in splits):
            raise ValueError(empty)
        return inputs

    def split_attrs(
        self, policy: str, split: str, inputs: PathInputs, data: Any, device: torch.device
    ) -> dict[str, Any]:
        """The attrs of a grid evaluated on one ``split`` with BN ``policy``: these settings, the
        examples evaluated, the dataset, the device and the precision (fp32)."""
        return {
            "bn_policy": policy,
            "split": split,
            "precision": "fp32",
            "device": str(device),
            **self.attrs(),
            "examples": inputs.counts[split],
            "dataset": str(getattr(data, "name", "")),
        }

    def attrs(self) -> dict[str, int]:
        """The settings as attrs (``max_examples`` shows in the examples counts)."""
        return {k: getattr(self, k) for k in ("bn_batches", "bn_batch_size", "bn_seed", "eval_batch_size", "eval_seed")}


def stamp_result(
    attrs: dict[str, Any], model: nn.Module, kind: str, device: torch.device, leave_out: Sequence[str], **extra: Any
) -> None:
    """Add ``model``'s spec and the provenance (`distill.provenance.stamp`, fp32) to ``attrs``; the
    recipe is ``attrs`` without ``leave_out`` (what does not change the numbers), plus ``extra``."""
    model_spec_attrs(attrs, model)
    recipe = {k: v for k, v in attrs.items() if k not in leave_out}
    recipe.update(extra)
    stamp(attrs, recipe, kind=kind, device=device, precision="fp32")
