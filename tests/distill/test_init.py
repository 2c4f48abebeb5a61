import pytest
import torch

import distill
from distill.init import fresh_like, init_student, parameter_distance


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return distill.build_model("resnet18", (3, 32, 32), head=None)


def _random_tensors(model):
    """Names of parameters with a random (not constant) initialisation."""
    return [n for n, p in model.named_parameters() if p.numel() > 1 and p.std() > 0]


@pytest.mark.parametrize("alpha", [0.25, 0.5, 0.75])
def test_variance_preserving_keeps_std_within_5_percent(teacher, alpha):
    student = init_student(teacher, "alpha", alpha=alpha, seed=1)
    t = dict(teacher.named_parameters())
    names = [n for n in _random_tensors(teacher) if n.endswith("weight")]
    assert len(names) >= 20
    for n, p in student.named_parameters():
        if n in names:
            ratio = (p.std() / t[n].std()).item()
            assert abs(ratio - 1) < 0.05, (n, ratio)
    # and plain interpolation would not: it shrinks the std by sqrt(a^2 + (1-a)^2)
    noise = dict(fresh_like(teacher, 1).named_parameters())
    n = names[-1]
    plain = (1 - alpha) * t[n] + alpha * noise[n]
    assert plain.std() / t[n].std() < 0.8


def test_endpoints_and_modes(teacher):
    t = teacher.state_dict()
    s0 = init_student(teacher, "alpha", alpha=0.0, seed=1).state_dict()
    assert all(torch.equal(s0[k], t[k]) for k in t)
    s1 = init_student(teacher, "alpha", alpha=1.0, seed=1).state_dict()
    ind = init_student(teacher, "independent", seed=1).state_dict()
    fresh = fresh_like(teacher, 1).state_dict()
    params = dict(teacher.named_parameters())
    for k in params:
        assert torch.equal(s1[k], fresh[k]) and torch.equal(ind[k], fresh[k]), k
    tiny = init_student(teacher, "alpha", alpha=1e-10, seed=1)
    assert parameter_distance(tiny, teacher, relative=True) < 1e-8
    assert parameter_distance(tiny, teacher) > 0
    cp = init_student(teacher, "copy").state_dict()
    assert all(torch.equal(cp[k], t[k]) for k in t)


def test_eps_adds_scaled_noise_to_random_tensors_only_with_scope_random(teacher):
    s = dict(init_student(teacher, "eps", eps=0.1, seed=3, scope="random").named_parameters())
    noise = dict(fresh_like(teacher, 3).named_parameters())
    for n, p in teacher.named_parameters():
        if torch.equal(p, noise[n]):  # BN scale/shift: deterministic, untouched
            assert torch.equal(s[n], p)
        else:
            torch.testing.assert_close(s[n], p + 0.1 * noise[n], rtol=0, atol=1e-6)


def test_seeded_and_teacher_untouched(teacher):
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    a = init_student(teacher, "alpha", alpha=0.5, seed=7).state_dict()
    b = init_student(teacher, "alpha", alpha=0.5, seed=7).state_dict()
    c = init_student(teacher, "alpha", alpha=0.5, seed=8).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    with pytest.raises(ValueError, match="mode"):
        init_student(teacher, "nope")
