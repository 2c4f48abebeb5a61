"""Provenance: one set of keys on every store and on every kind of result (and .nc file)."""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from distill.provenance import KEYS, missing, provenance
from distill.store import Store
from distill.train import distill

ROOT = Path(__file__).resolve().parents[2]


def git_head() -> tuple[str, int]:
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode:
        return "", -1
    status = subprocess.run(["git", "-C", str(ROOT), "diff", "HEAD", "--quiet"], capture_output=True)
    return head.stdout.strip(), int(status.returncode != 0)


def check(attrs, kind: str, recipe: dict | None = None, device: str = "cpu", precision: str = "fp32") -> None:
    assert missing(attrs) == [], kind
    assert all(isinstance(attrs[k], (str, int, np.integer)) for k in KEYS)
    commit, dirty = git_head()
    assert attrs["git_commit"] == commit and attrs["git_dirty"] == dirty
    assert attrs["host"] == socket.gethostname() and attrs["torch_version"] == torch.__version__
    assert attrs["cuda_version"] == (torch.version.cuda or "")
    assert attrs["device"] == device and attrs["precision"] == precision and attrs["world_size"] == 1
    text = attrs["recipe"]
    assert attrs["config_hash"] == hashlib.sha256(text.encode()).hexdigest()[:10]
    assert attrs["run_name"] == f"{kind}_{attrs['config_hash']}"
    assert "pytest" in attrs["command_line"] or "py.test" in attrs["command_line"]
    if recipe is not None:
        assert json.loads(text) == json.loads(json.dumps(recipe, default=str))


def roundtrip(ds: xr.Dataset, path: Path) -> dict:
    ds.to_netcdf(path, engine="h5netcdf")
    with xr.open_dataset(path, engine="h5netcdf") as back:
        return dict(back.attrs)


def test_the_hash_names_the_recipe_not_the_moment():
    a, b = provenance({"lr": 0.1, "epochs": 2}), provenance({"epochs": 2, "lr": 0.1})
    assert a["config_hash"] == b["config_hash"] != provenance({"lr": 0.2, "epochs": 2})["config_hash"]
    assert a["recipe"] == '{"epochs": 2, "lr": 0.1}'


def test_store_and_metrics_of_a_distillation(tmp_path):
    from tests.distill.test_train import synthetic, tiny_cfg

    cfg = tiny_cfg(epochs=1, probes=["knn"])
    store = distill(cfg, tmp_path / "d.h5", data=synthetic(), progress=False)
    check(store.attrs, "distill", cfg.to_dict())
    check(store.metrics.attrs, "distill", cfg.to_dict())
    check(roundtrip(store.metrics, tmp_path / "metrics.nc"), "distill", cfg.to_dict())
    assert store.attrs["config_hash"] == store.metrics.attrs["config_hash"]


def test_every_kind_of_result_file(tmp_path):
    import landscape
    from distill.config import SupervisedConfig
    from tests.distill.test_train import synthetic, tiny_cfg
    from tests.landscape import test_instability as ti
    from tests.landscape import test_planes as tp

    data = ti.synthetic()
    start = ti.dino_start()
    kids = landscape.instability(
        start, data, children=2, cfg=ti.CFG, store=tmp_path / "kids.h5", alphas=3, device="cpu", path_options=ti.PATH
    )
    a, b = Store(tmp_path / "kids.h5").load_module("children/0"), Store(tmp_path / "kids.h5").load_module("children/1")
    lmc = landscape.linear_path(a, b, data, alphas=3, device="cpu", **ti.PATH)
    pdata = tp.synthetic()
    plane = landscape.plane(tp.model(0), tp.model(1), tp.model(2), pdata, resolution=3, **tp.EVAL)
    lot = landscape.lottery(
        a,
        data,
        levels=2,
        cfg=SupervisedConfig(epochs=1, milestones=[], batch_size=32, augment="none", device="cpu"),
        device="cpu",
    )
    cfg = tiny_cfg(epochs=1, probes=["knn"])
    loc = landscape.locality(cfg, alphas=[0.5], out_dir=tmp_path / "loc", data=synthetic(), progress=False)
    for kind, ds in (("instability", kids), ("lmc", lmc), ("plane", plane), ("lottery", lot), ("locality", loc)):
        check(ds.attrs, kind)
        check(roundtrip(ds, tmp_path / f"{kind}.nc"), kind)
    assert json.loads(loc.attrs["recipe"])["distill"] == cfg.to_dict()
    assert json.loads(kids.attrs["recipe"])["supervised"] == ti.CFG.to_dict()
    # the stores the analyses write carry the same keys
    check(Store(tmp_path / "kids.h5").attrs, "instability")
    check(Store(str(loc.store.sel(alpha=0.5, seed=0).item())).attrs, "distill")
