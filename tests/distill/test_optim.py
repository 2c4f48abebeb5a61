"""distill.optim's Adam/AdamW give torch.optim's numbers and state, without importing torch._dynamo."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from distill.optim import Adam, AdamW

PAIRS = [(AdamW, torch.optim.AdamW), (Adam, torch.optim.Adam)]


def _model(seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    m = nn.Sequential(nn.Linear(7, 5), nn.BatchNorm1d(5), nn.Linear(5, 3))
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return m


def _groups(m: nn.Module) -> list[dict]:
    ps = list(m.parameters())
    return [{"params": [p for p in ps if p.ndim > 1], "weight_decay": 0.05}, {"params": [p for p in ps if p.ndim <= 1]}]


def _train(m: nn.Module, opt, steps: range) -> None:
    for step in steps:
        x = torch.randn(16, 7, generator=torch.Generator().manual_seed(1000 + step)).to(next(m.parameters()).device)
        for group, lr in zip(opt.param_groups, (1e-2 / (1 + step), 3e-3)):
            group["lr"] = lr
        loss = m(x).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if step == 2:  # a parameter without a gradient in one step is skipped, its state untouched
            m[2].bias.grad = None
        opt.step()


def _assert_same_state(a: dict, b: dict) -> None:
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for i in a["state"]:
        assert a["state"][i].keys() == b["state"][i].keys()
        for k in a["state"][i]:
            assert a["state"][i][k].dtype == b["state"][i][k].dtype, (i, k)
            assert torch.equal(a["state"][i][k], b["state"][i][k]), (i, k)


@pytest.mark.parametrize(("ours", "theirs"), PAIRS)
def test_steps_and_state_equal_torch_bit_for_bit(ours, theirs):
    a, b = _model(0), _model(0)
    oa, ob = ours(_groups(a), lr=1e-2, eps=1e-6), theirs(_groups(b), lr=1e-2, eps=1e-6)
    _train(a, oa, range(6))
    _train(b, ob, range(6))
    for (k, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), k
    _assert_same_state(oa.state_dict(), ob.state_dict())


@pytest.mark.gpu
@pytest.mark.parametrize(("ours", "theirs"), PAIRS)
def test_steps_equal_torch_on_cuda_with_its_foreach_choice(ours, theirs):
    a, b = _model(0).cuda(), _model(0).cuda()
    oa, ob = ours(_groups(a), lr=1e-2), theirs(_groups(b), lr=1e-2)
    _train(a, oa, range(6))
    _train(b, ob, range(6))
    for (k, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), k
    _assert_same_state(oa.state_dict(), ob.state_dict())


@pytest.mark.parametrize(("ours", "theirs"), PAIRS)
def test_state_loads_either_way_and_training_continues_identically(ours, theirs):
    ref = _model(0)
    oref = theirs(_groups(ref), lr=1e-2)
    _train(ref, oref, range(6))
    for first, second in ((ours, theirs), (theirs, ours)):
        m = _model(0)
        o1 = first(_groups(m), lr=1e-2)
        _train(m, o1, range(3))
        o2 = second(_groups(m), lr=1e-2)
        o2.load_state_dict(o1.state_dict())
        _train(m, o2, range(3, 6))
        for (k, p), q in zip(m.state_dict().items(), ref.state_dict().values()):
            assert torch.equal(p, q), (first.__module__, k)
        _assert_same_state(o2.state_dict(), oref.state_dict())


def test_loaded_moments_follow_the_parameters_dtype_and_bad_states_are_refused():
    m = _model(0)
    o = AdamW(_groups(m))
    _train(m, o, range(2))
    sd = o.state_dict()
    sd["state"] = {i: {k: v.double() for k, v in s.items()} for i, s in sd["state"].items()}
    o2 = AdamW(_groups(m))
    o2.load_state_dict(sd)
    for p, s in o2.state.items():
        assert s["exp_avg"].dtype == p.dtype and s["step"].dtype == torch.float64
    with pytest.raises(ValueError, match="other parameter groups"):
        AdamW(m.parameters()).load_state_dict(o.state_dict())
    with pytest.raises(ValueError, match="lr=-1"):
        AdamW(m.parameters(), lr=-1)
    with pytest.raises(ValueError, match="empty parameter list"):
        AdamW([])
    with pytest.raises(ValueError, match="more than one group"):
        AdamW([{"params": [m[0].weight]}, {"params": [m[0].weight]}])


def test_zero_grad_in_place_keeps_zeroed_tensors():
    m = _model(0)
    o = Adam(m.parameters())
    m(torch.ones(4, 7)).sum().backward()
    o.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in m.parameters())
    o.zero_grad()
    assert all(p.grad is None for p in m.parameters())


def test_training_with_it_leaves_torch_dynamo_unimported():
    code = (
        "import sys, torch\n"
        "from distill.optim import AdamW\n"
        "from distill.probe import fit_linear\n"
        "from distill.train import make_optimizer\n"
        "from distill.config import DistillConfig\n"
        "m = torch.nn.Linear(4, 2)\n"
        "opt = make_optimizer(DistillConfig(dataset='cifar10', arch='convnet'), m)\n"
        "m(torch.ones(3, 4)).sum().backward(); opt.step(); opt.zero_grad(); opt.state_dict()\n"
        "fit_linear(torch.randn(20, 4), torch.arange(20) % 2, epochs=1)\n"
        "print(type(opt).__name__, 'torch._dynamo' in sys.modules)\n"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, check=True)
    assert out.stdout.split() == ["AdamW", "False"], out.stderr[-2000:]
