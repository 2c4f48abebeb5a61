"""A model and a probe defined outside the package reach ``rtt distill`` as plugins."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from distill.store import Store

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_DIR = Path(__file__).resolve().parent / "plugin_example"


def _rtt(args: list[str], pythonpath: list[Path], **env: str) -> subprocess.CompletedProcess:
    path = os.pathsep.join([*map(str, pythonpath), str(ROOT)])
    return subprocess.run(
        [sys.executable, "-m", "landscape.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": path, "TQDM_DISABLE": "1", **env},
        timeout=600,
    )


def _flag_help(help_text: str, flag: str, next_flag: str) -> str:
    """The help paragraph of ``flag`` in argparse output (between its line and ``next_flag``'s)."""
    return help_text.split(f"\n  {flag} ", 1)[1].split(f"\n  {next_flag}", 1)[0]


def _entry_point_dist(folder: Path) -> Path:
    """An installed distribution as importlib.metadata sees it: a .dist-info with an entry point."""
    info = folder / "rtt_example_plugin-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: rtt-example-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[random_teachers.plugins]\nexample = rtt_example_plugin\n")
    return folder


def test_plugin_model_and_probe_in_help_and_in_a_distillation(fmnist_root, tmp_path):
    # --plugin MODULE: the plugin's names are listed among the choices of rtt distill -h
    r = _rtt(["distill", "--plugin", "rtt_example_plugin", "-h"], [PLUGIN_DIR])
    assert r.returncode == 0, r.stderr
    assert "example_flatnet" in _flag_help(r.stdout, "--arch NAME", "--arch-options")
    assert "class0_share" in _flag_help(r.stdout, "--probes A,B,...", "--knn-k")
    # without it (and without an entry point) they are unknown
    r = _rtt(["distill", "-h"], [])
    assert r.returncode == 0 and "example_flatnet" not in r.stdout

    out = tmp_path / "plugin.h5"
    r = _rtt(
        [
            "distill",
            "--plugin",
            "rtt_example_plugin",
            "--out",
            str(out),
            "--dataset",
            "fashion-mnist",
            "--data-root",
            str(fmnist_root),
            "--subset",
            "200",
            "--probe-subset",
            "200",
            "--arch",
            "example_flatnet",
            "--arch-options",
            '{"width": 10}',
            "--out-dim",
            "32",
            "--hidden-dim",
            "16",
            "--bottleneck-dim",
            "8",
            "--epochs",
            "1",
            "--batch-size",
            "50",
            "--probes",
            "knn,class0_share",
            "--device",
            "cpu",
        ],
        [PLUGIN_DIR],
    )
    assert r.returncode == 0, r.stderr
    store = Store(out)
    state, attrs = store.load_state(f"student/{store.epochs[-1]:05d}")  # tensors only: no plugin needed here
    assert json.loads(attrs["spec"])["arch"] == "example_flatnet"
    assert state["backbone.layers.1.weight"].shape == (10, 28 * 28)  # the plugin's network, width from JSON
    acc = store.metrics.accuracy
    assert list(acc.probe.values) == ["knn", "class0_share"]
    # the Fashion-MNIST test split holds 1,000 images of each of its 10 classes: the share of class 0 is 0.1
    np.testing.assert_array_equal(acc.sel(probe="class0_share").values, 0.1)
    assert np.all((acc.sel(probe="knn").values > 0.1) & (acc.sel(probe="knn").values <= 1))

    # an entry point in the random_teachers.plugins group: found without --plugin
    dist = _entry_point_dist(tmp_path / "site")
    r = _rtt(["distill", "-h"], [dist, PLUGIN_DIR])
    assert r.returncode == 0, r.stderr
    assert "example_flatnet" in r.stdout and "class0_share" in r.stdout


def test_a_plugin_that_cannot_be_imported_is_a_one_line_error():
    r = _rtt(["distill", "--plugin", "no_such_plugin_module", "-h"], [])
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and "no_such_plugin_module" in r.stderr and "Traceback" not in r.stderr


# a store of plugin models, made through the API in a process that loaded the plugin
_MAKE_STORE = r"""
import sys
import distill
from distill.plugins import load_plugin
from distill.store import Store, student_name

load_plugin(sys.argv[2])
model = distill.build_model(sys.argv[3], in_shape=(1, 4, 4), head=None)
with Store.create(sys.argv[1], {"arch": sys.argv[3]}) as store:
    store.save_module("teacher", model)
    for epoch in (0, 1):
        with store.commit(epoch):
            store.save_module(student_name(epoch), model, {"epoch": epoch})
"""

# loading through the API: without the plugin, then after load_plugin(argv[2]) when given
_LOAD = r"""
import sys
from distill.plugins import PluginError, load_plugin
from distill.store import Store

try:
    Store(sys.argv[1]).student()
    print("loaded")
except PluginError as e:
    print("error:", e)
if len(sys.argv) > 2:
    load_plugin(sys.argv[2])
    print(type(Store(sys.argv[1]).teacher().backbone).__name__)
"""


def _python(code: str, args: list[str], pythonpath: list[Path]) -> subprocess.CompletedProcess:
    path = os.pathsep.join([*map(str, pythonpath), str(ROOT)])
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": path},
        timeout=300,
    )


def test_a_store_of_a_plugin_model_records_the_plugin_and_verifies_when_it_is_loadable(tmp_path):
    out = tmp_path / "plugin_store"
    r = _python(_MAKE_STORE, [str(out), "rtt_example_plugin", "example_flatnet"], [PLUGIN_DIR])
    assert r.returncode == 0, r.stderr
    _, attrs = Store(out).load_state("teacher")  # tensors and attrs only: no plugin needed
    assert attrs["plugin"] == "rtt_example_plugin"

    # named on the command line, or installed as an entry point: a healthy store
    r = _rtt(["verify", "--plugin", "rtt_example_plugin", str(out)], [PLUGIN_DIR])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 problem(s)" in r.stdout
    dist = _entry_point_dist(tmp_path / "site")
    r = _rtt(["verify", str(out)], [dist, PLUGIN_DIR])
    assert r.returncode == 0, r.stdout + r.stderr
    r = _rtt(["info", str(out)], [dist, PLUGIN_DIR])
    assert r.returncode == 0, r.stderr
    assert "plugin    rtt_example_plugin for 3 module(s): installed (entry point 'example')" in r.stdout

    # neither: one line naming the module and the fix, not a list of damaged objects
    r = _rtt(["verify", str(out)], [PLUGIN_DIR])
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and r.stdout == "", r.stdout + r.stderr
    assert "plugin module 'rtt_example_plugin'" in r.stderr and "--plugin rtt_example_plugin" in r.stderr
    assert "damaged" not in r.stderr
    r = _rtt(["info", str(out)], [PLUGIN_DIR])
    assert r.returncode == 0, r.stderr
    assert "plugin    rtt_example_plugin for 3 module(s): not installed: pass --plugin rtt_example_plugin" in r.stdout

    # the Python API: a one-line PluginError, then the model once the user loads the plugin
    r = _python(_LOAD, [str(out), "rtt_example_plugin"], [PLUGIN_DIR])
    assert r.returncode == 0, r.stderr
    first, second = r.stdout.strip().splitlines()
    assert first.startswith("error: ") and "'rtt_example_plugin'" in first and "load_plugin(" in first
    assert second == "FlatNet"


def test_a_recorded_module_that_is_no_installed_plugin_is_never_imported(tmp_path):
    # a module that registers the model and leaves a mark whenever it is imported
    code = tmp_path / "code"
    code.mkdir()
    marker = tmp_path / "imported"
    (code / "marking_plugin.py").write_text(
        "from pathlib import Path\n"
        "import distill\n"
        "from torch import nn\n"
        f"Path({str(marker)!r}).touch()\n\n"
        "class Net(nn.Linear):\n"
        "    embed_dim = 3\n\n"
        "@distill.register_model('marking_net')\n"
        "def marking_net(in_shape, *, width: int = 3):\n"
        "    return Net(in_shape[2], 3)\n"
    )
    out = tmp_path / "store"
    r = _python(_MAKE_STORE, [str(out), "marking_plugin", "marking_net"], [code])
    assert r.returncode == 0, r.stderr
    assert marker.exists()
    marker.unlink()

    # the module is importable, but neither installed as a plugin nor named: never imported
    r = _rtt(["verify", str(out)], [code])
    assert r.returncode == 1 and "'marking_plugin'" in r.stderr and "--plugin marking_plugin" in r.stderr
    r = _rtt(["info", str(out)], [code])
    assert r.returncode == 0 and "marking_plugin for 3 module(s): not installed" in r.stdout
    r = _python(_LOAD, [str(out)], [code])
    assert r.returncode == 0 and r.stdout.startswith("error: ") and "'marking_plugin'" in r.stdout
    assert not marker.exists()
    # named by the user, it is imported and the store verifies
    r = _rtt(["verify", "--plugin", "marking_plugin", str(out)], [code])
    assert r.returncode == 0, r.stdout + r.stderr
    assert marker.exists()
