"""The paper / reference recipes, the probe set, the last partial batch and the init formula on BN."""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import distill
from distill.config import REFERENCE, DistillConfig, add_arguments, from_args
from distill.data import Dataset, Split
from distill.init import fresh_like, init_student
from distill.train import epoch_steps, probe_dataset

README = Path(__file__).resolve().parents[2] / "README.md"
# written out by hand: the fields the README's recipe table promises, nothing else
DOCUMENTED = {
    "recipe",
    "init",
    "norm_bias_decay",
    "probe_reseed",
    "probe_weight_decay",
    "probe_reshuffle",
    "input_stats",
}


def _changed(a: DistillConfig, b: DistillConfig) -> set[str]:
    da, db = a.to_dict(), b.to_dict()
    return {k for k in da if da[k] != db[k]}


def test_reference_recipe_changes_exactly_the_documented_fields():
    ref = DistillConfig.reference()
    assert _changed(DistillConfig(), ref) == DOCUMENTED == set(REFERENCE)
    assert (ref.recipe, ref.init, ref.norm_bias_decay, ref.probe_reseed) == ("reference", "copy", 0.01, True)
    assert (ref.probe_weight_decay, ref.probe_reshuffle) == (0.01, False)
    vit = DistillConfig.reference(arch="vit_tiny")
    assert _changed(DistillConfig(arch="vit_tiny"), vit) == DOCUMENTED | {"arch_options"}
    assert vit.arch_options == {"tie_blocks": True, "weight_init": "torch", "block": "reference"}
    assert DistillConfig.reference(lr=1e-4).lr == 1e-4  # changes win over the recipe
    text = README.read_text()
    section = text[text.index("--recipe reference") :]
    for name in DOCUMENTED - {"recipe"}:
        assert re.search(rf"`{name}[=`]", section), f"README does not document {name}"


def test_cli_recipe_flag_matches_the_classmethod():
    p = argparse.ArgumentParser()
    add_arguments(p, DistillConfig)
    cfg = from_args(DistillConfig, p.parse_args(["--recipe", "reference", "--lr", "0.0001"]))
    assert cfg == DistillConfig.reference(lr=1e-4)
    assert from_args(DistillConfig, p.parse_args([])) == DistillConfig()
    cfg = from_args(DistillConfig, p.parse_args(["--recipe", "reference", "--init", "eps", "--eps", "0.1"]))
    assert (cfg.init, cfg.norm_bias_decay) == ("eps", 0.01)  # an explicit flag beats the recipe


def _tiny(n: int = 10, shape=(3, 32, 32), seed: int = 0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    imgs = torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=g)
    labels = torch.arange(n) % 2
    return Dataset(
        "tiny",
        Split(imgs, labels),
        Split(imgs[:4].clone(), labels[:4].clone()),
        ["a", "b"],
        (0.5,) * shape[0],
        (0.25,) * shape[0],
    )


def test_what_breaks_the_exact_copy_of_a_bn_free_net(tmp_path):
    """Student = teacher gives p_s = p_t, so the gradient is zero in exact arithmetic; in fp32 the
    softmax's normalisation leaves round-off gradients (~1e-7), which Adam (eps 1e-8) turns into steps of
    nearly lr on those weights. VGG11 has zero biases and no norm parameters, so the 0.01 decay of the
    reference recipe acts on nothing: with a huge Adam eps the student stays at the teacher."""
    import copy

    from distill.train import build_teacher, distillation_loss

    cfg = DistillConfig.reference(
        arch="vgg11",
        out_dim=32,
        hidden_dim=32,
        bottleneck_dim=16,
        epochs=1,
        batch_size=4,
        probes=[],
        save_every=1,
        device="cpu",
        lr=1e-3,
        dataset="tiny",
    )
    teacher = build_teacher(cfg, (3, 32, 32)).eval().requires_grad_(False)
    student = copy.deepcopy(teacher).requires_grad_(True)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        t_out = teacher(x)
    s_out = student(x)
    assert torch.equal(t_out, s_out)
    distillation_loss(t_out, s_out).backward()
    g = torch.cat([p.grad.flatten() for p in student.parameters()]).abs()
    assert 0 < g.max() < 1e-5  # round-off, not signal
    assert all(torch.count_nonzero(b) == 0 for n, b in teacher.named_parameters() if n.endswith("bias"))

    data = _tiny()  # 10 images, batch 4: 3 steps
    moved = {}
    for eps in (1e-8, 1.0):
        s = distill.distill(cfg.replace(adam_eps=eps), tmp_path / f"eps{eps}.h5", data=data)
        t, st = s.teacher().state_dict(), s.student(1).state_dict()
        moved[eps] = max(float((t[k] - st[k]).abs().max()) for k in t if t[k].is_floating_point())
    assert 0.5 * 1e-3 < moved[1e-8] <= 3 * 1e-3 * 1.001  # nearly lr per step: Adam normalised the round-off
    assert moved[1.0] < 1e-8  # the same gradients without Adam's normalisation: the copy stays put


def test_reference_copy_of_a_bn_net_moves_at_once(tmp_path):
    """With BN the teacher's eval-mode BN (initial statistics) differs from the student's batch statistics."""
    data = _tiny()
    cfg = DistillConfig.reference(
        arch="convnet",
        arch_options={"width": 8, "depth": 2, "bn": True},
        out_dim=32,
        hidden_dim=32,
        bottleneck_dim=16,
        epochs=1,
        batch_size=4,
        probes=[],
        save_every=1,
        device="cpu",
        lr=1e-3,
        dataset="tiny",
        adam_eps=1.0,
    )
    s = distill.distill(cfg, tmp_path / "bn.h5", data=data)
    t, st = s.teacher().state_dict(), s.student(1).state_dict()
    assert max(float((t[k] - st[k]).abs().max()) for k in t if t[k].is_floating_point()) > 1e-6


def test_last_partial_batch_is_kept_by_default():
    assert epoch_steps(50_000, 256, drop_last=False) == 196  # the reference code's main script
    assert epoch_steps(50_000, 256, drop_last=True) == 195
    assert epoch_steps(257, 256, drop_last=False) == 1  # a batch of one image cannot train BN: skipped
    assert epoch_steps(10, 4, drop_last=False) == 3 and epoch_steps(10, 4, drop_last=True) == 2
    assert DistillConfig().drop_last is False


def test_optimizer_takes_the_partial_batch(tmp_path):
    data = _tiny(10, (3, 8, 8))
    cfg = DistillConfig(
        dataset="tiny",
        arch="mlp",
        arch_options={"widths": [16]},
        out_dim=16,
        hidden_dim=16,
        bottleneck_dim=8,
        epochs=1,
        batch_size=4,
        probes=[],
        device="cpu",
    )
    steps = {}
    for drop in (False, True):
        store = distill.distill(cfg.replace(drop_last=drop), tmp_path / f"d{drop}.h5", data=data)
        tensors, _ = store.load_state_group("train")
        steps[drop] = {int(v) for k, v in tensors.items() if k.endswith("/step")}
    assert steps == {False: {3}, True: {2}}


def test_probes_use_the_full_training_split_unless_probe_subset(cifar_tarball):
    cfg = DistillConfig(dataset="cifar10", data_root=str(cifar_tarball), subset=100)
    small = distill.load_dataset("cifar10", root=cifar_tarball, subset=100)
    assert len(probe_dataset(cfg, small).train) == 50_000
    assert len(probe_dataset(cfg.replace(probe_subset=200), small).train) == 200
    assert probe_dataset(cfg.replace(subset=None), small) is small


@pytest.mark.parametrize("alpha", [0.5, 0.2])
def test_alpha_formula_applies_to_bn_scales(alpha):
    torch.manual_seed(0)
    teacher = distill.build_model("resnet20", (3, 32, 32), head=None)
    s = dict(init_student(teacher, "alpha", alpha=alpha, seed=1).named_parameters())
    delta = math.sqrt(alpha**2 + (1 - alpha) ** 2)
    bn = [n for n, m in teacher.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bn) > 10
    for n in bn:
        np.testing.assert_allclose(s[f"{n}.weight"].detach().numpy(), 1 / delta, rtol=1e-6)
        assert torch.count_nonzero(s[f"{n}.bias"]) == 0
    if alpha == 0.5:
        assert abs(1 / delta - 1.41421356) < 1e-6
    kept = dict(init_student(teacher, "alpha", alpha=alpha, seed=1, scope="random").named_parameters())
    assert all(torch.equal(kept[f"{n}.weight"], torch.ones_like(kept[f"{n}.weight"])) for n in bn)


def test_eps_mode_and_its_variance_preserving_variant():
    torch.manual_seed(0)
    teacher = distill.build_model("resnet20", (3, 32, 32), head=None)
    t = {n: p.detach().numpy() for n, p in teacher.named_parameters()}
    noise = {n: p.detach().numpy() for n, p in fresh_like(teacher, 3).named_parameters()}
    plain = {n: p.detach().numpy() for n, p in init_student(teacher, "eps", eps=0.3, seed=3).named_parameters()}
    vp = {
        n: p.detach().numpy()
        for n, p in init_student(teacher, "eps", eps=0.3, seed=3, eps_rescale=True).named_parameters()
    }
    for n in t:
        np.testing.assert_allclose(plain[n], t[n] + 0.3 * noise[n], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(vp[n], (t[n] + 0.3 * noise[n]) / np.sqrt(1.09), rtol=1e-5, atol=1e-7)
    bn = next(n for n in t if n.endswith("bn1.weight"))
    np.testing.assert_allclose(plain[bn], 1.3, rtol=1e-6)  # BN scale 1 + eps


def test_reference_recipe_probes_the_frozen_teacher_again_with_each_epochs_seed(tmp_path):
    """The reference code probes the teacher at every probed epoch with a fresh probe seed, so its best
    over epochs is a best over probe fits; the paper recipe probes it once."""
    from distill.probe import embed, linear_probe

    g = torch.Generator().manual_seed(3)
    imgs = torch.randint(0, 256, (48, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 3, (48,), generator=g)
    data = Dataset(
        "tiny", Split(imgs[:32], labels[:32]), Split(imgs[32:], labels[32:]), ["a", "b", "c"], (0.5,) * 3, (0.25,) * 3
    )
    common = dict(
        arch="convnet",
        arch_options={"width": 8, "depth": 2, "bn": True},
        out_dim=32,
        hidden_dim=32,
        bottleneck_dim=16,
        epochs=3,
        batch_size=8,
        probes=["linear"],
        probe_every=1,
        probe_seed=5,
        save_every=0,
        device="cpu",
        dataset="tiny",
    )
    ref = distill.distill(DistillConfig.reference(**common), tmp_path / "ref.h5", data=data).metrics
    run = distill.distill(DistillConfig(**common), tmp_path / "paper.h5", data=data)
    paper, teacher = run.metrics, run.teacher().eval()  # the same teacher seed in both runs
    tr, te = (embed(teacher.backbone, s.images, data.mean, data.std) for s in (data.train, data.test))
    for e in range(4):
        want = linear_probe(tr, data.train.labels, te, data.test.labels, seed=5 + e, weight_decay=0.01, reshuffle=False)
        assert float(ref.accuracy.sel(epoch=e, model="teacher", probe="linear")) == pytest.approx(want, abs=1e-9)
    once = paper.accuracy.sel(model="teacher", probe="linear").values
    assert (once == once[0]).all() and once[0] == pytest.approx(
        linear_probe(tr, data.train.labels, te, data.test.labels, seed=5)
    )


def test_reference_input_stats_are_the_authors_cifar10_constants():
    from distill.train import input_stats

    data = _tiny()
    cifar = Dataset("cifar10", data.train, data.test, list(data.classes), (0.5,) * 3, (0.25,) * 3)
    ref = input_stats(DistillConfig.reference(), cifar)
    assert ref.mean == (0.4914, 0.4822, 0.4465) and ref.std == (0.247, 0.243, 0.261)  # the authors' code
    assert input_stats(
        DistillConfig.reference(), cifar.__class__("cifar10[5,6]", *list(vars(cifar).values())[1:])
    ).std == (
        0.247,
        0.243,
        0.261,
    )
    assert input_stats(DistillConfig(), cifar).mean == (0.5,) * 3  # paper recipe: measured
    assert input_stats(DistillConfig.reference(), data).mean == data.mean  # no constants for other data
