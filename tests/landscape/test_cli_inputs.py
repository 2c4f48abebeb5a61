"""Flag values of rtt: --alphas of the path commands, rtt plot on a store."""

from __future__ import annotations

import argparse

import pytest

from distill.store import Store
from landscape.cli import main as rtt
from landscape.configs import path_alphas as _path_alphas


def test_path_alphas_take_a_count_or_values():
    assert _path_alphas("21") == 21
    assert _path_alphas("0,0.5,1") == [0.0, 0.5, 1.0]
    for bad, says in (("1", "at least 2"), ("0,2", "[0, 1]"), ("many", "number of points")):
        with pytest.raises(argparse.ArgumentTypeError, match=says):
            _path_alphas(bad)


def test_rtt_plot_on_a_store_without_results_is_a_one_line_error(tmp_path, capsys):
    store = Store.create(tmp_path / "empty.h5", {"dataset": "mnist"})
    assert rtt(["plot", str(store.path)]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "holds no result variables" in err and "Traceback" not in err
