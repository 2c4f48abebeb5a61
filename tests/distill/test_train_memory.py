"""The memory-saving order of the distillation step changes no number."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import distill.probe as probe
from distill.init import init_student, parameter_distance
from distill.train import (
    build_teacher,
    cross_entropy_from_log_probs,
    cross_entropy_to_probs,
    set_teacher_mode,
    student_log_probs,
    teacher_probs,
)
from distill.train import distill as run
from tests.distill.test_train import synthetic, tiny_cfg


def test_distillation_matches_a_plain_loop_bit_for_bit(tmp_path):
    data = synthetic()
    cfg = tiny_cfg(probes=[], save_every=0)
    student_run = run(cfg, tmp_path / "a", data=data, progress=False).student()

    teacher = set_teacher_mode(build_teacher(cfg, data.in_shape), "eval")
    student = init_student(teacher, cfg.init, alpha=cfg.alpha, seed=cfg.noise_seed).train()
    params = list(student.parameters())
    opt = torch.optim.AdamW(
        [{"params": [p for p in params if p.ndim > 1]}, {"params": [p for p in params if p.ndim <= 1]}],
        lr=cfg.lr,
        eps=cfg.adam_eps,
        weight_decay=0.0,
    )
    m, s = torch.tensor(data.mean).view(-1, 1, 1), torch.tensor(data.std).view(-1, 1, 1)
    n = len(data.train)
    for epoch in range(1, cfg.epochs + 1):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.data_seed * 1_000_003 + epoch))
        for start in range(0, n, cfg.batch_size):
            x = (data.train.images[order[start : start + cfg.batch_size]].float() / 255 - m) / s
            with torch.no_grad():
                t_out = teacher(x)
            loss = F.cross_entropy(student(x), F.softmax(t_out / 1.0, dim=-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
    want, got = student.state_dict(), student_run.state_dict()
    assert want.keys() == got.keys()
    for k in want:
        assert torch.equal(want[k], got[k]), k


def test_teacher_probs_equal_the_softmax_with_a_division_by_one():
    t = torch.randn(4, 1000, generator=torch.Generator().manual_seed(0)) * 30
    assert torch.equal(teacher_probs(t), F.softmax(t / 1.0, dim=-1))
    assert torch.equal(teacher_probs(t, 0.04), F.softmax(t / 0.04, dim=-1))


def test_parameter_distance_equals_two_float64_copies():
    g = torch.Generator().manual_seed(0)
    a, b = nn.Linear(300, 70), nn.Linear(300, 70)
    with torch.no_grad():
        for p, q in zip(a.parameters(), b.parameters()):
            p.copy_(torch.randn(p.shape, generator=g))
            q.copy_(p + 1e-3 * torch.randn(p.shape, generator=g))
    pairs = [(p.detach(), q.detach()) for p, q in zip(a.parameters(), b.parameters())]
    sq = sum(float((p.double() - q.double()).pow(2).sum()) for p, q in pairs)
    ref = sum(float(q.double().pow(2).sum()) for _, q in pairs)
    assert parameter_distance(a, b) == sq**0.5
    assert parameter_distance(a, b, relative=True) == sq**0.5 / ref**0.5


def test_knn_chunks_bounded_by_the_score_budget_give_the_same_predictions(monkeypatch):
    g = torch.Generator().manual_seed(0)
    tr, te = torch.randn(300, 8, generator=g), torch.randn(50, 8, generator=g)
    y = torch.randint(0, 3, (300,), generator=g)
    whole = probe.knn_predict(tr, y, te, k=5)
    rows = []
    real_addmm = torch.addmm
    monkeypatch.setattr(probe, "_KNN_SCORES", 7 * 300)  # 7 queries per chunk
    monkeypatch.setattr(torch, "addmm", lambda *a, **kw: rows.append(a[1].shape[0]) or real_addmm(*a, **kw))
    assert torch.equal(probe.knn_predict(tr, y, te, k=5, gemm="torch", workers=1), whole)
    assert max(rows) == 7 and sum(rows) == 50
    rows.clear()  # two chunks in flight share the budget: 3 queries each
    assert torch.equal(probe.knn_predict(tr, y, te, k=5, gemm="torch", workers=2), whole)
    assert max(rows) == 3 and sum(rows) == 50


@pytest.mark.parametrize(("batch", "classes", "temp"), [(7, 1000, 1.0), (5, 333, 0.1), (256, 4096, 1.0)])
def test_cross_entropy_from_log_probs_equals_f_cross_entropy_value_and_gradient(batch, classes, temp):
    g = torch.Generator().manual_seed(batch)
    logits = (torch.randn(batch, classes, generator=g) * 5).requires_grad_(True)
    pt = F.softmax(torch.randn(batch, classes, generator=g) * 3, dim=-1)
    want = F.cross_entropy(logits / temp if temp != 1.0 else logits, pt)
    (want_grad,) = torch.autograd.grad(want, logits)
    got = cross_entropy_from_log_probs(pt, student_log_probs(logits, temp))
    (got_grad,) = torch.autograd.grad(got, logits)
    assert torch.equal(got, want) and torch.equal(got_grad, want_grad)
    assert torch.equal(cross_entropy_to_probs(pt, logits, temp), want)
    ref = -(F.log_softmax(logits.double() / temp, dim=1) * pt.double()).sum(1).mean()
    assert abs(float(got.detach()) - float(ref.detach())) < 1e-5 * abs(float(ref.detach()))
