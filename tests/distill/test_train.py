import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import distill
from distill.config import DistillConfig, RunError
from distill.data import Dataset, Split
from distill.store import Store, StoreError
from distill.train import distill as run
from distill.train import distillation_loss, distillation_terms, lr_schedule, multicrop, set_teacher_mode
from landscape.cli import main as rtt


def synthetic(n_train=192, n_test=96, shape=(1, 10, 10), classes=4, seed=0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    protos = torch.randint(0, 256, (classes, *shape), generator=g)

    def split(n):
        y = torch.arange(n) % classes
        noise = torch.randint(-40, 41, (n, *shape), generator=g)
        return Split((protos[y] + noise).clamp(0, 255).to(torch.uint8), y)

    return Dataset("synthetic", split(n_train), split(n_test), [str(i) for i in range(classes)], (0.5,), (0.25,))


def tiny_cfg(**kw) -> DistillConfig:
    base = dict(
        dataset="synthetic",
        arch="convnet",
        arch_options={"width": 8, "depth": 2, "bn": True},
        out_dim=64,
        hidden_dim=32,
        bottleneck_dim=16,
        lr=1e-3,
        epochs=2,
        batch_size=64,
        save_every=1,
        probe_every=1,
        knn_k=5,
        linear_epochs=2,
        device="cpu",
    )
    return DistillConfig(**{**base, **kw})


def test_loss_matches_an_independent_computation():
    g = torch.Generator().manual_seed(0)
    t, s = torch.randn(5, 37, generator=g, dtype=torch.float64), torch.randn(5, 37, generator=g, dtype=torch.float64)
    tn, sn = t.numpy(), s.numpy()

    def softmax(z):
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    for tt, ts in [(1.0, 1.0), (0.04, 0.1)]:
        pt, ps = softmax(tn / tt), softmax(sn / ts)
        ce = float(np.mean(-(pt * np.log(ps)).sum(1)))
        kl = float(np.mean((pt * (np.log(pt) - np.log(ps))).sum(1)))
        assert distillation_loss(t, s, tt, ts).item() == pytest.approx(ce, rel=1e-6)
        assert distillation_loss(t, s, tt, ts, kind="kl").item() == pytest.approx(kl, rel=1e-5, abs=1e-9)
    # KL agrees with torch's own kl_div as well
    ref = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="batchmean")
    assert distillation_loss(t, s, kind="kl").item() == pytest.approx(ref.item(), rel=1e-5)
    center = torch.randn(37, dtype=torch.float64)
    ce_c, _ = distillation_terms(t, s, center=center)
    assert ce_c.item() == pytest.approx(distillation_loss(t - center, s).item(), rel=1e-6)


@pytest.mark.parametrize(
    "arch,options,bn_mode",
    [
        ("mlp", {"widths": [32, 16]}, "eval"),
        ("convnet", {"width": 8, "depth": 2, "bn": False}, "eval"),
        ("convnet", {"width": 8, "depth": 2, "bn": True}, "train"),
    ],
)
def test_gradient_is_zero_when_student_equals_teacher(arch, options, bn_mode):
    data = synthetic()
    # float64 so that the check is not at the mercy of float32 rounding in threaded kernels
    teacher = distill.build_model(arch, data.in_shape, out_dim=64, hidden_dim=32, bottleneck_dim=16, **options).double()
    student = distill.init_student(teacher, "alpha", alpha=0.0)
    set_teacher_mode(teacher, bn_mode)
    student.train(bn_mode == "train")
    x = distill.data.normalize(data.train.images[:32], data.mean, data.std).double()
    with torch.no_grad():
        t_out = teacher(x)
    loss = distillation_loss(t_out, student(x))
    loss.backward()
    grad = math.sqrt(sum(p.grad.pow(2).sum().item() for p in student.parameters() if p.grad is not None))
    assert grad < 1e-12
    # and a perturbed student does get a gradient (the check above can fail)
    other = distill.init_student(teacher, "alpha", alpha=0.3, seed=5)
    other.train(bn_mode == "train")
    distillation_loss(t_out, other(x)).backward()
    assert math.sqrt(sum(p.grad.pow(2).sum().item() for p in other.parameters() if p.grad is not None)) > 1e-6


def test_lr_schedule_warmup_and_cosine():
    cfg = tiny_cfg(epochs=4, warmup_epochs=1, schedule="cosine", lr=0.1)
    lr = lr_schedule(cfg, steps_per_epoch=5)
    assert len(lr) == 20
    np.testing.assert_allclose(lr[:5], [0.02, 0.04, 0.06, 0.08, 0.1])
    assert lr[5] == pytest.approx(0.1) and lr[-1] < 0.01 and np.all(np.diff(lr[5:]) < 0)


def _all_tensors(store: Store) -> dict:
    out = {}
    for name in store.names():
        state, _ = store.load_state(name)
        out.update({f"{name}/{k}": v for k, v in state.items()})
    return out


def test_same_config_twice_gives_identical_stores(tmp_path):
    data = synthetic()
    a = run(tiny_cfg(), tmp_path / "a.h5", data=data, progress=False)
    b = run(tiny_cfg(), tmp_path / "b.h5", data=data, progress=False)
    ta, tb = _all_tensors(a), _all_tensors(b)
    assert ta.keys() == tb.keys() and len(ta) > 10
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k
    ma, mb = a.metrics.drop_vars("seconds"), b.metrics.drop_vars("seconds")
    for m in (ma, mb):
        m.attrs.pop("started_at")  # provenance: when each run started
    assert ma.identical(mb)
    # a different data-order seed changes the student
    c = run(tiny_cfg(data_seed=1), tmp_path / "c.h5", data=data, progress=False)
    assert not torch.equal(
        c.student().state_dict()["backbone.features.0.0.weight"],
        a.student().state_dict()["backbone.features.0.0.weight"],
    )


def test_metrics_schema_and_checkpoints(tmp_path):
    store = run(tiny_cfg(), tmp_path / "m.h5", data=synthetic(), progress=False)
    m = store.metrics
    assert dict(m.accuracy.sizes) == {"epoch": 3, "model": 4, "probe": 3}
    assert list(m.model.values) == ["teacher", "teacher_bn", "student", "input"]
    assert list(m.probe.values) == ["knn", "linear", "linear_std"]
    for v in m.data_vars.values():
        assert v.attrs["long_name"] and v.attrs["units"]
    assert np.all((m.accuracy >= 0) & (m.accuracy <= 1))
    assert store.epochs == [0, 1, 2]
    assert m.distance.sel(epoch=0) < 1e-6 < m.distance.sel(epoch=2)
    # teacher probes are those of the stored teacher; the BN-recalibrated teacher differs for a BN net
    assert float(m.accuracy.sel(epoch=0, model="teacher", probe="knn")) == float(
        m.accuracy.sel(epoch=2, model="teacher", probe="knn")
    )
    t = store.teacher()
    assert not t.training and all(not p.requires_grad for p in t.parameters())
    assert store.config["arch"] == "convnet" and store.attrs["kind"] == "distill"


def test_no_probes_still_trains_and_records(tmp_path):
    store = run(tiny_cfg(probes=[], epochs=2, save_every=0), tmp_path / "np.h5", data=synthetic(), progress=False)
    m = store.metrics
    assert store.epochs == [0, 2] and list(m.epoch.values) == [0, 1, 2]
    assert m.accuracy.sizes["probe"] == 0 and np.all(np.isfinite(m.kl.values[1:]))


def test_resume_continues_bit_for_bit(tmp_path):
    data = synthetic()
    full = run(tiny_cfg(epochs=3), tmp_path / "full.h5", data=data, progress=False)
    part = run(tiny_cfg(epochs=2), tmp_path / "part.h5", data=data, progress=False)
    part = run(tiny_cfg(epochs=3), tmp_path / "part.h5", data=data, progress=False)
    assert part.epochs == full.epochs == [0, 1, 2, 3]
    a, b = full.student(3).state_dict(), part.student(3).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    ma, mb = part.metrics.drop_vars("seconds"), full.metrics.drop_vars("seconds")
    for m in (ma, mb):
        m.attrs.pop("started_at")  # provenance: when each run started
    assert ma.identical(mb)
    with pytest.raises(StoreError, match="lr="):
        run(tiny_cfg(epochs=3, lr=5e-4), tmp_path / "part.h5", data=data, progress=False)


def test_resume_every_saves_the_state_between_students_and_resumes_bit_for_bit(tmp_path, monkeypatch):
    """A run killed after epoch 2 of 4 with students saved only at 0 and 4 resumes from epoch 2
    (resume_every=1), not epoch 0, and ends equal to the uninterrupted run."""
    from distill import progress

    data = synthetic()
    cfg = tiny_cfg(epochs=4, save_every=0, resume_every=1, probe_every=2)
    full = run(cfg, tmp_path / "full.h5", data=data, progress=False)
    assert full.epochs == [0, 4]

    record = progress.EpochReporter.record

    def killed_after_epoch_2(self, epoch, history):
        record(self, epoch, history)
        if epoch == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(progress.EpochReporter, "record", killed_after_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, tmp_path / "part.h5", data=data, progress=False)
    monkeypatch.undo()
    part = Store(tmp_path / "part.h5")
    assert part.epochs == [0]  # no student saved at epoch 2 ...
    state = part.load_state_group("train")
    assert state is not None and state[1]["epoch"] == 2  # ... but the state to resume from is there
    trained = []
    monkeypatch.setattr(progress.EpochReporter, "record", lambda self, e, h: (trained.append(e), record(self, e, h))[1])
    part = run(cfg, tmp_path / "part.h5", data=data, progress=False)
    assert trained == [3, 4]  # epochs 1 and 2 are not trained again
    a, b = full.student(4).state_dict(), part.student(4).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert np.array_equal(full.metrics.loss.values[1:], part.metrics.loss.values[1:])


def test_nan_loss_stops_with_clear_error_and_keeps_the_store(tmp_path):
    data = synthetic()
    cfg = tiny_cfg(lr=1e30, epochs=3, optimizer="sgd", momentum=0.0, save_every=1, probes=[])
    with pytest.raises(RunError, match="loss became"):
        run(cfg, tmp_path / "nan.h5", data=data, progress=False)
    store = Store(tmp_path / "nan.h5")
    assert 0 in store.epochs
    teacher, student0 = store.teacher(), store.student(0)
    for (k, a), b in zip(teacher.state_dict().items(), student0.state_dict().values()):
        if a.is_floating_point():
            assert torch.allclose(a, b, atol=1e-6), k
        assert torch.isfinite(b.float()).all()


def test_multicrop_views_shapes_and_seeded():
    x = torch.randn(6, 3, 32, 32)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    v1, v2 = multicrop(x, 2, 3, g1), multicrop(x, 2, 3, g2)
    assert [tuple(v.shape) for v in v1] == [(6, 3, 32, 32)] * 2 + [(6, 3, 14, 14)] * 3
    assert all(torch.equal(a, b) for a, b in zip(v1, v2))
    assert not torch.equal(v1[0], v1[1])


def test_config_validation_and_cli_errors(tmp_path, capsys):
    with pytest.raises(ValueError, match="lr"):
        DistillConfig(lr=-1)
    with pytest.raises(ValueError, match="alpha"):
        DistillConfig(alpha=2)
    with pytest.raises(ValueError, match="optimizer"):
        DistillConfig(optimizer="lbfgs")
    code = rtt(["distill", "--out", str(tmp_path / "x.h5"), "--dataset", "nope"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "nope" in err  # a usage error
    code = rtt(["distill", "--out", str(tmp_path / "x.h5"), "--epochs", "0"])
    assert code == 1 and "epochs" in capsys.readouterr().err
    assert not (tmp_path / "x.h5").exists()


class _Clock:
    """A stand-in for the ``time`` module of distill.train: every perf_counter() call is one second later."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        self.now += 1.0
        return self.now


def test_epoch_0_announces_its_probes_and_reports_their_time(tmp_path, monkeypatch, caplog):
    import logging

    import distill.train as train

    monkeypatch.setattr(train, "time", _Clock())
    cfg = tiny_cfg(epochs=1, probes=["knn"])
    with caplog.at_level(logging.INFO, logger="distill.progress"):
        store = run(cfg, tmp_path / "t.h5", data=synthetic(), progress=False)
    notes = [r.getMessage() for r in caplog.records if r.name == "distill.progress"]
    run_name = cfg.run_name
    expect = [
        f"{run_name} epoch 0: probing the teacher (knn, embedding 192 + 96 images)",
        f"{run_name} epoch 0: probing the BN-recalibrated teacher (knn, embedding 192 + 96 images)",
        f"{run_name} epoch 0: probing the input (raw pixels) (knn)",
        f"{run_name} epoch 0: probing the student (knn, embedding 192 + 96 images)",
        f"{run_name} epoch 1: probing the student (knn, embedding 192 + 96 images)",  # no progress bar
    ]
    assert notes == expect
    # the clock moves one second per reading: epoch 0 is timed from before its probes to after them
    assert list(store.metrics.seconds.values) == [1.0, 1.0]


def test_the_probe_tables_leave_out_unprobed_epochs():
    import xarray as xr

    from distill.train import probed_accuracy, summary_table

    acc = np.full((3, 4, 1), np.nan)  # (epoch, model, probe); epoch 1 was not probed
    acc[0] = [[0.5], [0.5], [0.5], [0.4]]
    acc[2] = [[0.5], [0.6], [0.7], [0.4]]
    m = xr.Dataset(
        {"accuracy": (("epoch", "model", "probe"), acc)},
        coords={"epoch": [0, 1, 2], "model": ["teacher", "teacher_bn", "student", "input"], "probe": ["knn"]},
    )
    assert list(probed_accuracy(m).epoch.values) == [0, 2]
    assert probed_accuracy(m).sel(probe="knn").to_pandas().shape == (2, 4)
    table = summary_table(m)
    assert "nan" not in table.lower() and table.splitlines()[0].startswith("epoch 2")
    assert table.splitlines()[-1].split() == ["gain", "+10.00"]
