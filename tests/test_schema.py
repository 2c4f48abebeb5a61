"""The result schema: the committed docs page is the generator's output, every name has a label, and
results built by the real functions carry exactly the labels of the tables."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from distill import schema
from distill.schema.doc import BEGIN, END

ROOT = Path(__file__).resolve().parents[1]
EVAL = dict(bn_batches=2, bn_batch_size=24, eval_batch_size=50, device="cpu", channels_last=False)


def test_docs_page_holds_the_generated_section():
    page = (ROOT / "docs" / "schemas.md").read_text()
    section = page[page.index(BEGIN) : page.index(END) + len(END)] + "\n"
    assert section == schema.markdown(), "docs/schemas.md is stale: paste `python -m distill.schema --markdown`"


def test_every_name_of_every_kind_has_a_long_name_and_every_variable_units():
    for kind, spec in schema.KINDS.items():
        assert spec.made_by and spec.dims and spec.variables, kind
        assert not spec.like or spec.like in schema.KINDS, kind
        for name in spec.variables + spec.coords:
            f = schema.field(kind, name)
            assert f.long_name.strip(), (kind, name)
            if name in spec.variables and f.stored:
                assert f.units, (kind, name)


def test_an_unknown_name_names_the_table_to_extend():
    with pytest.raises(KeyError, match=r"distill.schema.kinds.KINDS\['plane'\]"):
        schema.result_dataset("plane", {"nonsense": ("x", [1.0])})
    with pytest.raises(KeyError, match="no result kind"):
        schema.result_dataset("no such kind", {})


def test_builder_labels_fills_and_keeps_explicit_attrs_and_stamps():
    ds = schema.result_dataset(
        "hessian",
        {"trace": ((), 1.0), "density": ("lambda", [0.5, 0.5], {"sigma": 0.1}), "loss": ((), 2.0, {"units": "bits"})},
        {"lambda": ("lambda", [0.0, 1.0])},
        {"analysis": "hessian"},
        fill={"trace_method": "hutch++", "trace_probes": 3, "loss": "supervised"},
        provenance={"recipe": {"k": 1}, "kind": "hessian"},
    )
    assert ds.trace.attrs == {"long_name": "Hessian trace (hutch++, 3 probes)", "units": "nats"}
    assert ds.density.attrs["sigma"] == 0.1 and ds.density.attrs["units"] == "1/nats"
    assert ds.loss.attrs == {"long_name": "supervised loss at the point", "units": "bits"}
    assert ds.attrs["analysis"] == "hessian" and ds.attrs["run_name"].startswith("hessian_")


def _check(ds, kind: str, fill: dict | None = None, names=None) -> None:
    """Every variable and coordinate of ``ds`` (or ``names``) carries exactly the table's long_name and units."""
    for name in ds.variables if names is None else names:
        want = schema.labels(kind, str(name))
        if fill and "{" in want.get("long_name", ""):
            want["long_name"] = want["long_name"].format(**fill)
        got = {k: ds[name].attrs[k] for k in ("long_name", "units") if k in ds[name].attrs}
        assert got == want, (kind, name)
        assert all(re.fullmatch(r"[^{}]*", str(v)) for v in got.values()), (kind, name)


@pytest.fixture(scope="module")
def nets():
    from tests.landscape.test_planes import model, synthetic

    return synthetic(), [model(s) for s in range(3)]


def test_linear_path_barrier_and_plane_carry_the_table_labels(nets):
    from landscape.paths import barrier, linear_path
    from landscape.planes import plane

    data, (a, b, c) = nets
    path = linear_path(a, b, data, alphas=3, **EVAL)
    _check(path, "linear_path")
    heights = barrier(path)
    _check(heights, "barrier", names=heights.data_vars)
    _check(plane(a, b, c, data, resolution=3, bn="keep_a", **EVAL), "plane")


def test_surface_carries_the_table_labels():
    from landscape.surface import surface
    from tests.landscape.test_surface import COMMON, _data, _net

    a, b, c = _net(0), _net(1), _net(2)
    line = surface(a, _data(), directions=[b], dims=1, resolution=3, span=(0.0, 1.0), progress=False, **COMMON)
    _check(line, "surface", {"row": "line"})
    plane = surface(a, _data(), directions=[b, c], dims=2, resolution=3, progress=False, **COMMON)
    _check(plane, "surface", {"row": "row"})


def test_hessian_carries_the_table_labels():
    import torch

    from distill.data import Dataset, Split
    from landscape.hessian import hessian
    from tests.landscape.test_hessian import _tiny

    g = torch.Generator().manual_seed(5)
    imgs = torch.randint(0, 256, (48, 1, 3, 3), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 3, (48,), generator=g)
    data = Dataset("synthetic", Split(imgs, labels), Split(imgs[:8], labels[:8]), ["0", "1", "2"], (0.5,), (0.25,))
    ds = hessian(_tiny(), data, k=2, batch_size=16, trace_probes=4, slq_runs=1, slq_steps=5, device="cpu")
    _check(ds, "hessian", {"loss": ds.attrs["loss"], "trace_method": ds.attrs["trace_method"], "trace_probes": 4})


def test_metrics_carry_the_table_labels():
    import torch

    from distill.config import DistillConfig
    from distill.history import History

    h = History(epochs=[0, 1], loss=[1.0, 0.5], kl=[0.2, 0.1], student_norm=[1, 1], teacher_norm=[1, 1])
    h.distance, h.seconds, h.probes = [0.0, 0.1], [1.0, 1.0], {0: {"student": {"knn": 0.3}}}
    _check(h.to_dataset(DistillConfig(probes=["knn"]), torch.device("cpu")), "metrics")
