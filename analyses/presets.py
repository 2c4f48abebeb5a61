"""What the scripts' presets share: the data a preset runs on (:class:`Scale`), the small networks of the
CPU presets, the supervised recipes of their children, and variants of a preset (:func:`variant`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Scale:
    """The images a preset runs on: a dataset, its training images (``subset``, None: all) and the test
    images kept (``n_test``, None: all). Called with a script's own settings, it gives the preset."""

    dataset: str = "fashion-mnist"
    subset: int | None = 64
    n_test: int | None = 50

    def __call__(self, **settings: Any) -> dict[str, Any]:
        """The preset: ``dataset``, ``subset`` and ``n_test``, then ``settings``."""
        return {"dataset": self.dataset, "subset": self.subset, "n_test": self.n_test, **settings}


SMOKE = Scale()  # seconds: 64 Fashion-MNIST images, 50 test images
CIFAR10 = Scale("cifar10", None, None)  # the paper's: the full CIFAR-10 splits (50k / 10k)


def variant(preset: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A copy of ``preset`` with ``changes``; a change that is a dict updates the preset's dict of that
    name key by key (``variant(gpu, cfg=dict(epochs=30))`` keeps the rest of ``cfg``)."""
    out = dict(preset)
    for k, v in changes.items():
        out[k] = {**out[k], **v} if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# The CPU-sized setting most scripts share (PAPER.md / results/README.md): a BN-free 4-layer ConvNet with a
# 4,096-way DINO head, AdamW lr 1e-3, batch 64, alpha 1e-10. ``bn=True`` gives its BN twin.
def small_net(width: int = 32, depth: int = 4, bn: bool = False, **changes: Any) -> dict[str, Any]:
    """DistillConfig fields of the small ConvNet (``changes`` win)."""
    return {
        "arch": "convnet",
        "arch_options": {"width": width, "depth": depth, "bn": bn},
        "out_dim": 4096,
        "hidden_dim": 512,
        "bottleneck_dim": 128,
        "lr": 1e-3,
        "batch_size": 64,
        "save_every": 0,
        "device": "cpu",
        **changes,
    }


SMOKE_HEAD = dict(out_dim=64, hidden_dim=32, bottleneck_dim=16)  # the smoke presets' DINO head
# the smoke presets' student: a 2x8 ConvNet with that head, one epoch at batch 32
SMOKE_NET = small_net(width=8, depth=2, **SMOKE_HEAD, batch_size=32, epochs=1)


def sgd(lr: float, batch_size: int, augment: str = "none", epochs: int = 1) -> dict[str, Any]:
    """SupervisedConfig fields of the CPU presets' children: plain SGD, no schedule."""
    return dict(epochs=epochs, milestones=[], lr=lr, augment=augment, batch_size=batch_size)


# gpu-quick's children: 4 epochs of the paper's recipe (x0.1 at 2 and 3) at lr 0.1 under bf16 autocast
QUICK_CHILDREN = dict(epochs=4, milestones=[2, 3], lr=0.1, precision="bf16")
