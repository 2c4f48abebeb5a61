"""The device-side epoch sums and the NaN/Inf guard (its CUDA logic exercised on the CPU)."""

import math

import pytest
import torch

from distill.losses import EntropyLog, teacher_entropy
from distill.meter import EpochMeter, NonFinite
from distill.train import distill as run
from tests.distill.test_train import synthetic, tiny_cfg


def test_epoch_means_are_weighted_means():
    m = EpochMeter(torch.device("cpu"))
    for step, (v, w) in enumerate([(1.0, 2), (4.0, 1), (2.5, 1)]):
        m.add("loss", torch.tensor(v), step, weight=w)
        m.add("norm", torch.tensor(10.0 * v), step)
    means = m.epoch_means()
    assert means["loss"] == pytest.approx((2 + 4 + 2.5) / 4) and means["norm"] == pytest.approx(25.0)


def test_cpu_guard_raises_at_the_bad_step():
    m = EpochMeter(torch.device("cpu"))
    m.add("loss", torch.tensor(1.0), 0)
    with pytest.raises(NonFinite) as info:
        m.add("loss", torch.tensor(math.inf), 1)
    assert info.value.step == 1 and info.value.value == math.inf


def test_deferred_guard_reports_the_first_bad_step_within_check_every():
    m = EpochMeter(torch.device("cpu"), check_every=3)
    m.sync_free = True  # the CUDA code path, on CPU tensors
    m.add("loss", torch.tensor(1.0), 10)
    m.add("loss", torch.tensor(math.nan), 11)  # not read yet
    with pytest.raises(NonFinite) as info:
        m.add("loss", torch.tensor(math.inf), 12)  # third add: the check reads the flag
    assert info.value.step == 11 and math.isnan(info.value.value)
    # a bad value after the last periodic check is still caught by the epoch's read
    m = EpochMeter(torch.device("cpu"), check_every=50)
    m.sync_free = True
    m.add("loss", torch.tensor(2.0), 0)
    m.add("loss", torch.tensor(-math.inf), 1)
    with pytest.raises(NonFinite, match="step 1"):
        m.epoch_means()
    # other names are not guarded
    m = EpochMeter(torch.device("cpu"))
    m.add("norm", torch.tensor(math.nan), 0)
    assert math.isnan(m.epoch_means()["norm"])


def test_teacher_entropy_matches_numpy():
    import numpy as np

    t = torch.randn(4, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    p = np.exp(t.numpy() / 0.5)
    p /= p.sum(1, keepdims=True)
    np.testing.assert_allclose(teacher_entropy(t, 0.5).numpy(), -(p * np.log(p)).sum(1), rtol=1e-10)


def test_logged_kl_from_the_one_pass_equals_the_per_step_value(tmp_path, monkeypatch):
    data = synthetic()
    cfg = tiny_cfg(epochs=2, probes=[], save_every=0)
    once = run(cfg, tmp_path / "once.h5", data=data, progress=False).metrics
    init = EntropyLog.__init__

    def per_step_init(self, *args, **kwargs):  # the entropy taken at every step, as for a changing teacher
        init(self, *args, **kwargs)
        self.fixed = False

    monkeypatch.setattr(EntropyLog, "__init__", per_step_init)
    per_step = run(cfg, tmp_path / "step.h5", data=data, progress=False).metrics
    assert once.loss.values[1:] == pytest.approx(per_step.loss.values[1:], rel=1e-12)
    kl_once, kl_step = once.kl.values[1:], per_step.kl.values[1:]
    assert all(math.isfinite(v) for v in kl_once) and kl_once == pytest.approx(kl_step, abs=1e-5)
    assert not (abs(kl_once - once.loss.values[1:]) < 1e-3).any()  # KL is not the cross-entropy itself
