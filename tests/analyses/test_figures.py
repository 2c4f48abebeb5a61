"""The figures' shared titles: the setting read from a result's attrs, never its command line."""

from __future__ import annotations

import json

import xarray as xr

from analyses import common


def _result(configs: dict, **attrs: str) -> xr.Dataset:
    return xr.Dataset(
        attrs={
            "config": json.dumps(configs),
            "command_line": "python -m analyses.x --preset cpu",
            "script": "analyses.x",
            "preset": "cpu",
            **attrs,
        }
    )


def _cfg(**changes: object) -> dict:
    base = {
        "dataset": "fashion-mnist",
        "subset": 2000,
        "epochs": 3,
        "arch": "convnet",
        "arch_options": {"depth": 4, "width": 32, "bn": False},
    }
    return {**base, **changes}


def test_describe_names_architecture_dataset_scale_and_seeds_from_the_config_attr():
    ds = _result(
        {
            "bn": _cfg(subset=1000, arch_options={"depth": 4, "width": 32, "bn": True}),
            "no_bn": _cfg(),
            "supervised": {"dataset": None, "arch": None, "epochs": 1},  # a recipe, not a distillation
        },
        seeds="[0, 1, 2]",
    )
    assert (
        common.describe(ds)
        == "4x32 ConvNet with and without BN, Fashion-MNIST, 1,000 / 2,000 images, 3 epochs, 3 seeds"
    )
    assert common.describe(ds, training=False) == "4x32 ConvNet with and without BN, Fashion-MNIST, 3 seeds"


def test_describe_reads_a_single_config_and_whole_splits_of_kept_classes():
    one = _result(_cfg(dataset="cifar10", subset=None, arch="resnet20", arch_options={}, epochs=150))
    assert common.describe(one) == "ResNet20, CIFAR-10, 50,000 images, 150 epochs"
    half = _result({"a": _cfg(dataset="cifar10", subset=None, classes=[0, 1, 2, 3, 4])}, seeds="[7]")
    assert common.describe(half) == "4x32 ConvNet without BN, CIFAR-10, 25,000 images, 3 epochs, 1 seed"
    assert common.dataset_name("gaussian:cifar10") == "Gaussian noise (CIFAR-10 shape)"
    assert common.arch_name("vit_tiny") == "ViT-Tiny"


def test_describe_falls_back_to_attrs_of_the_result_itself():
    ds = xr.Dataset(attrs={"dataset": "fashion-mnist", "arch": "mlp", "train_subset": "5000"})
    assert common.describe(ds) == "MLP, Fashion-MNIST, 5,000 images"


def test_title_never_shows_the_command_line_and_keeps_its_two_lines(tmp_path):
    ds = _result({"a": _cfg()}, seeds="[0, 1]")
    text = common.title(ds, "Figure 3: probes", "band: ±1 std over seeds")
    assert (
        text == "Figure 3: probes\n4x32 ConvNet without BN, Fashion-MNIST, 2,000 images, 3 epochs, 2 seeds;"
        " band: ±1 std over seeds"
    )
    assert "--preset" not in text and "analyses." not in text
    fig, _ = common.figure()
    common.finish(fig, tmp_path / "f.png", text)
    assert fig.get_suptitle().split("\n")[0] == "Figure 3: probes"  # the setting's own line, not wrapped into it
    assert (tmp_path / "f.png").stat().st_size > 0
    assert common.title(_result({}), "only what") == "only what"
