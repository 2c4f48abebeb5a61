"""The compiled path evaluator: one graph for every alpha and for later paths of the architecture."""

from __future__ import annotations

import numpy as np
import torch

from landscape.evaluate import compiled_forward
from landscape.paths import linear_path
from tests.landscape.test_paths import COMMON, data, make_model  # noqa: F401 - data is a fixture


class CountingBackend:
    """A torch.compile backend that counts the graphs it receives and runs them eagerly."""

    __name__ = "counting"

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list) -> object:
        self.graphs += 1
        return gm.forward


# every batch has one shape (96 train and 64 test images in batches of 32): one graph, since each
# input shape is a graph of its own (dynamic=False)
OPTS = {**COMMON, "eval_batch_size": 32}


def test_ten_alphas_and_a_second_path_compile_one_graph(data):  # noqa: F811
    count = CountingBackend()
    a, b = make_model("bn", 0), make_model("bn", 1)
    eager = linear_path(a, b, data, alphas=10, bn="interpolate", backend="loop", **OPTS)
    compiled = linear_path(a, b, data, alphas=10, bn="interpolate", backend="loop", compile=count, **OPTS)
    assert compiled.attrs["compile"] == "counting" and eager.attrs["compile"] == "none"
    np.testing.assert_allclose(compiled.loss.values, eager.loss.values, rtol=0, atol=1e-6)
    np.testing.assert_allclose(compiled.error.values, eager.error.values, rtol=0, atol=1e-6)
    assert count.graphs == 1
    # the next level of a pruning run: same architecture, new values (80 % of weights zeroed)
    pruned = make_model("bn", 2)
    with torch.no_grad():
        for p in pruned.parameters():
            p.mul_(torch.rand(p.shape, generator=torch.Generator().manual_seed(3)) < 0.2)
    eager2 = linear_path(pruned, b, data, alphas=3, bn="interpolate", backend="loop", **OPTS)
    compiled2 = linear_path(pruned, b, data, alphas=3, bn="interpolate", backend="loop", compile=count, **OPTS)
    np.testing.assert_allclose(compiled2.loss.values, eager2.loss.values, rtol=0, atol=1e-6)
    assert count.graphs == 1
    # another architecture is another graph
    compiled_forward(make_model("free", 0), count)(make_model("free", 0).state_dict(), data.test.images[:4].float())
    assert count.graphs == 2
