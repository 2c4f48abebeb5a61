import json
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import xarray as xr

import distill
from distill.store import Store, StoreError, as_module, fsio, load_into, student_name
from landscape.cli import main as rtt

ROOT = Path(__file__).resolve().parents[2]


def small(arch: str) -> torch.nn.Module:
    shape = (3, 32, 32)
    opts = {"depth": 2} if arch.startswith("vit") else {}  # two blocks hold every kind of key twelve do
    return distill.build_model(arch, shape, head="dino", out_dim=64, hidden_dim=32, bottleneck_dim=16, **opts)


@pytest.mark.parametrize("arch", distill.list_models())
def test_every_model_round_trips_bit_for_bit(tmp_path, arch):
    torch.manual_seed(0)
    model = small(arch)
    with torch.no_grad():  # make buffers non-trivial too
        for b in model.buffers():
            if b.is_floating_point():
                b.copy_(torch.rand_like(b))
    store = Store.create(tmp_path / "s.h5", {"arch": arch})
    store.save_module("teacher", model, {"epoch": 0})
    back = Store(tmp_path / "s.h5").load_module("teacher")
    sd, bd = model.state_dict(), back.state_dict()
    assert list(sd) == list(bd)
    for k in sd:
        assert sd[k].dtype == bd[k].dtype and torch.equal(sd[k], bd[k]), k
    assert back.spec == model.spec


def test_bf16_and_int_tensors_round_trip(tmp_path):
    store = Store.create(tmp_path / "s.h5")
    t = {"a": torch.randn(5, 3).to(torch.bfloat16), "b": torch.arange(7), "c/d": torch.rand(2, dtype=torch.float64)}
    store.save_state("x", t, {"step": 3})
    back, meta = store.load_state_group("x")
    assert meta == {"step": 3}
    for k in t:
        assert back[k].dtype == t[k].dtype and torch.equal(back[k], t[k])


@pytest.mark.parametrize("direct", ["available", "unavailable", "cut_short"])
def test_large_tensors_are_written_exactly_with_or_without_o_direct(tmp_path, monkeypatch, direct):
    """Large tensors go to the disk with O_DIRECT where the file system allows it; without it, or
    when a direct write comes back short, the page cache takes the rest. Every path writes the
    same bytes, which h5py alone reads back."""
    g = torch.Generator().manual_seed(0)
    t = {
        "big": torch.randn(300_001, generator=g),  # ~1.2 MB, ends mid-block
        "odd": torch.randint(0, 255, (4 * 70_000 + 3,), generator=g, dtype=torch.uint8),
        "small": torch.randn(3, generator=g),
        "mask": torch.rand(1000, generator=g) > 0.5,
        "scalar": torch.tensor(7),
        "empty": torch.zeros(0),
    }
    if direct == "unavailable":
        monkeypatch.setattr(fsio, "_open_direct", lambda path: -1)
    if direct == "cut_short":
        write = fsio._write_direct
        monkeypatch.setattr(fsio, "_write_direct", lambda fd, buf, v, off: write(fd, buf, v[: fsio.BLOCK * 3], off))
    store = Store.create(tmp_path / "s.h5")
    store.save_state("x", t, {})
    back, _ = store.load_state_group("x")
    for k in t:
        assert back[k].dtype == t[k].dtype and torch.equal(back[k], t[k]), k
    with h5py.File(next((tmp_path / "s.h5").rglob("x.h5")), "r") as f:
        for k in t:
            np.testing.assert_array_equal(f[k][()], t[k].numpy())


def test_students_epochs_and_missing_epoch(tmp_path):
    store = Store.create(tmp_path / "s.h5", {"arch": "mlp"})
    m = distill.build_model("mlp", (1, 8, 8), head=None)
    store.save_module("teacher", m)
    for e in (0, 5, 10):
        with torch.no_grad():
            for p in m.parameters():
                p.fill_(e)
        store.save_module(student_name(e), m, {"epoch": e})
    assert store.epochs == [0, 5, 10]
    last = store.student()
    assert all(torch.all(p == 10) for p in last.parameters())
    assert all(torch.all(p == 5) for p in store.student(5).parameters())
    assert all(torch.all(p == 0) for p in as_module((store.path, 0)).parameters())
    with pytest.raises(StoreError, match=r"no student at epoch 7 \(saved epochs: 0, 5, 10\)"):
        store.student(7)
    assert not store.teacher().training


def test_wrong_architecture_names_the_key(tmp_path):
    store = Store.create(tmp_path / "s.h5")
    store.save_module("teacher", distill.build_model("mlp", (1, 8, 8), head=None, widths=[16, 16]))
    state, _ = store.load_state("teacher")
    other = distill.build_model("mlp", (1, 8, 8), head=None, widths=[16, 32])
    with pytest.raises(StoreError, match="shape"):
        load_into(other, state, where="x")
    conv = distill.build_model("convnet", (1, 8, 8), head=None, width=8, depth=1)
    with pytest.raises(StoreError, match="missing key"):
        load_into(conv, state, where="x")


def _one_line_error(argv, capsys, match):
    code = rtt(argv)
    err = capsys.readouterr().err
    assert code != 0
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert match in err
    return err


def test_bad_files_give_one_line_errors(tmp_path, capsys):
    good = Store.create(tmp_path / "good.h5", {"arch": "mlp"})
    good.save_module("teacher", distill.build_model("mlp", (1, 8, 8), head=None))
    assert rtt(["info", str(good.path)]) == 0
    assert "teacher" in capsys.readouterr().out

    obj = good.path / "objects" / "modules" / "teacher.h5"
    data = obj.read_bytes()
    obj.write_bytes(data[: len(data) // 2])
    with pytest.raises(StoreError, match="teacher"):
        Store(good.path).load_module("teacher")

    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(StoreError, match="not a random-teachers store"):
        Store(foreign)
    _one_line_error(["info", str(foreign)], capsys, "not a random-teachers store")

    text = tmp_path / "notes.txt"
    text.write_text("hello")
    _one_line_error(["info", str(text)], capsys, "notes.txt")
    _one_line_error(["info", str(tmp_path / "absent.h5")], capsys, "no store at")


def test_cli_exit_code_in_a_subprocess(tmp_path):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    r = subprocess.run(
        [sys.executable, "-m", "landscape.cli", "info", str(bad)], capture_output=True, text=True, cwd=ROOT
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr and "bad.h5" in r.stderr


def test_results_round_trip_identical(tmp_path):
    store = Store.create(tmp_path / "s.h5")
    ds = xr.Dataset(
        {
            "accuracy": (
                ("epoch", "model", "probe"),
                np.random.rand(3, 2, 2),
                {"long_name": "probe accuracy", "units": "fraction"},
            )
        },
        coords={"epoch": [0, 5, 10], "model": ["teacher", "student"], "probe": ["knn", "linear"]},
        attrs={"config": "{}", "n": 3},
    )
    store.write_result("metrics", ds)
    store.write_result("metrics", ds)  # replacing keeps one copy
    assert store.results() == ["metrics"]
    assert store.metrics.identical(ds)
    store.save_module("teacher", distill.build_model("mlp", (1, 8, 8), head=None))  # still writable
    assert Store(store.path).metrics.identical(ds)


def test_create_refuses_to_overwrite(tmp_path):
    Store.create(tmp_path / "s.h5")
    with pytest.raises(StoreError, match="already exists"):
        Store.create(tmp_path / "s.h5")


# ---------------------------------------------------------------------------- format 1 and packed files
def write_format1_store(path: Path, modules: dict, results: dict) -> None:
    """A store as the format-1 writer laid it out (one HDF5 file; groups with a completion mark;
    results as netCDF groups), written here with plain h5py and xarray, independently of the package."""
    with h5py.File(path, "w") as f:
        f.attrs.update(
            {
                "format": "random-teachers-store",
                "format_version": 1,
                "toolkit_version": "0.1.0",
                "torch_version": str(torch.__version__),
                "created_at": "2026-01-01T00:00:00+00:00",
                "kind": "distill",
                "config": '{"arch": "mlp"}',
                "seeds": "{}",
            }
        )
        for g in ("modules", "masks", "state", "results"):
            f.create_group(g)
        for name, (module, attrs) in modules.items():
            g = f.create_group(f"modules/{name}")
            for key, t in module.state_dict().items():
                d = g.create_dataset(key.replace("/", "|"), data=t.detach().numpy())
                d.attrs["dtype"] = str(t.dtype).removeprefix("torch.")
            g.attrs["spec"] = json.dumps(module.spec, sort_keys=True)
            for k, v in attrs.items():
                g.attrs[k] = v
            g.attrs["complete"] = 1
        f.create_group("modules/_partial1234")  # what a killed format-1 writer could leave
    for name, ds in results.items():
        ds.to_netcdf(path, mode="a", group=f"results/{name}", engine="h5netcdf")
        with h5py.File(path, "a") as f:
            f[f"results/{name}"].attrs["complete"] = 1


def _metrics() -> xr.Dataset:
    return xr.Dataset(
        {"accuracy": (("epoch", "model", "probe"), np.arange(12.0).reshape(3, 2, 2) / 12)},
        coords={"epoch": [0, 5, 10], "model": ["teacher", "student"], "probe": ["knn", "linear"]},
    )


def test_format1_store_stays_readable(tmp_path, capsys):
    torch.manual_seed(0)
    teacher = distill.build_model("mlp", (1, 8, 8), head=None)
    students = {e: distill.build_model("mlp", (1, 8, 8), head=None) for e in (0, 5)}
    path = tmp_path / "old.h5"
    write_format1_store(
        path,
        {"teacher": (teacher, {"epoch": 0}), **{student_name(e): (m, {"epoch": e}) for e, m in students.items()}},
        {"metrics": _metrics()},
    )
    before = path.read_bytes()
    s = Store(path)
    assert s.attrs["format_version"] == 1 and s.config == {"arch": "mlp"}
    assert s.epochs == [0, 5] and s.names() == ["student/00000", "student/00005", "teacher"]
    for e, m in students.items():
        back = s.student(e).state_dict()
        assert all(torch.equal(back[k], v) for k, v in m.state_dict().items())
    assert all(torch.equal(a, b) for a, b in zip(s.teacher().state_dict().values(), teacher.state_dict().values()))
    assert s.metrics.identical(_metrics())
    assert rtt(["info", str(path)]) == 0 and "epochs 0, 5" in capsys.readouterr().out
    with pytest.raises(StoreError, match="read-only"):
        Store(path, "a")
    # converted by one command into a packed file that reads the same
    assert rtt(["pack", str(path), str(tmp_path / "new.h5")]) == 0
    p = Store(tmp_path / "new.h5")
    assert p.attrs["format_version"] == 2 and p.attrs["layout"] == "packed" and p.epochs == [0, 5]
    assert torch.equal(
        p.student(5).state_dict()["backbone.layers.1.weight"], students[5].state_dict()["backbone.layers.1.weight"]
    )
    assert path.read_bytes() == before  # reading never writes


def test_format1_store_converts_into_a_writable_folder_store(tmp_path, capsys):
    from distill.store.unpack import main as unpack

    torch.manual_seed(0)
    teacher = distill.build_model("mlp", (1, 8, 8), head=None)
    student = distill.build_model("mlp", (1, 8, 8), head=None)
    path = tmp_path / "old.h5"
    write_format1_store(
        path, {"teacher": (teacher, {"epoch": 0}), student_name(5): (student, {"epoch": 5})}, {"metrics": _metrics()}
    )
    before = path.read_bytes()
    assert unpack([str(path), str(tmp_path / "new.h5")]) == 0
    assert "2 modules" in capsys.readouterr().out
    s = Store(tmp_path / "new.h5", "a")  # writable now
    assert s.attrs["format_version"] == 2 and s.attrs["converted_from"] == str(path) and s.config == {"arch": "mlp"}
    assert s.epochs == [5] and s.metrics.identical(_metrics())
    for got, want in ((s.student(5), student), (s.teacher(), teacher)):
        assert all(torch.equal(got.state_dict()[k], v) for k, v in want.state_dict().items())
    s.save_module(student_name(6), student, {"epoch": 6})
    assert Store(s.path).epochs == [5, 6]
    assert path.read_bytes() == before  # the old file is only read
    # refused in one line, nothing written: an existing output, a folder store as input
    for argv, needle in (([path, s.path], "already exists"), ([s.path, tmp_path / "x.h5"], "already a folder store")):
        assert unpack([str(a) for a in argv]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.h5", "old.h5"]


def test_pack_writes_one_file_the_store_api_reads(tmp_path, capsys):
    s = Store.create(tmp_path / "run.h5", {"arch": "mlp"}, store_dtype="bf16")
    m = distill.build_model("mlp", (1, 8, 8), head=None)
    s.save_module("teacher", m, {"epoch": 0}, masks={"backbone.layers.1.weight": torch.ones(512, 64)})
    with s.commit(3):
        s.save_module(student_name(3), m, {"epoch": 3})
        s.save_state("train", {"x": torch.arange(4)}, {"epoch": 3})
        s.write_result("metrics", _metrics())
    assert rtt(["pack", str(s.path), str(tmp_path / "run-packed.h5")]) == 0
    out = tmp_path / "run-packed.h5"
    assert out.is_file() and "wrote" in capsys.readouterr().out
    p = Store(out)
    assert p.names() == s.names() and p.epochs == [3] and p.names(root="state") == ["train"]
    for name in s.names():
        a, b = s.load_state(name)[0], p.load_state(name)[0]
        assert all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    assert torch.equal(p.load_masks("teacher")["backbone.layers.1.weight"], torch.ones(512, 64, dtype=torch.uint8))
    assert p.metrics.identical(_metrics())
    with h5py.File(out, "r") as f:  # readable with h5py alone; bf16 kept as bf16 bit patterns on disk
        d = f["modules/teacher/backbone.layers.1.weight"]
        info = json.loads(f["modules/teacher"].attrs["tensors"])["backbone.layers.1.weight"]
        assert d.dtype == np.int16 and info["stored"] == "bfloat16" and info["dtype"] == "float32"
    assert rtt(["verify", str(out)]) == 0 and rtt(["verify", str(s.path)]) == 0


def test_half_precision_and_compressed_checkpoints(tmp_path):
    torch.manual_seed(0)
    m = distill.build_model("mlp", (1, 16, 16), head=None, widths=[256])
    sizes = {}
    for dtype, comp in (("fp32", None), ("fp16", None), ("bf16", None), ("fp32", "gzip")):
        s = Store.create(tmp_path / f"{dtype}-{comp}.h5", store_dtype=dtype, compression=comp)
        s.save_module("m", m)
        sizes[dtype, comp] = (s.path / "objects" / "modules" / "m.h5").stat().st_size
        back = Store(s.path).load_module("m").state_dict()
        for k, v in m.state_dict().items():
            assert back[k].dtype == v.dtype  # loaded back into the model's dtype
            want = (
                v
                if dtype == "fp32"
                else v.to(getattr(torch, {"fp16": "float16", "bf16": "bfloat16"}[dtype])).to(v.dtype)
            )
            assert torch.equal(back[k], want), (dtype, k)
    n = sum(v.numel() for v in m.state_dict().values())
    assert sizes["fp32", None] >= 4 * n and sizes["fp16", None] < 2 * n * 1.1 and sizes["bf16", None] < 2 * n * 1.1
    assert sizes["fp32", "gzip"] < sizes["fp32", None]


# ---------------------------------------------------------------------------- the writer lock
def test_one_writer_at_a_time_and_stale_locks_are_taken_over(tmp_path, capsys):
    path = tmp_path / "s.h5"
    Store.create(path).close()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        import sys, time
        from distill.store import Store
        s = Store({str(path)!r}, "a")
        print("locked", flush=True)
        sys.stdin.readline()
    """),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(StoreError, match=f"being written by pid {holder.pid} on host"):
        Store(path, "a")
    assert holder.poll() is None  # refused while the holder still runs: nobody waited for it
    r = Store(path)  # readers take no lock
    assert r.names() == [] and rtt(["info", str(path)]) == 0
    holder.kill()
    holder.wait()
    with Store(path, "a") as w:  # the dead writer's lock is stale: taken over
        assert f"pid {holder.pid}" in fsio.acquire(path).previous
        w.save_module("teacher", distill.build_model("mlp", (1, 8, 8), head=None))
    assert Store(path).names() == ["teacher"]
