"""Progress of a batch job: with stderr redirected to a file, ``rtt distill`` logs one line per epoch;
the JSON-lines file beside the store parses and matches ``store.metrics``; TensorBoard scalars."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from distill.progress import progress_path, read_progress
from distill.store import Store

ROOT = Path(__file__).resolve().parents[2]


def tiny_mnist(root: Path, n_train: int = 256, n_test: int = 64) -> Path:
    """An MNIST-format dataset (IDX files) of 12x12 images whose brightness follows the class."""
    from tests.landscape.test_instability import write_idx

    root.mkdir(parents=True, exist_ok=True)
    g = np.random.default_rng(0)
    for stem, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        write_idx(
            root / f"{stem}-images-idx3-ubyte.gz",
            (labels[:, None, None] * 20 + g.integers(0, 60, (n, 12, 12))).clip(0, 255),
        )
        write_idx(root / f"{stem}-labels-idx1-ubyte.gz", labels)
    return root


def tiny_args(data_root: Path, out: Path, epochs: int = 3) -> list[str]:
    """``rtt distill`` flags of a tiny run: 256 images, global batch 64 (4 steps per epoch)."""
    return [
        "--out",
        str(out),
        "--dataset",
        "mnist",
        "--data-root",
        str(data_root),
        "--arch",
        "convnet",
        "--arch-options",
        '{"width": 8, "depth": 2, "bn": true}',
        "--out-dim",
        "64",
        "--hidden-dim",
        "32",
        "--bottleneck-dim",
        "16",
        "--batch-size",
        "64",
        "--epochs",
        str(epochs),
        "--save-every",
        "1",
        "--probes",
        "knn",
        "--probe-every",
        "2",
        "--knn-k",
        "5",
        "--device",
        "cpu",
    ]


def test_rtt_distill_in_a_batch_job_logs_one_line_per_epoch_and_a_matching_jsonl(tmp_path):
    out = tmp_path / "run.h5"
    root = tiny_mnist(tmp_path / "mnist")
    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}  # as in a batch job: the bar decides
    with open(tmp_path / "stderr.txt", "w") as err:
        done = subprocess.run(
            [sys.executable, "-m", "landscape.cli", "distill", *tiny_args(root, out)],
            cwd=ROOT,
            env={**env, "OMP_NUM_THREADS": "1"},
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            timeout=600,
        )
    log = (tmp_path / "stderr.txt").read_text()
    assert done.returncode == 0, log[-2000:]
    lines = [line for line in log.splitlines() if " distill.train " in line]
    epochs = [int(re.search(r" epoch (\d+)/3 ", line).group(1)) for line in lines]
    assert epochs == [0, 1, 2, 3]  # one line per epoch (epoch 0: before training), nothing else from the loop
    assert "\r" not in log  # no progress bar drawn into the file
    assert re.search(
        r"epoch 2/3 loss \d+\.\d{6} kl -?\d\.\d\de[-+]\d\d student knn \d+\.\d \| \d+\.\d s, ETA \d+:\d\d:\d\d",
        lines[2],
    ), lines[2]
    # before epoch 0's line: what its long silence is (probing each model on the probe images)
    notes = [line for line in log.splitlines() if " distill.progress " in line]
    first = log.splitlines().index(lines[0])
    assert [n.split(": ", 1)[1] for n in notes if log.splitlines().index(n) < first] == [
        "probing the teacher (knn, embedding 256 + 64 images)",
        "probing the BN-recalibrated teacher (knn, embedding 256 + 64 images)",
        "probing the input (raw pixels) (knn)",
        "probing the student (knn, embedding 256 + 64 images)",
    ]
    assert "(epoch 0)" in lines[1] and "(epoch" not in lines[3]  # the latest probes, and of which epoch

    records = read_progress(out)
    assert [json.loads(line)["epoch"] for line in progress_path(out).read_text().splitlines()] == [0, 1, 2, 3]
    m = Store(out).metrics
    assert [r["epoch"] for r in records] == [int(e) for e in m.epoch.values]
    for r in records:
        row = m.sel(epoch=r["epoch"])
        for key in ("loss", "kl", "seconds"):
            want = float(row[key])
            assert (r[key] is None and math.isnan(want)) or r[key] == want, (r["epoch"], key)
        probed = r["probed_epoch"]
        acc = m.accuracy.sel(epoch=probed)
        for model, got in r["probes"].items():
            for probe, value in got.items():
                assert value == float(acc.sel(model=model, probe=probe))
    assert [r["probed_epoch"] for r in records] == [0, 0, 2, 3]
    assert records[0]["loss"] is None and records[-1]["eta_seconds"] == 0.0
    # the log line shows the same numbers as the record
    assert f"loss {records[1]['loss']:.6f} kl {records[1]['kl']:.2e}" in lines[1]


def test_resuming_keeps_the_records_up_to_the_resumed_epoch(tmp_path):
    from distill.train import distill
    from tests.distill.test_train import synthetic, tiny_cfg

    out = tmp_path / "r.h5"
    distill(tiny_cfg(epochs=2, save_every=2, probes=["knn"]), out, data=synthetic(), progress=False)
    path = progress_path(out)
    # a record of an epoch the store never committed (a run killed after epoch 3 of 4, say)
    path.write_text(path.read_text() + json.dumps({"epoch": 3, "loss": 1.0}) + "\n")
    distill(tiny_cfg(epochs=4, save_every=2, probes=["knn"]), out, data=synthetic(), progress=False)
    records = read_progress(out)
    assert [r["epoch"] for r in records] == [0, 1, 2, 3, 4]
    assert records[3]["loss"] == float(Store(out).metrics.loss.sel(epoch=3)) != 1.0


def test_tensorboard_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from distill.train import distill
    from tests.distill.test_train import synthetic, tiny_cfg

    store = distill(
        tiny_cfg(epochs=2, probes=["knn"]),
        tmp_path / "t.h5",
        data=synthetic(),
        progress=False,
        tensorboard=tmp_path / "tb",
    )
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    m = store.metrics
    loss = {e.step: e.value for e in acc.Scalars("distill/loss")}
    assert sorted(loss) == [1, 2]
    np.testing.assert_allclose([loss[1], loss[2]], m.loss.sel(epoch=[1, 2]).values, rtol=1e-6)
    knn = {e.step: e.value for e in acc.Scalars("probe/student/knn")}
    assert sorted(knn) == [0, 1, 2]
    np.testing.assert_allclose(knn[2], float(m.accuracy.sel(epoch=2, model="student", probe="knn")), rtol=1e-6)


def test_the_log_line_shows_a_tiny_kl_and_small_loss_changes():
    from distill.progress import EpochReporter

    rep = EpochReporter("unused.h5", "run", 3, 0, enabled=False)
    rec = {"epoch": 1, "loss": 8.3176123, "kl": 1.2345e-6, "seconds": 12.34, "eta_seconds": 30.0, "probes": {}}
    assert rep.line(rec) == "run epoch 1/3 loss 8.317612 kl 1.23e-06 | 12.3 s, ETA 0:00:30"
    rec = {**rec, "epoch": 0, "loss": None, "kl": None, "eta_seconds": None}
    assert rep.line(rec) == "run epoch 0/3 loss - kl - | 12.3 s"
