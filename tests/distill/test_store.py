import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import xarray as xr

import distill
from distill.store import Store, StoreError, as_module, load_into, student_name
from landscape.cli import main as rtt

ROOT = Path(__file__).resolve().parents[2]


def small(arch: str) -> torch.nn.Module:
    shape = (3, 32, 32)
    return distill.build_model(arch, shape, head="dino", out_dim=64, hidden_dim=32, bottleneck_dim=16)


@pytest.mark.parametrize("arch", distill.list_models())
def test_every_model_round_trips_bit_for_bit(tmp_path, arch):
    torch.manual_seed(0)
    model = small(arch)
    with torch.no_grad():  # make buffers non-trivial too
        for name, b in model.named_buffers():
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

    data = good.path.read_bytes()
    trunc = tmp_path / "trunc.h5"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(StoreError, match="trunc.h5"):
        Store(trunc).load_module("teacher")
    _one_line_error(["info", str(trunc)], capsys, "trunc.h5")

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
    r = subprocess.run([sys.executable, "-m", "landscape.cli", "info", str(bad)], capture_output=True, text=True,
                       cwd=ROOT)
    assert r.returncode == 1 and "Traceback" not in r.stderr and "bad.h5" in r.stderr


def test_results_round_trip_identical(tmp_path):
    store = Store.create(tmp_path / "s.h5")
    ds = xr.Dataset({"accuracy": (("epoch", "model", "probe"), np.random.rand(3, 2, 2),
                                  {"long_name": "probe accuracy", "units": "fraction"})},
                    coords={"epoch": [0, 5, 10], "model": ["teacher", "student"], "probe": ["knn", "linear"]},
                    attrs={"config": "{}", "n": 3})
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


WRITER = textwrap.dedent("""
    import sys, torch, distill
    from distill.store import Store
    path, n = sys.argv[1], int(sys.argv[2])
    m = distill.build_model("mlp", (1, 32, 32), head=None, widths=[512, 512])
    s = Store(path, "a")
    names = s.names("ck/")
    start = int(names[-1].split("/")[1]) + 1 if names else 0
    for i in range(start, start + n):
        with torch.no_grad():
            for p in m.parameters():
                p.fill_(i)
        s.save_module(f"ck/{i:04d}", m, {"i": i})
        print(i, flush=True)
""")


def _check_all(path: Path) -> int:
    s = Store(path)
    names = s.names("ck/")
    for name in names:
        state, attrs = s.load_state(name)
        i = int(attrs["i"])
        assert name == f"ck/{i:04d}"
        assert all(torch.all(t == i) for t in state.values()), name
    return len(names)


@pytest.mark.xfail(strict=False, reason="known limitation: HDF5 rewrites group link tables in place, so a kill "
                   "inside a metadata flush can, rarely (about 1 in 100-150 kills measured), damage a neighbouring "
                   "link; see the store section of the README")
def test_kill_at_any_instant_loses_only_the_checkpoint_in_flight(tmp_path):
    path = tmp_path / "k.h5"
    Store.create(path)
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    rng = np.random.default_rng(0)
    done = 0
    for trial in range(6):
        p = subprocess.Popen([sys.executable, str(script), str(path), "1000"], stdout=subprocess.PIPE, text=True,
                             cwd=ROOT)
        p.stdout.readline()  # wait until at least one more is written
        time.sleep(float(rng.uniform(0.0, 0.6)))
        p.send_signal(signal.SIGKILL)
        p.wait()
        n = _check_all(path)  # every listed checkpoint holds exactly what was written
        assert n > done  # only the checkpoint in flight may be lost
        done = n
    # the store stays appendable after the kills
    r = subprocess.run([sys.executable, str(script), str(path), "2"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert _check_all(path) == done + 2


READER = textwrap.dedent("""
    import sys, time, torch
    from distill.store import Store
    path, stop = sys.argv[1], float(sys.argv[2])
    reads = 0
    while time.time() < stop:
        s = Store(path)
        for name in s.names("ck/"):
            state, attrs = s.load_state(name)
            assert all(torch.all(t == int(attrs["i"])) for t in state.values()), name
            reads += 1
    print(reads)
""")


def test_two_readers_while_a_writer_appends(tmp_path):
    path = tmp_path / "c.h5"
    Store.create(path)
    (tmp_path / "writer.py").write_text(WRITER)
    (tmp_path / "reader.py").write_text(READER)
    stop = time.time() + 6
    w = subprocess.Popen([sys.executable, str(tmp_path / "writer.py"), str(path), "25"], cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    readers = [subprocess.Popen([sys.executable, str(tmp_path / "reader.py"), str(path), str(stop)], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    assert w.wait() == 0, w.stderr.read()
    for r in readers:
        out, err = r.communicate()
        assert r.returncode == 0, err
        assert int(out) > 0
    assert _check_all(path) == 25
