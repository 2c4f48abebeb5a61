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
