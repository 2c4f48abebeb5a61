"""The supervised loop: learning, reproducibility, augmentation helpers, schedule, hooks, errors."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from distill.config import RunError, SupervisedConfig
from distill.data import Dataset, Split, normalize
from distill.models import build_model
from distill.supervised import augment, evaluate, flip, lr_schedule, pad_crop, train_supervised, with_classifier

SHAPE = (1, 12, 12)


def synthetic(n_train: int = 96, n_test: int = 48, classes: int = 4, seed: int = 0) -> Dataset:
    """Class prototypes plus pixel noise: easy to learn for a small ConvNet."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randint(0, 256, (classes, *SHAPE), generator=g)

    def split(n: int) -> Split:
        y = torch.arange(n) % classes
        noise = torch.randint(-30, 31, (n, *SHAPE), generator=g)
        return Split((protos[y] + noise).clamp(0, 255).to(torch.uint8), y)

    return Dataset("synthetic", split(n_train), split(n_test), [str(i) for i in range(classes)], (0.5,), (0.3,))


def tiny_model(seed: int = 0, head: str = "linear", bn: bool = True):
    torch.manual_seed(seed)
    if head == "linear":
        return build_model("convnet", SHAPE, head="linear", num_classes=4, width=8, depth=2, bn=bn)
    return build_model("convnet", SHAPE, head="dino", width=8, depth=2, out_dim=16, hidden_dim=16, bottleneck_dim=8)


def cfg(**kw) -> SupervisedConfig:
    base = dict(epochs=2, milestones=[1], lr=0.05, batch_size=32, device="cpu", weight_decay=1e-4)
    return SupervisedConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def data() -> Dataset:
    return synthetic()


def states_equal(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ----------------------------------------------------------------------------- learning
def test_loss_decreases_and_accuracy_beats_chance(data):
    model = tiny_model()
    out = train_supervised(model, data, cfg(epochs=5, milestones=[4], augment="none", lr=0.1), eval_every=1)
    hist = out["history"]
    assert hist["epoch"] == [1, 2, 3, 4, 5]
    assert hist["train_loss"][-1] < 0.7 * hist["train_loss"][0]
    assert out["test_accuracy"] > 0.6  # chance is 0.25
    assert out["best_test_accuracy"] == pytest.approx(max(hist["test_accuracy"]))
    assert out["steps"] == 5 * 3 and out["steps_per_epoch"] == 3
    # the reported numbers agree with a plain evaluation of the whole test split
    model.eval()
    with torch.no_grad():
        logits = model(normalize(data.test.images, data.mean, data.std))
    assert out["test_accuracy"] == pytest.approx((logits.argmax(1) == data.test.labels).float().mean().item())
    assert out["test_loss"] == pytest.approx(F.cross_entropy(logits, data.test.labels).item(), rel=1e-5)
    assert evaluate(model, data, batch_size=7) == pytest.approx((out["test_loss"], out["test_accuracy"]), rel=1e-5)


def test_same_seeds_give_identical_weights_regardless_of_global_rng(data):
    start = tiny_model(1)
    runs = []
    for global_seed in (0, 12345):
        model = copy.deepcopy(start)
        torch.manual_seed(global_seed)
        train_supervised(model, data, cfg(data_seed=3, aug_seed=4))
        runs.append(model)
    assert states_equal(*runs)
    other_order = copy.deepcopy(start)
    train_supervised(other_order, data, cfg(data_seed=5, aug_seed=4))
    other_aug = copy.deepcopy(start)
    train_supervised(other_aug, data, cfg(data_seed=3, aug_seed=6))
    assert not states_equal(runs[0], other_order)
    assert not states_equal(runs[0], other_aug)


# ----------------------------------------------------------------------------- augmentation
def loop_crop(x, dy, dx, p, fill):
    out = torch.empty_like(x)
    c, h, w = x.shape[1:]
    for i in range(len(x)):
        padded = fill.view(c, 1, 1).expand(c, h + 2 * p, w + 2 * p).clone()
        padded[:, p : p + h, p : p + w] = x[i]
        out[i] = padded[:, int(dy[i]) : int(dy[i]) + h, int(dx[i]) : int(dx[i]) + w]
    return out


def test_pad_crop_matches_a_per_image_loop():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(9, 3, 7, 5, generator=g)
    p = 2
    dy = torch.randint(0, 2 * p + 1, (9,), generator=g)
    dx = torch.randint(0, 2 * p + 1, (9,), generator=g)
    dy[0], dx[0], dy[1], dx[1] = 0, 0, 2 * p, 2 * p  # the extreme offsets
    fill = torch.tensor([-1.5, 0.25, 3.0])
    assert torch.equal(pad_crop(x, dy, dx, p, fill), loop_crop(x, dy, dx, p, fill))
    # scalar fill: the same as torch's constant padding
    ref = torch.stack([F.pad(x[i], (p, p, p, p), value=0.5)[:, dy[i] : dy[i] + 7, dx[i] : dx[i] + 5] for i in range(9)])
    assert torch.equal(pad_crop(x, dy, dx, p, 0.5), ref)
    # centred offsets give the images back
    assert torch.equal(pad_crop(x, torch.full((9,), p), torch.full((9,), p), p, fill), x)


def test_flip_and_augment_match_a_per_image_loop():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 2, 6, 6, generator=g)
    mask = torch.tensor([True, False] * 4)
    ref = torch.stack([x[i].flip(-1) if mask[i] else x[i] for i in range(8)])
    assert torch.equal(flip(x, mask), ref)

    fill = torch.tensor([0.1, -0.2])
    out = augment(x, torch.Generator().manual_seed(7), padding=4, fill=fill)
    draws = torch.Generator().manual_seed(7)  # documented order: flips, then row and column offsets
    flips = torch.rand(8, generator=draws) < 0.5
    offsets = torch.randint(0, 9, (2, 8), generator=draws)
    cropped = loop_crop(x, offsets[0], offsets[1], 4, fill)
    expected = torch.stack([cropped[i].flip(-1) if flips[i] else cropped[i] for i in range(8)])
    assert torch.equal(out, expected)


# ----------------------------------------------------------------------------- schedule and hooks
def test_on_step_is_called_once_per_step_counting_from_one():
    odd = synthetic(n_train=97)  # 97 = 3 * 32 + 1: a last batch of one image is dropped for BN nets
    seen = []
    out = train_supervised(tiny_model(), odd, cfg(epochs=2), on_step=lambda step, m: seen.append(step))
    assert seen == list(range(1, 7)) and out["steps"] == 6
    seen.clear()
    out = train_supervised(tiny_model(bn=False), odd, cfg(epochs=2), on_step=lambda step, m: seen.append(step))
    assert seen == list(range(1, 9)) and out["steps"] == 8  # without BN the single image is a batch


def test_milestones_set_the_optimiser_learning_rate(data, monkeypatch):
    used = []
    real_step = torch.optim.SGD.step

    def recording_step(self, *args, **kwargs):
        used.append(self.param_groups[0]["lr"])
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", recording_step)
    out = train_supervised(tiny_model(), data, cfg(epochs=6, milestones=[2, 4], lr=0.1, gamma=0.1))
    per_epoch = [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]  # x gamma once 2 and 4 epochs are complete
    assert out["history"]["lr"] == pytest.approx(per_epoch, rel=1e-12)
    assert used == pytest.approx([lr for lr in per_epoch for _ in range(3)], rel=1e-12)


def test_warmup_schedule_by_hand():
    c = cfg(epochs=3, milestones=[2], lr=0.2, gamma=0.5, warmup_epochs=1.5)
    # 4 steps per epoch: 6 warm-up steps ramp to 0.2, epoch 2 ends at 0.2, epoch 3 (after milestone 2) at 0.1
    expected = [0.2 * (k + 1) / 6 for k in range(6)] + [0.2, 0.2] + [0.1] * 4
    assert lr_schedule(c, 4) == pytest.approx(expected, rel=1e-12)


# ----------------------------------------------------------------------------- heads and errors
def test_with_classifier_replaces_the_head_and_keeps_the_backbone():
    dino = tiny_model(2, head="dino")
    before = copy.deepcopy(dino.state_dict())
    clf = with_classifier(dino, 4, seed=3)
    assert isinstance(clf.head, torch.nn.Linear) and clf.head.out_features == 4
    assert clf.spec["head"] == "linear" and clf.spec["num_classes"] == 4
    rebuilt = build_model(**clf.spec)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in clf.state_dict().items()}
    for k, v in dino.backbone.state_dict().items():
        assert torch.equal(clf.backbone.state_dict()[k], v)
    assert all(torch.equal(before[k], v) for k, v in dino.state_dict().items())  # input untouched
    again = with_classifier(dino, 4, seed=3)
    assert torch.equal(again.head.weight, clf.head.weight)
    assert not torch.equal(with_classifier(dino, 4, seed=4).head.weight, clf.head.weight)
    assert all(p.requires_grad for p in clf.parameters())


def test_a_model_without_a_classifier_is_refused(data):
    with pytest.raises(ValueError, match=r"with_classifier\(model, 4\)"):
        train_supervised(tiny_model(head="dino"), data, cfg())
    wrong = build_model("convnet", SHAPE, head="linear", num_classes=7, width=8, depth=2)
    with pytest.raises(ValueError, match="7 outputs"):
        train_supervised(wrong, data, cfg())


def test_nan_loss_raises_run_error(data):
    model = tiny_model()
    with torch.no_grad():
        model.head.weight.fill_(math.nan)
    with pytest.raises(RunError) as info:
        train_supervised(model, data, cfg())
    assert "\n" not in str(info.value) and "step 1" in str(info.value)


# ----------------------------------------------------------------------------- continuing a run
class _Stop(Exception):
    pass


def recording_sgd(monkeypatch):
    """Patch SGD.step to record (optimiser, lr) of every step; returns the record list."""
    calls = []
    real_step = torch.optim.SGD.step

    def step(self, *args, **kwargs):
        calls.append((self, self.param_groups[0]["lr"]))
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", step)
    return calls


def test_continuing_a_stopped_run_is_bit_identical(monkeypatch):
    data = synthetic(n_train=80)  # 3 steps per epoch, the last batch has 16 images
    c = cfg(epochs=3, milestones=[2], lr=0.1, momentum=0.9, warmup_epochs=0.5, weight_decay=1e-3)
    start = tiny_model(4)
    calls = recording_sgd(monkeypatch)
    full = copy.deepcopy(start)
    out = train_supervised(full, data, c)
    assert out["steps"] == 9 and out["start_step"] == 0
    full_lrs = [lr for _, lr in calls]

    for k in (3, 4):  # an epoch boundary and the middle of epoch 2

        def stop_at_k(step, model):
            if step == k:
                raise _Stop

        calls.clear()
        stopped = copy.deepcopy(start)
        with pytest.raises(_Stop):
            train_supervised(stopped, data, c, on_step=stop_at_k)
        opt_state = copy.deepcopy(calls[-1][0].state_dict())  # the stopped run's own optimiser
        given = copy.deepcopy(opt_state)
        assert len(calls) == k
        fresh_start = copy.deepcopy(stopped)

        calls.clear()
        seen = []
        res = train_supervised(
            stopped, data, c, start_step=k, optimizer_state=opt_state, on_step=lambda step, m: seen.append(step)
        )
        assert seen == list(range(k + 1, 10)) and res["steps"] == 9 and res["start_step"] == k
        assert [lr for _, lr in calls] == full_lrs[k:]  # the schedule continues at step k
        assert res["history"]["epoch"] == list(range(k // 3 + 1, 4))
        assert states_equal(stopped, full), k  # bit for bit
        for i, st in given["state"].items():  # the given state was copied, not trained in place
            assert torch.equal(st["momentum_buffer"], opt_state["state"][i]["momentum_buffer"])

    # the optimiser state matters: continuing with a fresh optimiser gives other weights
    train_supervised(fresh_start, data, c, start_step=4)
    assert not states_equal(fresh_start, full)


def test_snapshot_is_the_state_right_after_step_k(data, monkeypatch):
    c = cfg(epochs=2, momentum=0.9)
    start = tiny_model(5)
    calls = recording_sgd(monkeypatch)
    seen = {}

    def grab(step, model):
        if step == 4:
            seen["model"] = copy.deepcopy(model.state_dict())
            seen["opt"] = copy.deepcopy(calls[-1][0].state_dict())

    model = copy.deepcopy(start)
    out = train_supervised(model, data, c, snapshot_step=4, on_step=grab)
    snap = out["snapshot"]
    assert snap["step"] == 4 and out["steps"] == 6
    assert snap["model"].keys() == seen["model"].keys()
    assert all(torch.equal(snap["model"][key], v) for key, v in seen["model"].items())
    assert not torch.equal(snap["model"]["head.weight"], model.head.weight)  # a copy, not the live tensor
    ref = seen["opt"]["state"]
    assert snap["optimizer"]["state"].keys() == ref.keys() and len(ref) == len(list(start.parameters()))
    assert all(torch.equal(snap["optimizer"]["state"][i]["momentum_buffer"], ref[i]["momentum_buffer"]) for i in ref)
    # continuing from the snapshot reproduces the uninterrupted run
    resumed = copy.deepcopy(start)
    resumed.load_state_dict(snap["model"])
    train_supervised(resumed, data, c, start_step=4, optimizer_state=snap["optimizer"])
    assert states_equal(resumed, model)
    # snapshot_step == start_step: before any step taken here, with the given optimiser state
    early = train_supervised(copy.deepcopy(start), data, c, snapshot_step=0)["snapshot"]
    assert early["step"] == 0 and early["optimizer"]["state"] == {}
    assert all(torch.equal(early["model"][key], v) for key, v in start.state_dict().items())


def test_bad_continuation_arguments_and_continuing_at_the_end(data):
    c = cfg(epochs=2)  # 6 steps
    with pytest.raises(ValueError, match="start_step=7"):
        train_supervised(tiny_model(), data, c, start_step=7)
    with pytest.raises(ValueError, match="snapshot_step=1"):
        train_supervised(tiny_model(), data, c, start_step=2, snapshot_step=1)
    other = torch.optim.SGD(tiny_model(bn=False).parameters(), lr=0.1).state_dict()  # fewer parameters
    with pytest.raises(ValueError, match="optimizer_state holds"):
        train_supervised(tiny_model(), data, c, optimizer_state=other)
    model = tiny_model()
    params = list(model.parameters())
    swapped = torch.optim.SGD(params[1:2] + params[:1] + params[2:], lr=0.1, momentum=0.9)
    for p in params:
        p.grad = torch.ones_like(p)
    swapped.step()
    with pytest.raises(ValueError, match="parameter order"):
        train_supervised(model, data, c, optimizer_state=swapped.state_dict())
    model = tiny_model()
    before = copy.deepcopy(model.state_dict())
    out = train_supervised(model, data, c, start_step=6)  # nothing left to train: evaluation only
    assert out["steps"] == 6 and out["history"]["epoch"] == []
    assert all(torch.equal(model.state_dict()[key], v) for key, v in before.items())
    assert (out["test_loss"], out["test_accuracy"]) == pytest.approx(evaluate(model, data), rel=1e-6)


def test_adamw_step_matches_a_hand_written_adamw_step(data):
    """optimizer='adamw': one step over the whole training split (one batch, no augmentation, BN-free)
    equals AdamW's update written out: m = (1 - b1) g, v = (1 - b2) g^2, step lr * m_hat / (sqrt(v_hat) + eps)
    after the decoupled decay w * (1 - lr * wd)."""
    model = tiny_model(bn=False)
    before = copy.deepcopy(model)
    c = cfg(epochs=1, milestones=[], batch_size=len(data.train.labels), optimizer="adamw", lr=1e-2, augment="none")
    train_supervised(model, data, c, eval_every=0)
    x = normalize(data.train.images, data.mean, data.std)
    F.cross_entropy(before(x), data.train.labels).backward()
    b1, b2, eps, lr, wd = 0.9, 0.999, 1e-8, 1e-2, c.weight_decay
    for (name, p0), p1 in zip(before.named_parameters(), model.parameters()):
        g = p0.grad
        m_hat, v_hat = (1 - b1) * g / (1 - b1), (1 - b2) * g * g / (1 - b2)
        want = p0.detach() * (1 - lr * wd) - lr * m_hat / (v_hat.sqrt() + eps)
        assert torch.allclose(p1.detach(), want, atol=2e-6, rtol=1e-4), name


def test_fit_head_puts_the_linear_fit_of_the_frozen_embeddings_on_the_head(data):
    from distill.probe import embed, fit_linear
    from distill.supervised import fit_head

    model = tiny_model()
    backbone = copy.deepcopy(model.backbone)
    fit_head(model, data, epochs=3, seed=1)
    feats = embed(backbone.eval(), data.train.images, data.mean, data.std)
    layer, _ = fit_linear(feats, data.train.labels, epochs=3, seed=1, num_classes=4)
    assert torch.allclose(model.head.weight, layer.weight) and torch.allclose(model.head.bias, layer.bias)
    assert states_equal(model.backbone, backbone)  # the backbone is left as it was
    assert model.training  # and the model's mode too
