"""analyses.units.Unit: a result file records its settings and their config hash; the same settings are done,
other settings are refused in one line naming the fields that differ, a file that records none is redone."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
import xarray as xr

from analyses import common
from analyses.units import Unit
from distill.provenance import config_hash


@dataclasses.dataclass(frozen=True)
class Scaled(Unit):
    IGNORED = ("out", "data", "calls")
    factor: float
    size: int
    out: str
    data: Any = None
    calls: list = dataclasses.field(default_factory=list, compare=False)

    def run(self) -> xr.Dataset:
        self.calls.append(1)
        return xr.Dataset({"value": ("i", [self.factor * i for i in range(self.size)])})


def test_same_settings_are_done_and_skipped(tmp_path):
    unit = Scaled(2.0, 3, str(tmp_path / "u.nc"))
    assert not unit.done()
    assert unit() == unit.out and len(unit.calls) == 1
    ds = common.open_result(unit.out)
    assert json.loads(ds.attrs["unit"]) == {"factor": 2.0, "size": 3}
    assert ds.attrs["config_hash"] == config_hash({"factor": 2.0, "size": 3})
    assert unit.done()
    unit()
    assert len(unit.calls) == 1  # not recomputed


def test_other_settings_are_refused_in_one_line_naming_the_fields(tmp_path):
    Scaled(2.0, 3, str(tmp_path / "u.nc"))()
    other = Scaled(2.0, 4, str(tmp_path / "u.nc"))
    assert not other.done()
    with pytest.raises(common.UsageError) as e:
        other()
    msg = str(e.value)
    assert "\n" not in msg and "size=3" in msg and "size=4" in msg and "factor" not in msg
    assert other.calls == []
    assert common.open_result(other.out).value.size == 3  # the file is left as it was


def test_a_file_that_records_no_settings_is_computed_again(tmp_path):
    path = tmp_path / "u.nc"
    common.save(xr.Dataset({"value": ("i", [9.0])}), path)
    unit = Scaled(1.0, 2, str(path))
    assert not unit.done()
    unit()
    assert unit.calls == [1] and unit.done()
    assert common.open_result(path).value.values.tolist() == [0.0, 1.0]


def test_a_file_without_settings_that_the_unit_adopts_is_done(tmp_path):
    class Adopting(Scaled):
        def adopt(self, ds: xr.Dataset) -> bool:
            return "value" in ds

    path = tmp_path / "u.nc"
    common.save(xr.Dataset({"value": ("i", [9.0])}), path)
    unit = Adopting(1.0, 2, str(path))
    assert unit.done()
    unit()
    assert unit.calls == [] and common.open_result(path).value.values.tolist() == [9.0]


def test_a_file_of_the_older_key_alone_resolves_by_its_hash(tmp_path):
    path = tmp_path / "u.nc"
    key = json.dumps({"size": 2, "factor": 1.0}, sort_keys=True)  # written before the hash was recorded
    common.save(xr.Dataset({"value": ("i", [0.0, 1.0])}, attrs={"unit": key}), path)
    assert Scaled(1.0, 2, str(path)).done()
    assert not Scaled(1.0, 3, str(path)).done()


def test_a_sweep_refuses_other_settings_before_any_unit_runs(tmp_path):
    Scaled(2.0, 3, str(tmp_path / "b.nc"))()
    first, other = Scaled(1.0, 2, str(tmp_path / "a.nc")), Scaled(2.0, 5, str(tmp_path / "b.nc"))
    ctx = common.Context("units", "smoke", tmp_path / "runs", tmp_path / "results", None, "cpu")
    with pytest.raises(common.UsageError, match="size=3"):
        common.sweep([first, other], ctx)
    assert first.calls == [] and not (tmp_path / "a.nc").exists()
