"""Collapse / escape metrics against numpy on known inputs, and their per-epoch record in distill."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distill.config import DistillConfig
from distill.dynamics import dead_fraction, effective_rank, mean_cosine
from distill.train import distill as run
from tests.distill.test_train import synthetic


def test_effective_rank_of_a_matrix_with_a_known_spectrum():
    rng = np.random.default_rng(0)
    u, _ = np.linalg.qr(rng.standard_normal((50, 6)))
    v, _ = np.linalg.qr(rng.standard_normal((8, 6)))
    s = np.array([5.0, 3.0, 1.0, 0.5, 0.1, 0.0])
    z = u @ np.diag(s) @ v.T
    p = s[s > 0] / s.sum()
    assert effective_rank(torch.from_numpy(z), center=False) == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-9)
    assert effective_rank(torch.ones(10, 4) * 3.0) == 0.0  # centred: all inputs equal -> collapsed to nothing
    assert effective_rank(torch.from_numpy(np.eye(5)), center=False) == pytest.approx(5.0)


def test_dead_fraction_and_mean_cosine_against_numpy():
    rng = np.random.default_rng(1)
    z = rng.standard_normal((20, 5))
    z[:, 1] = -np.abs(z[:, 1])
    z[:, 3] = 0.0
    assert dead_fraction(torch.from_numpy(z)) == pytest.approx(0.4)
    conv = torch.zeros(3, 4, 2, 2)
    conv[:, 0] = 1.0
    assert dead_fraction(conv) == pytest.approx(0.75)
    n = len(z)
    cos = [z[i] @ z[j] / np.linalg.norm(z[i]) / np.linalg.norm(z[j]) for i in range(n) for j in range(n) if i != j]
    assert mean_cosine(torch.from_numpy(z)) == pytest.approx(np.mean(cos), rel=1e-9)
    assert mean_cosine(torch.ones(4, 3)) == pytest.approx(1.0)


def test_distill_records_dynamics_per_epoch(tmp_path):
    cfg = DistillConfig(
        dataset="synthetic",
        arch="convnet",
        arch_options={"width": 8, "depth": 2, "bn": True},
        out_dim=64,
        hidden_dim=32,
        bottleneck_dim=16,
        lr=1e-3,
        epochs=1,
        batch_size=64,
        save_every=1,
        probe_every=0,
        probes=[],
        device="cpu",
        dynamics=True,
        dynamics_examples=48,
    )
    store = run(cfg, tmp_path / "d.h5", data=synthetic())
    m = store.metrics
    rank = m.effective_rank.sel(model=["teacher", "student"])
    assert rank.shape == (2, 2) and np.isfinite(rank.values).all()
    assert list(m.layer.values)[-1] == "embedding" and len(m.layer) == 3  # 2 ReLUs + embedding
    t = m.layer_cosine.sel(model="teacher").values
    np.testing.assert_allclose(t, np.broadcast_to(t[0], t.shape), rtol=1e-6)  # a frozen teacher stays put
    # the epoch-0 student is the teacher up to alpha = 1e-10
    np.testing.assert_allclose(m.layer_cosine.sel(epoch=0, model="student"), t[0], rtol=1e-5)
    assert not np.isclose(m.effective_rank.sel(epoch=1, model="student"), rank.values[0, 0], rtol=1e-6)
    for v in ("effective_rank", "dead_fraction", "layer_cosine", "layer_effective_rank"):
        assert m[v].attrs["long_name"] and m[v].attrs["units"]
    # resuming to 2 epochs keeps the earlier records and adds the new epoch
    resumed = run(cfg.replace(epochs=2), tmp_path / "d.h5", data=synthetic()).metrics
    np.testing.assert_array_equal(resumed.layer_cosine.sel(epoch=[0, 1]).values, m.layer_cosine.values)
    assert np.isfinite(resumed.effective_rank.sel(epoch=2, model=["teacher", "student"]).values).all()
