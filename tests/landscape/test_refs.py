"""The shared checkpoint resolver and the classifier check of linear_path and plane (and rtt lmc)."""

from __future__ import annotations

import pytest

from distill.models import build_model
from distill.store import Store
from landscape.cli import main as rtt
from landscape.paths import linear_path
from landscape.planes import plane
from landscape.refs import load_ref
from tests.landscape.test_paths import make_data

SHAPE = (3, 8, 8)


def dino(seed: int):
    import torch

    torch.manual_seed(seed)
    return build_model("mlp", SHAPE, widths=[16], out_dim=32, hidden_dim=16, bottleneck_dim=8)


def classifier(seed: int, classes: int = 4):
    import torch

    torch.manual_seed(seed)
    return build_model("mlp", SHAPE, widths=[16], head="linear", num_classes=classes)


def test_load_ref_resolves_negative_epochs_and_records_the_store(tmp_path):
    store = Store.create(tmp_path / "run.h5", {"dataset": "synthetic", "seed": 3})
    for e in (0, 5):
        store.save_module(f"student/{e:05d}", classifier(e), {"epoch": e})
    module, info = load_ref((store, -1), "cpu")
    assert info["epoch"] == 5 and info["source"] == f"{store.path}#epoch=5" and info["store"] == str(store.path)
    assert '"seed": 3' in info["config"]
    ref = classifier(5)
    assert all((module.state_dict()[k] == t).all() for k, t in ref.state_dict().items())
    m, info = load_ref((str(store.path), "student/00000"), "cpu")
    assert info["name"] == "student/00000"
    with pytest.raises(TypeError):
        load_ref("runs/x.h5", "cpu")


def test_paths_and_planes_refuse_networks_that_are_not_classifiers_for_the_data():
    data = make_data()  # 4 classes
    for a, b, bad in (
        (dino(0), dino(1), "a"),
        (classifier(0), dino(1), "b"),
        (classifier(0, classes=7), classifier(1, classes=7), "a"),
    ):
        with pytest.raises(ValueError) as err:
            linear_path(a, b, data, alphas=3, device="cpu")
        msg = str(err.value)
        assert "\n" not in msg and msg.startswith(f"{bad} (module) is not a classifier for the data's 4 classes")
        assert "instability" in msg and "with_classifier" in msg
    with pytest.raises(ValueError, match="^c .*not a classifier.*with_classifier"):
        plane(classifier(0), classifier(1), dino(2), data, resolution=2, device="cpu")
    ds = linear_path(classifier(0), classifier(1), data, alphas=3, device="cpu")  # classifiers pass
    assert ds.error.shape == (3, 2)


def test_rtt_lmc_refuses_a_distilled_student(tmp_path, capsys):
    import numpy as np
    import torch

    from tests.landscape.test_instability import write_idx

    g = np.random.default_rng(0)
    for stem, n in (("train", 40), ("t10k", 20)):
        write_idx(tmp_path / f"{stem}-images-idx3-ubyte.gz", g.integers(0, 256, (n, 12, 12)))
        write_idx(tmp_path / f"{stem}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    store = Store.create(tmp_path / "run.h5", {"dataset": "mnist", "data_root": str(tmp_path)})
    for i, name in enumerate(("teacher", "student/00001")):
        torch.manual_seed(i)
        store.save_module(
            name, build_model("mlp", (1, 12, 12), widths=[8], out_dim=32, hidden_dim=16, bottleneck_dim=8)
        )
    code = rtt(["lmc", f"{store.path}:teacher", f"{store.path}:1", "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "\n" not in err, err
    assert "is not a classifier for the data's 10 classes (32 outputs per image)" in err and "rtt instability" in err
