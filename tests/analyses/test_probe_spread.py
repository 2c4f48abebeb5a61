"""analyses.probe_spread: the default probe with the teacher's seed is the tables' number for the same
teacher, and the reference fits are the authors' probe on the same features."""

from __future__ import annotations

import numpy as np
import torch

from analyses.probe_spread import spread
from analyses.tables import teacher_probes
from distill.data import Dataset, Split


def _data(n_train: int = 60, n_test: int = 30) -> Dataset:
    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (n_train + n_test, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 3, (n_train + n_test,), generator=g)
    return Dataset(
        "tiny",
        Split(imgs[:n_train], labels[:n_train]),
        Split(imgs[n_train:], labels[n_train:]),
        ["a", "b", "c"],
        (0.5,) * 3,
        (0.25,) * 3,
    )


def test_seed_zero_of_the_default_probe_is_the_tables_number(tmp_path):
    data = _data()
    acc = spread("vgg11", 1, data, "cpu", {"paper": 3, "reference": 5})
    assert acc.dims == ("recipe", "probe_seed") and acc.shape == (2, 5)
    assert np.isnan(acc.sel(recipe="paper").values[3:]).all() and np.isfinite(acc.values[1]).all()
    table = teacher_probes("vgg11", 1, data, "cpu", None, {}, tmp_path / "t.nc")
    # the tables fit their probe with probe_seed = teacher seed (1): the second fit here
    assert float(acc.sel(recipe="paper", probe_seed=1)) == float(table.sel(model="teacher", probe="linear"))
    # the reference fits are the authors' probe (decay 0.01, one batch order replayed) on the same features
    from distill.config import DistillConfig
    from distill.probe import embed_splits, linear_probe
    from distill.train import build_teacher, set_teacher_mode

    cfg = DistillConfig(arch="vgg11", seed=1)
    teacher = set_teacher_mode(build_teacher(cfg, data.in_shape), cfg.teacher_bn)
    tr, tr_y, te, te_y = embed_splits(teacher.backbone, data)
    for p in range(5):
        want = linear_probe(tr, tr_y, te, te_y, seed=p, weight_decay=0.01, reshuffle=False)
        assert float(acc.sel(recipe="reference", probe_seed=p)) == want
