"""Store names: ``.rts`` store folders, older ``.h5`` folders resumed, and a store read with h5py alone."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import distill
from distill.store import SUFFIX, Store, store_name, student_name

ROOT = Path(__file__).resolve().parents[2]


def _toy_store(path: Path, epochs: tuple[int, ...] = (1, 2)) -> Store:
    """A folder store with a teacher and one student per epoch, each commit as a distillation writes it."""
    torch.manual_seed(0)
    build = {"head": "dino", "out_dim": 16, "hidden_dim": 8, "bottleneck_dim": 4, "widths": [32]}
    store = Store.create(path, {"arch": "mlp", "epochs": max(epochs)})
    store.save_module("teacher", distill.build_model("mlp", (1, 8, 8), **build), {"epoch": 0})
    for e in epochs:
        with store.commit(e):
            store.save_module(student_name(e), distill.build_model("mlp", (1, 8, 8), **build), {"epoch": e})
    return store


# ----------------------------------------------------------------------------- the suffix
def test_store_name_keeps_a_new_name_and_resumes_only_an_older_h5_folder(tmp_path):
    assert SUFFIX == ".rts"
    new = tmp_path / "run-lottery-e2.rts"
    assert store_name(new) == new  # nothing there: the .rts name
    (tmp_path / "run-lottery-e2.h5").write_bytes(b"")  # a file (a packed store) is not a store folder to resume
    assert store_name(new) == new
    (tmp_path / "run-lottery-e2.h5").unlink()
    _toy_store(tmp_path / "run-lottery-e2.h5", epochs=(1,))
    assert store_name(new) == tmp_path / "run-lottery-e2.h5"  # only the older folder: resumed
    _toy_store(new, epochs=(1,))
    assert store_name(new) == new  # both there: the .rts one
    other = tmp_path / "x.nc"
    assert store_name(other) == other  # not a store name: unchanged


def test_a_store_created_at_an_h5_path_is_a_folder_store(tmp_path):
    store = _toy_store(tmp_path / "old.h5")
    assert (tmp_path / "old.h5").is_dir() and (tmp_path / "old.h5" / "store.h5").is_file()
    assert Store(tmp_path / "old.h5").epochs == [1, 2] == store.epochs
    with pytest.raises(OSError, match="directory"):
        h5py.File(tmp_path / "old.h5", "r")  # the folder itself is not one HDF5 file


def test_an_analysis_resumes_its_older_h5_store_and_names_new_ones_rts(tmp_path):
    from analyses.common import Context

    ctx = Context(
        name="probing_curves", preset="smoke", runs=tmp_path / "runs", results=tmp_path, root=None, device="cpu"
    )
    fresh = ctx.store("seed1.rts")
    assert fresh == tmp_path / "runs" / "probing_curves" / "smoke" / "seed1.rts" and fresh.parent.is_dir()
    old = tmp_path / "runs" / "probing_curves" / "smoke" / "seed0.h5"
    _toy_store(old, epochs=(1,))  # an interrupted run of an earlier version
    assert ctx.store("seed0.rts") == old
    assert ctx.store("probes", "x.json").name == "x.json"  # other files keep their names


@pytest.mark.parametrize(
    ("command", "module"), [("instability", "landscape.instability"), ("lottery", "landscape.lottery")]
)
def test_the_cli_resumes_an_older_derived_store(tmp_path, monkeypatch, command, module):
    """``rtt instability STORE`` derives ``STORE-instability-eEPOCH.rts`` and ``rtt lottery STORE``
    ``STORE-lottery-eEPOCH.rts``; where only the ``.h5`` folder of that name is there, the analysis
    is given that one (which it resumes)."""
    from landscape.cli import main
    from landscape.cli import training as commands

    source = _toy_store(tmp_path / "run.rts", epochs=(1, 2))
    seen = {}

    def fake(start, data, *, store, **kw):
        seen["store"] = Path(store)
        raise SystemExit(0)  # stop before any training: the name is what this test checks

    monkeypatch.setattr(importlib.import_module(module), command, fake)
    monkeypatch.setattr(commands, "data_for", lambda store, a: None)
    args = [command, str(source.path), "--preset", "tiny", "--device", "cpu"]
    with pytest.raises(SystemExit):
        main(args)
    assert seen["store"] == tmp_path / f"run-{command}-e2.rts"
    _toy_store(tmp_path / f"run-{command}-e2.h5", epochs=(1,))
    with pytest.raises(SystemExit):
        main(args)
    assert seen["store"] == tmp_path / f"run-{command}-e2.h5"
    assert not (tmp_path / f"run-{command}-e2.rts").exists()


# ----------------------------------------------------------------------------- h5py alone
def _readme_h5py_block() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Reading a store with h5py alone", 1)[1]
    m = re.search(r"^```python\n(.*?)^```", section, re.M | re.S)
    assert m, "README.md: the section 'Reading a store with h5py alone' has no python block"
    return m.group(1)


def test_the_readme_lines_read_the_newest_student_and_the_config_with_h5py_alone(tmp_path, monkeypatch):
    code = _readme_h5py_block()
    assert "import torch" not in code and "distill" not in code  # h5py, json and pathlib only
    monkeypatch.chdir(tmp_path)
    store = _toy_store(Path("runs/tour.rts"), epochs=(1, 3))
    (store.path / "commits" / ".pending-000009-dead").mkdir()  # an unfinished commit is not read
    ns: dict = {}
    exec(compile(code, "README.md", "exec"), ns)
    assert ns["config"] == store.config
    assert ns["newest"] == store.path / "commits" / "000003" / "modules" / "student" / "00003.h5"
    expected = store.student().state_dict()
    assert set(ns["tensors"]) == set(expected)
    for k, v in expected.items():
        np.testing.assert_array_equal(ns["tensors"][k], v.numpy(), err_msg=k)
    first = store.student(1).state_dict()
    assert any(not np.array_equal(ns["tensors"][k], v.numpy()) for k, v in first.items())  # not epoch 1's
    assert ns["spec"]["arch"] == "mlp"
