"""CUDA paths of training and probing (marked gpu: skipped with a reason without a CUDA device)."""

import math

import numpy as np
import pytest
import torch

import distill
from distill.config import RunError, SupervisedConfig
from distill.probe import knn_predict, linear_probe, probe_model
from distill.store import Store
from distill.supervised import PADDING, _epoch_draws, augment, train_supervised
from distill.train import distill as run
from tests.distill.test_train import synthetic, tiny_cfg

pytestmark = pytest.mark.gpu


def test_bf16_autocast_distillation_step_tracks_fp32(tmp_path):
    data = synthetic()
    cfg = tiny_cfg(device="cuda", epochs=1, probes=[], save_every=0)
    fp32 = run(cfg, tmp_path / "fp32.h5", data=data, progress=False)
    bf16 = run(cfg.replace(precision="bf16"), tmp_path / "bf16.h5", data=data, progress=False)
    a, b = float(fp32.metrics.loss.sel(epoch=1)), float(bf16.metrics.loss.sel(epoch=1))
    assert math.isfinite(b) and b == pytest.approx(a, rel=2e-2)
    assert bf16.metrics.attrs["precision"] == "bf16" and float(bf16.metrics.distance.sel(epoch=1)) > 0
    # the stored student is fp32 and loads back on the CPU
    student = bf16.student(1, "cpu")
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in student.parameters())


def test_compiled_step_matches_eager(tmp_path):
    data = synthetic()
    cfg = tiny_cfg(device="cuda", epochs=1, probes=[], save_every=0)
    eager = run(cfg, tmp_path / "eager.h5", data=data, progress=False)
    compiled = run(cfg.replace(compile=True), tmp_path / "compiled.h5", data=data, progress=False)
    assert float(compiled.metrics.loss.sel(epoch=1)) == pytest.approx(float(eager.metrics.loss.sel(epoch=1)), rel=1e-4)


def test_nan_on_cuda_is_caught_and_nothing_non_finite_is_saved(tmp_path):
    data = synthetic()
    cfg = tiny_cfg(device="cuda", lr=1e30, epochs=3, optimizer="sgd", momentum=0.0, save_every=1, probes=[])
    with pytest.raises(RunError, match="loss became"):
        run(cfg, tmp_path / "nan.h5", data=data, progress=False)
    store = Store(tmp_path / "nan.h5")
    for epoch in store.epochs:
        assert all(torch.isfinite(v.float()).all() for v in store.student(epoch, "cpu").state_dict().values())


def test_supervised_augmentation_on_the_device_equals_the_cpu_one():
    x = torch.randn(10, 3, 8, 8)
    g_cpu, g_dev = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    expected = [augment(x[:6], g_cpu), augment(x[6:], g_cpu)]
    draws = _epoch_draws([6, 4], g_dev, torch.device("cuda"))
    from distill.supervised import flip, pad_crop

    xd = x.cuda()
    got = [flip(pad_crop(xd[s], o[0], o[1], PADDING), f) for s, (f, o) in zip((slice(0, 6), slice(6, 10)), draws)]
    assert all(torch.equal(e, g.cpu()) for e, g in zip(expected, got))


def test_supervised_bf16_on_cuda_trains_like_fp32():
    data = synthetic(n_train=128, n_test=64)
    losses = {}
    for precision in ("fp32", "bf16"):
        model = distill.build_model("convnet", data.in_shape, head="linear", num_classes=4, width=8, depth=2)
        res = train_supervised(
            model,
            data,
            SupervisedConfig.preset("tiny", precision=precision, batch_size=32),
            device="cuda",
            progress=False,
        )
        losses[precision] = res["history"]["train_loss"]
    assert all(math.isfinite(v) for v in losses["bf16"]) and losses["bf16"][-1] < losses["bf16"][0]
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=5e-2)


def test_device_probes_equal_cpu_probes():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(5, 16, generator=g) * 3
    ytr, yte = torch.randint(0, 5, (600,), generator=g), torch.randint(0, 5, (200,), generator=g)
    tr, te = centres[ytr] + torch.randn(600, 16, generator=g), centres[yte] + torch.randn(200, 16, generator=g)
    cpu = knn_predict(tr, ytr, te, k=20)
    gpu = knn_predict(tr.cuda(), ytr.cuda(), te.cuda(), k=20)
    assert gpu.is_cuda and (gpu.cpu() == cpu).float().mean() >= 0.99
    a = linear_probe(tr, ytr, te, yte, epochs=5, device="cpu")
    b = linear_probe(tr, ytr, te, yte, epochs=5, device="cuda")
    assert abs(a - b) <= 0.02
    data = synthetic()
    net = distill.build_model("convnet", data.in_shape, out_dim=64, hidden_dim=32, bottleneck_dim=16, width=8, depth=2)
    kw = dict(probes=("knn", "linear", "linear_std"), knn_k=5, linear_epochs=2)
    on_cpu = probe_model(net.eval(), data, device="cpu", **kw)
    on_gpu = probe_model(net.cuda().eval(), data, device="cuda", **kw)
    assert on_cpu.keys() == on_gpu.keys()
    assert np.allclose([on_cpu[k] for k in on_cpu], [on_gpu[k] for k in on_cpu], atol=0.03)
