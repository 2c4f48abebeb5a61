"""The whole benchmark suite at its tiny size: it must run, and its records must be consistent."""

import json
import math

import pytest

from bench import run_all
from bench.common import interleaved, record


def test_interleaved_and_record_compute_medians_and_ratio():
    calls = []
    times = interleaved(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 3, warmup=False, timer={"a": lambda _: 2.0}
    )
    assert calls == ["a", "b"] * 3 and times["a"] == [2.0] * 3 and len(times["b"]) == 3
    rec = record(
        "x",
        "what",
        {"ours": [1.0, 3.0, 2.0], "base": [4.0, 4.0, 5.0]},
        ours="ours",
        baseline="base",
        goal=lambda r: r >= 1.5,
    )
    assert rec["median_s"] == {"ours": 2.0, "base": 4.0} and rec["ratio"] == 2.0 and rec["met"] is True
    assert rec["peak_rss_mb"] > 0


def test_every_benchmark_runs_at_tiny_size(tmp_path):
    out = tmp_path / "results.json"
    assert run_all.main(["--size", "tiny", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["errors"] == {} and doc["size"] == "tiny" and doc["machine"]["cpu_count"] >= 1
    recs = {r["name"]: r for r in doc["benchmarks"] if "median_s" in r}  # print-only ones run at full size
    expected = {
        "distill_epoch",
        "path_bn_reset",
        "imp_level_masked",
        "knn_500",
        "knn_1000",
        "linear_probe",
        "embed",
        "data_load",
        "store_write",
        "startup",
        "distill_peak_rss",
    }
    assert expected <= set(recs)
    for name, r in recs.items():
        assert r["rounds"] >= 1 and r["peak_rss_mb"] > 0, name
        for variant, values in r["seconds"].items():
            assert len(values) == r["rounds"] and all(v > 0 and math.isfinite(v) for v in values), (name, variant)
        if r["baseline"] is not None:
            assert r["ratio"] == pytest.approx(r["median_s"][r["baseline"]] / r["median_s"][r["ours"]]), name
    # the compared variants computed the same thing
    assert recs["path_bn_reset"]["max_abs_loss_difference"] < 1e-4
    for name in ("knn_500", "knn_1000"):
        if recs[name]["baseline"] is not None:  # faiss is optional
            assert recs[name]["prediction_agreement"] == 1.0
    assert recs["embed"]["max_relative_difference"] < 1e-4  # channels-last batches: the same embedding
    assert recs["data_load"]["cold_s"] > 0
    assert 0 < recs["distill_peak_rss"]["peak_rss_mb"] < 16_000


def test_unknown_benchmark_is_a_usage_error(capsys):
    assert run_all.main(["--only", "nope"]) == 2
    assert "nope" in capsys.readouterr().err
