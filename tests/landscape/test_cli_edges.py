"""Edges of the rtt command line: no abbreviated flags, usage errors with the closest name, canonical
dataset names, one STORE:REF syntax (the former --epoch/--module still work, with a note), negative
epochs, and ``rtt info --json`` as nested JSON."""

from __future__ import annotations

import json

import pytest
import torch

from distill.config import DistillConfig, from_args
from distill.data import load_dataset
from distill.models import build_model
from distill.resume import open_or_create as _open_or_create
from distill.store import Store
from landscape.cli import build_parser
from landscape.cli import main as rtt


def _usage_error(argv: list[str], capsys) -> str:
    assert rtt(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


@pytest.mark.parametrize(
    "argv, wrong, meant",
    [
        (["distill", "--out", "x.h5", "--epoch", "1"], "--epoch", "--epochs"),
        (["lmc", "a.h5:1", "b.h5:2", "--alpha", "5"], "--alpha", "--alphas"),
        (["locality", "--alphas", "0,1", "--out", "x.nc", "--epoch", "1"], "--epoch", "--epochs"),
    ],
)
def test_abbreviated_flags_are_refused_with_the_full_flag_suggested(argv, wrong, meant, capsys):
    err = _usage_error(argv, capsys)
    assert f"unrecognized arguments: {wrong}" in err and f"did you mean '{meant}'?" in err


def test_an_unknown_architecture_dataset_or_command_is_a_usage_error_with_a_suggestion(capsys):
    err = _usage_error(["distill", "--out", "x.h5", "--arch", "vg11"], capsys)
    assert "unknown architecture 'vg11'" in err and "did you mean 'vgg11'?" in err
    err = _usage_error(["distill", "--out", "x.h5", "--dataset", "cifar1O"], capsys)
    assert "unknown dataset 'cifar1O'" in err and "did you mean 'cifar10'?" in err
    err = _usage_error(["lcm", "a:1", "b:2"], capsys)
    assert "invalid choice: 'lcm'" in err and "did you mean 'lmc'?" in err
    err = _usage_error(["distill", "--out", "x.rts", "--probes", "knn,linaer"], capsys)
    assert "unknown probe 'linaer'" in err and "did you mean 'linear'?" in err


def test_dataset_aliases_are_stored_canonically_and_resume_the_same_run(tmp_path):
    a = build_parser(["distill"]).parse_args(["distill", "--out", "x.h5", "--dataset", "FashionMNIST"])
    assert a.dataset == "fashion-mnist"
    assert from_args(DistillConfig, a).dataset == "fashion-mnist"
    assert DistillConfig(dataset="gaussian:cifar-10").dataset == "gaussian:cifar10"
    # a store written under an alias (before names were canonical) resumes under the canonical name
    old = {**DistillConfig(dataset="fashion-mnist").to_dict(), "dataset": "fashionmnist"}
    Store.create(tmp_path / "old.h5", old, kind="distill")
    store, resumed = _open_or_create(DistillConfig(dataset="fmnist"), tmp_path / "old.h5", resume=True)
    assert resumed and store.config["dataset"] == "fashionmnist"


def test_cifar_without_any_folder_to_look_in_says_so(monkeypatch):
    monkeypatch.delenv("RTT_DATA", raising=False)
    with pytest.raises(FileNotFoundError) as e:
        load_dataset("cifar10")
    assert "tried: )" not in str(e.value) and "RTT_DATA is not set" in str(e.value)


@pytest.fixture()
def two_students(tmp_path) -> Store:
    store = Store.create(tmp_path / "run.h5", {"dataset": "mnist"})
    for name in ("teacher", "student/00001", "student/00003"):
        torch.manual_seed(0)
        store.save_module(name, build_model("mlp", (1, 4, 4), head="linear", num_classes=2, widths=[4]))
    return store


def test_a_negative_epoch_past_the_first_student_names_the_saved_epochs(two_students, capsys):
    assert rtt(["lmc", f"{two_students.path}:-3", f"{two_students.path}:1"]) == 1
    err = capsys.readouterr().err.strip()
    assert f"{two_students.path}:-3 counts back past the first saved student" in err
    assert "epochs 1, 3" in err and "-1 (the last) to -2" in err and "epoch -1" not in err


@pytest.mark.parametrize("command", ["instability", "lottery"])
def test_instability_and_lottery_take_store_ref_and_still_read_the_former_flags(command, two_students, capsys):
    path = two_students.path
    # STORE:REF, as every other command: an epoch that is not saved is named with the saved ones
    assert rtt([command, f"{path}:2", "--preset", "tiny"]) == 1
    err = capsys.readouterr().err
    assert "no student at epoch 2 (saved epochs: 1, 3)" in err and "deprecated" not in err
    # the former spelling resolves to the same reference, with a note on the new one
    assert rtt([command, str(path), "--epoch", "2", "--preset", "tiny"]) == 1
    err = capsys.readouterr().err
    assert f"deprecated: write {path}:2" in err and "no student at epoch 2" in err
    # both at once is refused
    assert rtt([command, f"{path}:3", "--module", "teacher"]) == 1
    assert "drop --epoch/--module" in capsys.readouterr().err


def test_info_json_nests_the_json_attributes(two_students, capsys):
    assert rtt(["info", str(two_students.path), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["config"] == {"dataset": "mnist"}
    assert d["modules"] == ["student/00001", "student/00003", "teacher"]
