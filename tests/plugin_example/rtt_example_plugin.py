"""A plugin as a user would write it, outside the package: one model and one probe.

Used by tests/test_plugins.py through ``--plugin rtt_example_plugin`` and through an entry point
in the ``random_teachers.plugins`` group.
"""

from __future__ import annotations

from torch import nn

import distill


class FlatNet(nn.Module):
    """Flatten, one linear layer, ReLU: the embedding has ``width`` features."""

    def __init__(self, in_shape: tuple[int, int, int], width: int) -> None:
        super().__init__()
        c, h, w = in_shape
        self.layers = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, width), nn.ReLU())
        self.embed_dim = width

    def forward(self, x):
        return self.layers(x)


@distill.register_model("example_flatnet")
def example_flatnet(in_shape: tuple[int, int, int], *, width: int = 12) -> nn.Module:
    return FlatNet(in_shape, width)


@distill.register_probe("class0_share")
def class0_share(train_x, train_y, test_x, test_y, *, num_classes, seed, device, **options) -> float:
    """Not a real probe: the share of test images labelled 0, a number the test knows in advance."""
    assert train_x.shape[0] == train_y.shape[0] and test_x.shape[0] == test_y.shape[0]
    return int((test_y == 0).sum()) / len(test_y)
