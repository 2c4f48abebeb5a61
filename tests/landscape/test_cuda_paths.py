"""The batched path evaluator on CUDA (marked gpu: skipped with a reason without a CUDA device)."""

import numpy as np
import pytest
import torch

import distill
from landscape.paths import linear_path
from tests.distill.test_train import synthetic

pytestmark = pytest.mark.gpu


def _pair():
    data = synthetic(shape=(3, 8, 8))
    torch.manual_seed(0)
    a = distill.build_model("convnet", data.in_shape, head="linear", num_classes=4, width=8, depth=2)
    torch.manual_seed(1)
    b = distill.build_model("convnet", data.in_shape, head="linear", num_classes=4, width=8, depth=2)
    return data, a, b


def test_vmap_equals_loop_on_cuda_in_fp32(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    torch.backends.cuda.matmul.allow_tf32 = False  # the default; states the premise
    data, a, b = _pair()
    kw = dict(alphas=7, bn="reset", bn_batches=2, bn_batch_size=32, device="cuda")
    loop = linear_path(a, b, data, backend="loop", **kw)
    vmap = linear_path(a, b, data, backend="vmap", alpha_chunk=4, **kw)
    cpu = linear_path(a, b, data, backend="loop", **{**kw, "device": "cpu"})
    assert vmap.attrs["backend"] == "vmap" and vmap.attrs["precision"] == "fp32"
    np.testing.assert_allclose(vmap.loss.values, loop.loss.values, atol=1e-4)
    np.testing.assert_allclose(loop.loss.values, cpu.loss.values, atol=1e-4)
    assert np.abs(vmap.error.values - loop.error.values).max() <= 2 / len(data.test.labels)


def test_auto_on_cuda_decides_by_a_measurement():
    data, a, b = _pair()
    ds = linear_path(a, b, data, alphas=5, bn="reset", bn_batches=1, bn_batch_size=32, device="cuda")
    assert ds.attrs["backend"] in ("loop", "vmap")
    assert "measured" in ds.attrs["backend_rule"] and ds.attrs["backend"] in ds.attrs["backend_rule"]
