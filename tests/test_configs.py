"""Every config class: its Python defaults are its flags' defaults, and a config survives the
command line, the stored provenance and the hash; the analyses take their defaults from their config."""

from __future__ import annotations

import argparse
import dataclasses
import inspect

import pytest

from distill.config import (
    DataConfig,
    DistillConfig,
    InitConfig,
    ModelConfig,
    ObjectiveConfig,
    OptimConfig,
    ProbeConfig,
    RunConfig,
    SupervisedConfig,
)
from distill.options import add_arguments, from_args
from landscape.configs import (
    AlignConfig,
    HessianConfig,
    HessianPathConfig,
    InstabilityConfig,
    LocalityConfig,
    LotteryConfig,
    LotterySweepConfig,
    PathConfig,
    PlaneConfig,
    SurfaceConfig,
)

# for every class, a few fields set away from their defaults (each set stays a valid config)
CHANGED: dict[type, dict] = {
    PathConfig: dict(
        alphas=[0.0, 0.25, 1.0],
        bn="interpolate",
        splits=("test",),
        max_examples=100,
        backend="loop",
        align="weights",
        align_options={"max_iter": 5},
        repair=True,
        channels_last=False,
        device="cpu",
    ),
    PlaneConfig: dict(resolution=5, span=(-0.5, 1.5), margin=0.25, split="train", bn="keep_a", bn_batches=2),
    SurfaceConfig: dict(dims=1, span=(-2.0, 0.5), yspan=(0.0, 1.0), bias="normalize", seed=3, hessian_batches=2),
    AlignConfig: dict(max_iter=7, seed=2, batches=3, batch_size=64, data_seed=1),
    HessianConfig: dict(k=2, loss="distillation", batches=None, trace_method="hutchinson", tol=1e-5, vectors=True),
    HessianPathConfig: dict(alphas=[0.0, 0.5, 1.0], bn="reset", k=1, split="test"),
    InstabilityConfig: dict(
        children=3,
        seeds=[4, 5, 6],
        cfg=SupervisedConfig(epochs=2, milestones=[1], lr=0.05),
        splits=("train", "test"),
        path_options={"max_examples": 50},
    ),
    LotteryConfig: dict(
        levels=3,
        prune_fraction=0.5,
        rewind=["start", "step"],
        rewind_step=10,
        baselines=("random_prune",),
        rewind_rng=False,
        cfg=SupervisedConfig(epochs=3, optimizer="adamw"),
    ),
    LotterySweepConfig: dict(rewinds=("start", "init"), seeds=(1, 2), cfg=SupervisedConfig(epochs=1, milestones=[])),
    LocalityConfig: dict(eps=[0.0, 0.5], seeds=(0, 1)),
    DistillConfig: dict(
        arch="mlp",
        dataset="mnist",
        epochs=3,
        lr=0.01,
        probes=["knn"],
        save_epochs=[1, 2],
        arch_options={"width": 8},
        center=True,
    ),
    SupervisedConfig: dict(epochs=4, optimizer="adamw", milestones=[2], augment="none"),
    DataConfig: dict(dataset="mnist", subset=100, drop_last=True),
    ModelConfig: dict(arch="mlp", out_dim=128, last_layer="weightnorm"),
    InitConfig: dict(init="eps", eps=0.5, eps_rescale=True),
    ObjectiveConfig: dict(loss="kl", teacher_temp=0.5, augment="multicrop", local_crops=2),
    OptimConfig: dict(optimizer="sgd", schedule="cosine", clip_grad=1.0, epochs=10),
    ProbeConfig: dict(probe_every=5, probes=["linear"], knn_metric="cosine", dynamics=True),
    RunConfig: dict(seed=3, device="cpu", precision="bf16", save_epochs=[5]),
}
CLASSES = list(CHANGED)


def _parse(cls: type, argv: list[str]):
    parser = argparse.ArgumentParser()
    add_arguments(parser, cls)
    return from_args(cls, parser.parse_args(argv))


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_python_defaults_are_the_flag_defaults(cls):
    assert _parse(cls, []) == cls()


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("changed", [False, True], ids=["default", "changed"])
def test_a_config_survives_its_command_line(cls, changed):
    cfg = cls(**CHANGED[cls]) if changed else cls()
    assert _parse(cls, cfg.to_argv()) == cfg


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_a_config_survives_its_provenance_attrs(cls):
    from distill.provenance import provenance

    for cfg in (cls(), cls(**CHANGED[cls])):
        assert cls.from_attrs(provenance(cfg)) == cfg


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_the_hash_follows_every_changed_field(cls):
    base = cls()
    for name, value in CHANGED[cls].items():
        other = base.replace(**{name: value})
        assert other.config_hash != base.config_hash, name
        assert other.differing_fields(base) == [name]
    assert cls().config_hash == base.config_hash


def _entry_points():
    from landscape.align import align
    from landscape.hessian import hessian, hessian_along_path
    from landscape.instability import instability
    from landscape.locality import locality
    from landscape.lottery import lottery
    from landscape.lottery_sweep import lottery_sweep
    from landscape.paths import linear_path
    from landscape.planes import plane
    from landscape.surface import surface

    return [
        (linear_path, PathConfig),
        (plane, PlaneConfig),
        (surface, SurfaceConfig),
        (align, AlignConfig),
        (hessian, HessianConfig),
        (hessian_along_path, HessianPathConfig),
        (instability, InstabilityConfig),
        (lottery, LotteryConfig),
        (lottery_sweep, LotterySweepConfig),
        (locality, LocalityConfig),
    ]


def test_each_analysis_lists_its_settings_with_the_config_defaults():
    for fn, cls in _entry_points():
        params = inspect.signature(fn).parameters
        assert params["config"].default is None, fn.__name__
        for f in dataclasses.fields(cls):
            assert params[f.name].kind is inspect.Parameter.KEYWORD_ONLY, (fn.__name__, f.name)
            assert params[f.name].default == getattr(cls(), f.name), (fn.__name__, f.name)


def test_an_omitted_setting_takes_the_config_default_and_config_and_keywords_agree():
    from distill.models import build_model, seeded
    from landscape.align import align

    def mlp(seed: int):
        with seeded(seed):
            return build_model("mlp", (1, 4, 4), head="linear", num_classes=2, widths=[6])

    a, b = mlp(0), mlp(1)
    _, plain = align(a, b, "weights")
    assert plain["align_seed"] == AlignConfig().seed
    _, by_keyword = align(a, b, "weights", seed=3)
    _, by_config = align(a, b, "weights", config=AlignConfig(seed=3))
    assert by_keyword == by_config and by_keyword["align_seed"] == 3
    with pytest.raises(TypeError, match="AlignConfig"):
        align(a, b, "weights", config=PathConfig())


def test_lottery_and_its_sweep_default_to_the_same_recipe():
    assert LotteryConfig().cfg == LotterySweepConfig().cfg == InstabilityConfig().cfg == SupervisedConfig()
