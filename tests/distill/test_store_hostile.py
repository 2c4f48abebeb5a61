"""Hostile stores and files: symbolic links, HDF5 links and external storage, odd names, damaged
metadata, absurd sizes, killed writers. Each case: a one-line error naming the problem, a non-zero
exit without a traceback, and every file inside and outside the store byte for byte as it was."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest

from distill.store import Store, StoreError
from distill.store.objects import checksum
from landscape.cli import main as rtt
from tests.distill.store_helpers import ROOT, checksums, report, write_mnist
from tests.distill.test_store_bad_input import CASES as EXISTING
from tests.distill.test_store_bad_input import TINY, distill_argv, expect_cli, one_line

RAN: list[str] = []
KEY = "backbone.layers.1.weight"


def argv_distill(env, out, *extra) -> list[str]:
    return distill_argv(env, out, *extra, epochs=2)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    e = SimpleNamespace(dir=d, mnist=write_mnist(d / "mnist"))
    e.good = d / "good.h5"
    assert rtt(argv_distill(e, e.good, "--save-every", "1")) == 0
    e.packed = d / "good-packed.h5"
    assert rtt(["pack", str(e.good), str(e.packed)]) == 0
    return e


def copy_store(env, tmp: Path) -> tuple[Path, Path]:
    """A copy of the good store under ``tmp/s.h5`` and a folder of outside files, ``tmp/victim``."""
    s = tmp / "s.h5"
    shutil.copytree(env.good, s)
    victim = tmp / "victim"
    victim.mkdir()
    (victim / "victim.txt").write_text("precious\n")
    with h5py.File(victim / "secret.h5", "w") as f:
        f["data"] = np.arange(64 * 64, dtype=np.float32).reshape(64, 64) + 0.5
    (victim / "raw.bin").write_bytes(np.full(4096, 7, np.float32).tobytes())
    return s, victim


def teacher_file(s: Path) -> Path:
    return s / "objects" / "modules" / "teacher.h5"


def _set_manifest(f, key, arr) -> None:
    m = json.loads(f.attrs["tensors"])
    m[key]["sum64"] = checksum(np.asarray(arr))
    f.attrs["tensors"] = json.dumps(m)


def _external_link(s, victim):
    with h5py.File(teacher_file(s), "a") as f:
        shape = f[KEY].shape
        del f[KEY]
        with h5py.File(victim / "secret.h5", "a") as g:  # same shape as the key, so only the link betrays it
            del g["data"]
            g["data"] = np.full(shape, 0.25, np.float32)
        f[KEY] = h5py.ExternalLink(str(victim / "secret.h5"), "/data")
        _set_manifest(f, KEY, np.full(shape, 0.25, np.float32))


def _external_raw(s, victim):
    with h5py.File(teacher_file(s), "a") as f:
        shape = f[KEY].shape
        n = int(np.prod(shape)) * 4
        (victim / "raw.bin").write_bytes(np.full(shape, 7, np.float32).tobytes())
        del f[KEY]
        f.create_dataset(KEY, shape=shape, dtype="f4", external=[(str(victim / "raw.bin"), 0, n)])
        _set_manifest(f, KEY, np.full(shape, 7, np.float32))


def _virtual(s, victim):
    with h5py.File(teacher_file(s), "a") as f:
        shape = f[KEY].shape
        with h5py.File(victim / "secret.h5", "a") as g:
            del g["data"]
            g["data"] = np.full(shape, 3, np.float32)
        layout = h5py.VirtualLayout(shape=shape, dtype="f4")
        layout[...] = h5py.VirtualSource(str(victim / "secret.h5"), "data", shape=shape)
        del f[KEY]
        f.create_virtual_dataset(KEY, layout)
        _set_manifest(f, KEY, np.full(shape, 3, np.float32))


def _soft_link(s, victim):
    with h5py.File(teacher_file(s), "a") as f:
        f["elsewhere"] = f[KEY][()]
        del f[KEY]
        f[KEY] = h5py.SoftLink("/elsewhere")


def _symlinked_object(s, victim):
    obj = next((s / "commits").glob("*/modules/student/00002.h5"))
    shutil.copy(obj, victim / "student.h5")
    obj.unlink()
    obj.symlink_to(victim / "student.h5")


def _symlinked_commit(s, victim):
    c = s / "commits" / "000001"
    shutil.copytree(c, victim / "000001")
    shutil.rmtree(c)
    c.symlink_to(victim / "000001", target_is_directory=True)


def _symlinked_objects_folder(s, victim):
    shutil.copytree(s / "objects" / "modules", victim / "modules")
    shutil.rmtree(s / "objects" / "modules")
    (s / "objects" / "modules").symlink_to(victim / "modules", target_is_directory=True)


def _symlinked_lock(s, victim):
    (s / "lock").unlink(missing_ok=True)
    (s / "lock").symlink_to(victim / "victim.txt")


def _state_meta(**changes):
    def edit(s, victim):
        f_path = next((s / "commits").glob("*/state/train.h5"), None)
        newest = sorted((s / "commits").glob("*/state/train.h5"))[-1] if f_path else None
        with h5py.File(newest, "a") as f:
            meta = json.loads(f.attrs["meta"])
            for k, v in changes.items():
                if k == "lr":
                    meta["param_groups"][0]["lr"] = v
                else:
                    meta[k] = v
            f.attrs["meta"] = json.dumps(meta)

    return edit


def _config_not_json(s, victim):
    with h5py.File(s / "store.h5", "a") as f:
        f.attrs["config"] = "{not json"


def _odd_student_name(s, victim):
    obj = next((s / "commits").glob("*/modules/student/00002.h5"))
    shutil.copy(obj, obj.with_name("\u00b9.h5"))


def _result_external_link(s, victim):
    metrics = sorted((s / "commits").glob("*/results/metrics.h5"))[-1]
    with h5py.File(victim / "secret.h5", "a") as g:
        g["epoch_like"] = np.arange(3.0)
    with h5py.File(metrics, "a") as f:
        f["leak"] = h5py.ExternalLink(str(victim / "secret.h5"), "/epoch_like")


def _orphan_temporary(s, victim):
    (s / "objects" / "modules" / ".teacher.h5.0123456789ab.tmp").write_bytes(b"half")


# name -> (edit(store, victim), [commands], needles of the error); commands: "verify", "student",
# "teacher", "distill" (resume), "info", "api-write"
HOSTILE = {
    "symlinked_lock": (_symlinked_lock, ["distill", "api-write", "verify"], ["lock", "symbolic link"]),
    "symlinked_commit_folder": (
        _symlinked_commit,
        ["distill", "api-write", "verify", "info", "student"],
        ["000001", "symbolic link"],
    ),
    "symlinked_object": (_symlinked_object, ["distill", "verify", "student", "info"], ["00002.h5", "symbolic link"]),
    "symlinked_objects_folder": (
        _symlinked_objects_folder,
        ["distill", "verify", "teacher"],
        ["objects/modules", "symbolic link"],
    ),
    "hdf5_external_link": (_external_link, ["teacher", "verify"], ["external link", "secret.h5"]),
    "hdf5_external_raw_storage": (_external_raw, ["teacher", "verify"], ["external file", "raw.bin"]),
    "hdf5_virtual_dataset": (_virtual, ["teacher", "verify"], ["virtual dataset"]),
    "hdf5_soft_link": (_soft_link, ["teacher", "verify"], ["soft link", "/elsewhere"]),
    "result_external_link": (_result_external_link, ["info", "verify", "metrics"], ["external link", "leak"]),
    "state_epoch_text": (_state_meta(epoch="two"), ["verify", "distill"], ["epoch 'two'"]),
    "state_epoch_huge": (_state_meta(epoch=10**12), ["verify", "distill"], ["epoch 1000000000000"]),
    "state_lr_nan_text": (_state_meta(lr="nan"), ["verify", "distill"], ["lr='nan'"]),
    "config_not_json": (_config_not_json, ["info", "distill", "verify"], ["s.h5", "config attribute is not JSON"]),
    "odd_student_name": (_odd_student_name, ["verify"], ["\u00b9.h5", "unexpected file"]),
    "orphan_temporary": (_orphan_temporary, ["verify"], [".teacher.h5.0123456789ab.tmp", "leftover temporary"]),
}


def _run_one(env, s: Path, how: str, capsys) -> str:
    """Run one command against the hostile store ``s``; its one-line error."""
    if how in ("student", "teacher", "metrics", "api-write"):
        with pytest.raises(StoreError) as exc:
            if how == "student":
                Store(s).student(2)
            elif how == "teacher":
                Store(s).teacher()
            elif how == "metrics":
                Store(s).metrics  # noqa: B018
            else:
                Store(s, "a").close()
        return one_line(exc)
    if how == "verify":
        code = rtt(["verify", str(s)])
        out = capsys.readouterr()
        assert code == 1 and "Traceback" not in out.err + out.out, out
        assert len(out.err.strip().splitlines()) == 1 and "problem(s)" in out.err, out.err
        return "\n".join(x for x in out.out.splitlines() if x.startswith("damaged:"))
    argv = {"distill": argv_distill(env, s), "info": ["info", s]}[how]
    return expect_cli(argv, capsys)


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_store(case, env, tmp_path, capsys):
    edit, commands, needles = HOSTILE[case]
    s, victim = copy_store(env, tmp_path)
    edit(s, victim)
    before = checksums(tmp_path)
    for how in commands:
        msg = _run_one(env, s, how, capsys)
        for n in needles:
            assert n in msg, (how, msg)
        assert checksums(tmp_path) == before, how
    RAN.append(f"hostile:{case}")


# ---------------------------------------------------------------------------- packed files, unpack, plot
def _packed_external_link(env, tmp: Path) -> Path:
    p = tmp / "p.h5"
    shutil.copy(env.packed, p)
    with h5py.File(tmp / "victim" / "secret.h5", "a") as g, h5py.File(p, "a") as f:
        g["teacher_copy"] = f[f"modules/teacher/{KEY}"][()]
        del f[f"modules/teacher/{KEY}"]
        f[f"modules/teacher/{KEY}"] = h5py.ExternalLink(str(tmp / "victim" / "secret.h5"), "/teacher_copy")
    return p


def _packed_group_link(env, tmp: Path) -> Path:
    p = tmp / "p.h5"
    shutil.copy(env.packed, p)
    with h5py.File(p, "a") as f:
        f["stash"] = np.zeros(3)
        f["modules/intruder"] = h5py.ExternalLink(str(tmp / "victim" / "secret.h5"), "/")
    return p


def _nc_external_link(env, tmp: Path) -> Path:
    import xarray as xr

    p = tmp / "r.nc"
    xr.Dataset({"error": (("alpha",), np.linspace(0, 1, 5))}, coords={"alpha": np.linspace(0, 1, 5)}).to_netcdf(
        p, engine="h5netcdf"
    )
    with h5py.File(p, "a") as f:
        f["leak"] = h5py.ExternalLink(str(tmp / "victim" / "secret.h5"), "/data")
    return p


def _foreign_hdf5(env, tmp: Path) -> Path:
    p = tmp / "foreign.h5"
    with h5py.File(p, "w") as f:
        f["x"] = np.arange(10.0)
    return p


FILES = {
    "packed_dataset_external_link": (
        _packed_external_link,
        [["verify", "{f}"], ["unpack", "{f}", "{tmp}/new.h5"]],
        ["external link", "secret.h5"],
    ),
    "packed_group_external_link": (
        _packed_group_link,
        [["verify", "{f}"], ["info", "{f}"], ["unpack", "{f}", "{tmp}/new.h5"]],
        ["external link", "intruder"],
    ),
    "plot_nc_external_link": (_nc_external_link, [["plot", "{f}", "--out", "{tmp}/o.png"]], ["external link", "leak"]),
    "plot_foreign_hdf5": (_foreign_hdf5, [["plot", "{f}", "--out", "{tmp}/o.png"]], ["not a netCDF result"]),
}


@pytest.mark.parametrize("case", list(FILES))
def test_hostile_file(case, env, tmp_path, capsys):
    make, commands, needles = FILES[case]
    _, victim = copy_store(env, tmp_path)
    f = make(env, tmp_path)
    before = checksums(tmp_path)
    for cmd in commands:
        argv = [a.replace("{f}", str(f)).replace("{tmp}", str(tmp_path)) for a in cmd]
        if argv[0] == "unpack":
            r = subprocess.run(
                [sys.executable, "-m", "distill.store.unpack", *argv[1:]], capture_output=True, text=True, cwd=ROOT
            )
            err = r.stderr.strip()
            assert r.returncode != 0 and len(err.splitlines()) == 1 and "Traceback" not in err, err
            msg = err
        elif argv[0] == "verify":
            code = rtt(argv)
            out = capsys.readouterr()
            assert code == 1 and len(out.err.strip().splitlines()) == 1, out
            msg = out.out
        else:
            msg = expect_cli(argv, capsys)
        for n in needles:
            assert n in msg, (argv, msg)
        assert checksums(tmp_path) == before, argv
    assert not (tmp_path / "new.h5").exists() and not (tmp_path / "o.png").exists()
    RAN.append(f"file:{case}")


# ---------------------------------------------------------------------------- absurd sizes
SIZES = {
    "out_dim_1e12": (["--out-dim", "1000000000000"], ["out_dim=1000000000000", "too large"]),
    "width_1e12": (["--arch-options", '{"widths": [1000000000000]}'], ["arch_options.widths[0]", "too large"]),
    "width_key_1e12": (["--arch-options", '{"width": 1000000000000}'], ["arch_options.width", "too large"]),
    "model_larger_than_memory": (
        ["--out-dim", "16000000", "--bottleneck-dim", "16000000"],
        ["parameters", "more than this machine's", "choose smaller sizes"],
    ),
}


@pytest.mark.parametrize("case", list(SIZES))
def test_absurd_sizes_refused_before_allocation(case, env, tmp_path, capsys):
    extra, needles = SIZES[case]
    before = checksums(env.good, tmp_path)
    expect_cli(argv_distill(env, tmp_path / "new.h5", *extra), capsys, *needles)
    assert checksums(env.good, tmp_path) == before and not (tmp_path / "new.h5").exists()
    RAN.append(f"size:{case}")


# ---------------------------------------------------------------------------- victims outside the store
def test_symlinks_leave_a_victim_outside_the_store_identical(env, tmp_path):
    """A symlinked lock, commit folder and object: opening for writing, resuming and every reader
    leave the file they point at (and everything else outside the store) byte for byte as it was."""
    s, victim = copy_store(env, tmp_path)
    _symlinked_lock(s, victim)
    shutil.copytree(s / "commits" / "000001", victim / "000001")
    shutil.rmtree(s / "commits" / "000001")
    (s / "commits" / "000001").symlink_to(victim / "000001", target_is_directory=True)
    _symlinked_object(s, victim)
    outside = checksums(victim)
    assert (victim / "victim.txt").read_text() == "precious\n"
    for attempt in (
        lambda: Store(s, "a"),
        lambda: Store(s).student(2),
        lambda: Store(s).rollback(0),
    ):
        with pytest.raises(StoreError):
            attempt()
    assert rtt(["distill", "--out", str(s), "--dataset", "mnist", "--data-root", str(env.mnist), *TINY]) == 1
    assert rtt(["verify", str(s)]) == 1
    assert checksums(victim) == outside and (victim / "victim.txt").read_text() == "precious\n"
    assert sorted(p.name for p in (victim / "000001").rglob("*.h5")) == sorted(
        p.name for p in (env.good / "commits" / "000001").rglob("*.h5")
    )
    RAN.append("victim:lock_commit_object")


# ---------------------------------------------------------------------------- killed writers
def test_killed_pack_and_result_writes_leave_no_temporary(env, tmp_path):
    """``rtt pack``, a store's result write and a result .nc write killed after writing their
    temporary; the next writer of the same path (or store) removes it, and verify reports it meanwhile."""
    s, _ = copy_store(env, tmp_path)
    out = tmp_path / "packed.h5"
    killed = {**os.environ, "RTT_STORE_CRASH_AFTER": "1", "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "landscape.cli", "pack", str(s), str(out)], env=killed, cwd=ROOT)
    assert r.returncode == -9
    left = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(left) == 1 and left[0].startswith(".packed.h5.") and not out.exists()

    script = (
        "import sys, numpy as np, xarray as xr\nfrom distill.store import Store, fsio\n"
        "from landscape.cli.common import write_nc as _write_nc\n"
        "ds = xr.Dataset({'error': (('alpha',), np.zeros(3))})\n"
        "if sys.argv[1] == 'store':\n    st = Store(sys.argv[2], 'a')\n    fsio.crash_after(1)\n"
        "    st.write_result('extra', ds)\nelse:\n    fsio.crash_after(1)\n    _write_nc(ds, sys.argv[2])\n"
    )
    nc = tmp_path / "res" / "lmc.nc"
    for kind, target in (("store", s), ("nc", nc)):
        r = subprocess.run(
            [sys.executable, "-c", script, kind, str(target)], env={**os.environ, "PYTHONPATH": str(ROOT)}
        )
        assert r.returncode == -9, kind
    store_tmp = list((s / "objects" / "results").glob(".extra.h5.*.tmp"))
    nc_tmp = list(nc.parent.glob(".lmc.nc.*.tmp"))
    assert len(store_tmp) == 1 and len(nc_tmp) == 1 and not nc.exists()
    problems = __import__("distill.store.pack", fromlist=["verify"]).verify(s)[1]
    assert any("leftover temporary file" in p and store_tmp[0].name in p for p in problems), problems

    assert rtt(["pack", str(s), str(out)]) == 0  # the next writer of each path
    Store(s, "a").close()
    r = subprocess.run(
        [sys.executable, "-c", script.replace("fsio.crash_after(1)", "pass"), "nc", str(nc)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert r.returncode == 0
    everything = [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    assert everything == [] and out.exists() and nc.exists()
    RAN.append("kill:pack_result_nc")


# ---------------------------------------------------------------------------- the early lock, rollback, modes
def test_second_writer_refused_before_loading_data(env, tmp_path):
    """The lock comes first: with the store busy, a second ``rtt distill`` whose data folder does
    not exist is refused as busy (had it loaded data first, it would say the data is missing)."""
    s, _ = copy_store(env, tmp_path)
    holder = Store(s, "a")
    try:
        r = subprocess.run(
            [sys.executable, "-m", "landscape.cli", "distill", "--out", str(s), "--dataset", "mnist", "--data-root",
             str(tmp_path / "no-data"), *TINY],
            capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
    finally:
        holder.close()
    err = r.stderr.strip()
    assert r.returncode == 1 and len(err.splitlines()) == 1 and "is being written by" in err, err
    assert "torch" not in err and "not found" not in err
    RAN.append("busy:second_writer_before_data")


def test_rollback_keeps_a_state_to_resume_from(env, tmp_path, capsys):
    s, _ = copy_store(env, tmp_path)  # students at 0, 1, 2
    store = Store(s, "a")
    store.rollback(1)
    st = store.load_state_group("train")
    store.close()
    assert st is not None and st[1]["epoch"] == 1
    assert rtt(argv_distill(env, s)) == 0
    capsys.readouterr()
    assert Store(s).epochs == [0, 1, 2] and Store(s).commits() == [0, 1, 2]


def test_modes_are_explicit_whatever_the_umask(env, tmp_path):
    old = os.umask(0)
    try:
        s = Store.create(tmp_path / "deep" / "s.h5")
        import distill

        m = distill.build_model("mlp", (1, 8, 8), head=None, widths=[8])
        s.save_module("teacher", m)
        with s.commit(0):
            s.save_module("student/00000", m)
        s.close()
    finally:
        os.umask(old)
    for p in [tmp_path / "deep", *(tmp_path / "deep").rglob("*")]:
        mode = p.stat().st_mode & 0o777
        assert mode == (0o755 if p.is_dir() else 0o644), (p, oct(mode))


def test_zz_count_the_cases(capsys):
    existing = [c for c in EXISTING]
    report(
        capsys,
        f"hostile suite: {len(RAN)} cases ran here, beside the {len(existing)} of test_store_bad_input.py: "
        f"{len(RAN) + len(existing)} in all, each a one-line error, non-zero exit, files inside and outside unchanged",
    )
    assert len(RAN) >= len(HOSTILE) + len(FILES) + len(SIZES) + 3
