"""Bad input to the store and the CLI: each case gives a one-line error naming the problem, a
non-zero exit, and leaves every existing file byte for byte as it was."""

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch

import distill
from distill.store import Store, StoreError, student_name
from distill.store.objects import checksum
from landscape.cli import main as rtt
from tests.distill.store_helpers import ROOT, checksums, report, write_mnist
from tests.distill.test_store import _metrics, write_format1_store

TINY = [
    "--arch",
    "mlp",
    "--arch-options",
    '{"widths": [16]}',
    "--out-dim",
    "16",
    "--hidden-dim",
    "16",
    "--bottleneck-dim",
    "8",
    "--batch-size",
    "32",
    "--probes",
    "none",
    "--device",
    "cpu",
]
CASES: list[str] = []


def distill_argv(env, out, *extra, epochs: int = 1) -> list[str]:
    return [
        "distill",
        "--out",
        str(out),
        "--dataset",
        "mnist",
        "--data-root",
        str(env.mnist),
        "--epochs",
        str(epochs),
        *TINY,
        *extra,
    ]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad-input")
    e = SimpleNamespace(dir=d, mnist=write_mnist(d / "mnist"))
    e.good = d / "good.h5"
    assert rtt(distill_argv(e, e.good)) == 0
    e.packed = d / "good-packed.h5"
    assert rtt(["pack", str(e.good), str(e.packed)]) == 0
    e.old = d / "old.h5"
    m = distill.build_model("mlp", (1, 8, 8), head=None, widths=[8])
    write_format1_store(
        e.old, {"teacher": (m, {"epoch": 0}), student_name(0): (m, {"epoch": 0})}, {"metrics": _metrics()}
    )
    (d / "notes.txt").write_text("not a store")
    (d / "folder").mkdir()
    e.mounts = []
    yield e
    for mnt in reversed(e.mounts):
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def mount_tmpfs(env, name: str, size: str, ro: bool = False, fill_from: Path | None = None) -> Path:
    mnt = env.dir / name
    if mnt.exists():
        return mnt
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if r.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here ({r.stderr.strip() or 'mount failed'}): needs root in a "
            "container that allows mounts"
        )
    env.mounts.append(mnt)
    if fill_from is not None:
        shutil.copytree(fill_from, mnt / fill_from.name)
    if ro:
        r = subprocess.run(["mount", "-o", "remount,ro", str(mnt)], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot remount a tmpfs read-only here ({r.stderr.strip()})")
    return mnt


def expect_cli(argv, capsys, *needles) -> str:
    code = rtt([str(a) for a in argv])
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code != 0, captured.out
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, err
    return err


def one_line(exc: pytest.ExceptionInfo, *needles) -> str:
    msg = str(exc.value)
    assert len(msg.splitlines()) == 1, msg
    for n in needles:
        assert n in msg, msg
    return msg


# ---------------------------------------------------------------------------- crafted module files
def crafted_store(tmp_path: Path, edit, arch: str = "mlp", **opts) -> Store:
    """A store whose teacher file was edited by ``edit(h5py.File)`` (as a damaged or crafted file would be)."""
    s = Store.create(tmp_path / "crafted.h5")
    m = distill.build_model(arch, (1, 8, 8), head=None, **(opts or {"widths": [8]}))
    s.save_module("teacher", m)
    s.close()
    with h5py.File(s.path / "objects" / "modules" / "teacher.h5", "a") as f:
        edit(f)
    return Store(s.path)


def _manifest(f, key, **changes):
    """Edit the tensor manifest entry of ``key`` as a crafter would (None removes the entry)."""
    m = json.loads(f.attrs["tensors"])
    if changes.get("remove"):
        m.pop(key)
    else:
        m[key] = {**m.get(key, {"dtype": "float32", "stored": ""}), **changes}
    f.attrs["tensors"] = json.dumps(m)


def _replace(f, key, data, dtype_attr=None):
    """Put ``data`` under ``key`` with a consistent checksum (a crafted file, not a damaged one)."""
    del f[key]
    f.create_dataset(key, data=data)
    _manifest(
        f,
        key,
        sum64=checksum(np.asarray(data)) if np.asarray(data).dtype.kind in "biuf" else 0,
        **({"dtype": dtype_attr} if dtype_attr else {}),
    )


def _new_dataset(f, key, **kw):
    f.create_dataset(key, **kw)
    _manifest(f, key, dtype="float32", sum64=None)


def _set_spec(f, **changes):
    spec = json.loads(f.attrs["spec"])
    spec.update(changes)
    f.attrs["spec"] = json.dumps(spec)


KEY = "backbone.layers.1.weight"
STRICT = {
    "float64_into_float32": (
        lambda f: _replace(f, KEY, f[KEY][()].astype(np.float64), "float64"),
        ["stored as float64, the model expects float32", "teacher", KEY],
    ),
    "int32_into_int64": (
        lambda f: _replace(f, "backbone.features.0.1.num_batches_tracked", np.int32(0), "int32"),
        ["stored as int32, the model expects int64", "num_batches_tracked"],
        "convnet",
        {"width": 4, "depth": 1, "bn": True},
    ),
    "nan_weights": (
        lambda f: _replace(f, KEY, np.full(f[KEY].shape, np.nan, np.float32)),
        ["NaN or infinite", KEY, "allow_nonfinite=True"],
    ),
    "inf_weights": (lambda f: _replace(f, KEY, np.full(f[KEY].shape, np.inf, np.float32)), ["NaN or infinite"]),
    "string_dataset": (lambda f: _replace(f, KEY, np.array([b"abc", b"de"])), ["non-numeric", KEY]),
    "compound_dataset": (
        lambda f: _replace(f, KEY, np.zeros(3, dtype=[("a", "f4"), ("b", "i4")])),
        ["non-numeric", KEY],
    ),
    "group_not_dataset": (lambda f: (f.__delitem__(KEY), f.create_group(KEY)), ["not a tensor dataset", KEY]),
    "dataset_not_in_manifest": (lambda f: _manifest(f, KEY, remove=True), ["not in the file's tensor manifest", KEY]),
    "manifest_damaged": (lambda f: f.attrs.__setitem__("tensors", "{oops"), ["unreadable tensor manifest"]),
    "huge_spec_field": (lambda f: _set_spec(f, widths=[2**40]), ["out of bounds", "1099511627776"]),
    "spec_larger_than_file": (lambda f: _set_spec(f, widths=[1 << 20]), ["the model expects (1048576, 64)", KEY]),
    "spec_not_json": (lambda f: f.attrs.__setitem__("spec", "{not json"), ["unusable architecture spec"]),
    "claims_more_bytes": (
        lambda f: (f.__delitem__(KEY), _new_dataset(f, KEY, shape=(10**8,), dtype="f4")),
        ["claims shape (100000000,)", "only 0 bytes are stored"],
    ),
    "dtype_attr_lies": (
        lambda f: _replace(f, KEY, f[KEY][()].astype(np.int16), "float32"),
        ["records dtype 'float32'", "holds int16"],
    ),
    "unknown_dtype_attr": (lambda f: _manifest(f, KEY, dtype="complex64"), ["records dtype 'complex64'"]),
    "bit_flip": (lambda f: f[KEY].__setitem__((0, 0), f[KEY][0, 0] + 1.0), ["fails its checksum", KEY]),
    "wrong_shape": (lambda f: _replace(f, KEY, np.zeros((3, 3), np.float32)), ["has shape (3, 3)", KEY]),
    "missing_key": (lambda f: (f.__delitem__(KEY), _manifest(f, KEY, remove=True)), ["missing key", KEY]),
    "extra_key": (
        lambda f: _replace(
            f.create_dataset("extra.weight", data=np.zeros(2, np.float32)).file, "extra.weight", np.zeros(2, np.float32)
        ),
        ["unexpected key 'extra.weight'"],
    ),
}
CASES += [f"strict:{k}" for k in STRICT]


@pytest.mark.parametrize("case", list(STRICT))
def test_strict_loading(case, tmp_path, capsys):
    edit, needles, *arch = STRICT[case]
    kw = {"arch": arch[0], **arch[1]} if arch else {}
    s = crafted_store(tmp_path, edit, **kw)
    before = checksums(tmp_path)
    with pytest.raises(StoreError) as exc:
        s.teacher()
    one_line(exc, *needles)
    code = rtt(["verify", str(s.path)])
    out = capsys.readouterr()
    assert code == 1 and needles[0] in out.out and len([x for x in out.out.splitlines() if "damaged" in x]) == 1
    if case == "nan_weights":  # allowed on request
        assert torch.isnan(s.load_module("teacher", allow_nonfinite=True).state_dict()[KEY]).all()
    assert checksums(tmp_path) == before


# ---------------------------------------------------------------------------- CLI on bad paths and files
def _truncated(env, tmp):
    p = tmp / "trunc.h5"
    data = env.packed.read_bytes()
    p.write_bytes(data[: len(data) // 3])
    return p


def _newer(env, tmp):
    p = tmp / "newer.h5"
    shutil.copytree(env.good, p)
    with h5py.File(p / "store.h5", "a") as f:
        f.attrs["format_version"] = 99
    return p


def _bad_head(env, tmp):
    p = tmp / "badhead.h5"
    shutil.copytree(env.good, p)
    (p / "store.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)
    return p


def _foreign(env, tmp):
    p = tmp / "foreign.h5"
    with h5py.File(p, "w") as f:
        f["x"] = np.zeros(3)
    return p


def _damaged_object(env, tmp, how):
    p = tmp / f"{how}.h5"
    shutil.copytree(env.good, p)
    obj = next((p / "commits").glob("*/modules/student/*.h5"))
    data = bytearray(obj.read_bytes())
    if how == "truncated":
        obj.write_bytes(bytes(data[: len(data) // 2]))
    elif how == "stray":
        (p / "objects" / "notes.txt").write_text("stray")
    else:  # flip bytes inside a weight matrix's payload
        with h5py.File(obj, "r") as f:
            d = next(f[k] for k in f if f[k].size > 16)
            at = d.id.get_offset() + 8
        data[at : at + 8] = bytes(b ^ 0xFF for b in data[at : at + 8])
        obj.write_bytes(bytes(data))
    return p


CLI = {
    "info_absent": (lambda e, t: ["info", e.dir / "absent.h5"], ["no store at"]),
    "info_folder_not_store": (lambda e, t: ["info", e.dir / "folder"], ["is a folder but not a random-teachers store"]),
    "info_text_file": (lambda e, t: ["info", e.dir / "notes.txt"], ["notes.txt", "not an HDF5 file"]),
    "info_foreign_hdf5": (lambda e, t: ["info", _foreign(e, t)], ["not a random-teachers store"]),
    "info_truncated_file": (lambda e, t: ["info", _truncated(e, t)], ["trunc.h5", "truncated or corrupt"]),
    "info_newer_format": (lambda e, t: ["info", _newer(e, t)], ["store format 99", "upgrade"]),
    "info_damaged_head": (lambda e, t: ["info", _bad_head(e, t)], ["store.h5 is unreadable"]),
    "info_parent_is_file": (lambda e, t: ["info", e.dir / "notes.txt" / "s.h5"], ["notes.txt is a file"]),
    "verify_truncated_object": (lambda e, t: ["verify", _damaged_object(e, t, "truncated")], ["1 problem"]),
    "verify_flipped_bytes": (lambda e, t: ["verify", _damaged_object(e, t, "flip")], ["1 problem"]),
    "verify_stray_file": (lambda e, t: ["verify", _damaged_object(e, t, "stray")], ["1 problem"]),
    "verify_absent": (lambda e, t: ["verify", e.dir / "absent.h5"], ["no store at"]),
    "pack_onto_existing": (lambda e, t: ["pack", e.good, e.packed], ["already exists"]),
    "pack_parent_is_file": (lambda e, t: ["pack", e.good, e.dir / "notes.txt" / "p.h5"], ["notes.txt is a file"]),
    "pack_absent_store": (lambda e, t: ["pack", e.dir / "absent.h5", t / "p.h5"], ["no store at"]),
    "distill_unknown_arch": (lambda e, t: distill_argv(e, t / "new.h5", "--arch", "resnet999"), ["resnet999"]),
    "distill_bad_arch_options": (
        lambda e, t: distill_argv(e, t / "new.h5", "--arch-options", '{"nonsense": 1}'),
        ["nonsense"],
    ),
    "distill_lr_nan": (lambda e, t: distill_argv(e, t / "new.h5", "--lr", "nan"), ["lr=nan", "finite"]),
    "distill_probes_unknown": (
        lambda e, t: distill_argv(e, t / "new.h5", "--probes", "knn,bogus"),
        ["unknown probe", "bogus"],
    ),
    "distill_probes_empty": (
        lambda e, t: distill_argv(e, t / "new.h5", "--probes", ""),
        ["--probes", "lists nothing", "'none'"],
    ),
    "distill_probes_only_commas": (lambda e, t: distill_argv(e, t / "new.h5", "--probes", " , "), ["'none'"]),
    "distill_subset_below_batch": (
        lambda e, t: distill_argv(e, t / "new.h5", "--subset", "20", "--drop-last"),
        ["fewer than batch_size=32 with drop_last"],
    ),
    "distill_epochs_zero": (lambda e, t: distill_argv(e, t / "new.h5", "--epochs", "0"), ["epochs=0"]),
    "distill_other_config": (lambda e, t: distill_argv(e, e.good, "--lr", "0.5"), ["holds a run with lr="]),
    "distill_no_resume": (lambda e, t: distill_argv(e, e.good, "--no-resume"), ["already exists"]),
    "distill_into_format1": (lambda e, t: distill_argv(e, e.old), ["single-file store", "read-only"]),
    "distill_into_packed": (lambda e, t: distill_argv(e, e.packed), ["single-file store", "read-only"]),
    "distill_into_folder": (lambda e, t: distill_argv(e, e.dir / "folder"), ["is a folder but not"]),
    "distill_into_text_file": (lambda e, t: distill_argv(e, e.dir / "notes.txt"), ["not an HDF5 file"]),
    "distill_parent_is_file": (lambda e, t: distill_argv(e, e.dir / "notes.txt" / "x.h5"), ["notes.txt is a file"]),
    "distill_missing_data": (
        lambda e, t: ["distill", "--out", t / "new.h5", "--dataset", "mnist", "--data-root", t / "nothing", *TINY],
        ["mnist not found"],
    ),
}
CASES += [f"cli:{k}" for k in CLI]


@pytest.mark.parametrize("case", list(CLI))
def test_cli_bad_input(case, env, tmp_path, capsys):
    make, needles = CLI[case]
    argv = make(env, tmp_path)
    before = checksums(env.dir / "good.h5", env.packed, env.old, tmp_path)
    expect_cli(argv, capsys, *needles)
    assert checksums(env.dir / "good.h5", env.packed, env.old, tmp_path) == before
    assert not (tmp_path / "new.h5").exists()  # a failing configuration creates nothing


def test_no_probes_is_spelled_none():
    """``--probes none`` (any case) is the empty list on the command line; in Python it is ``probes=[]``."""
    import argparse

    from distill.config import DistillConfig, add_arguments, from_args, validate

    p = argparse.ArgumentParser()
    add_arguments(p, DistillConfig)
    for text in ("none", "None", " NONE "):
        assert from_args(DistillConfig, p.parse_args(["--probes", text])).probes == []
    assert from_args(DistillConfig, p.parse_args(["--probes", "knn,linear"])).probes == ["knn", "linear"]
    validate(DistillConfig(probes=[]))  # the Python spelling stays valid
    with pytest.raises(ValueError, match="unknown probe.*none"):
        validate(DistillConfig(probes=["none", "knn"]))  # 'none' only stands alone


# ---------------------------------------------------------------------------- the file system says no
def test_read_only_file_system(env, capsys):
    mnt = mount_tmpfs(env, "ro", "8m", ro=True, fill_from=env.good)
    store = mnt / env.good.name
    before = checksums(store)
    expect_cli(distill_argv(env, store), capsys, "read-only", "lock")
    expect_cli(distill_argv(env, mnt / "new.h5"), capsys, "read-only")
    expect_cli(["pack", store, mnt / "p.h5"], capsys, "read-only")
    with pytest.raises(StoreError) as exc:
        Store(store, "a")
    one_line(exc, "read-only")
    assert rtt(["info", str(store)]) == 0 and Store(store).student(1) is not None  # reading needs no write access
    capsys.readouterr()
    assert checksums(store) == before
    CASES.extend(["fs:ro_resume", "fs:ro_new_store", "fs:ro_pack", "fs:ro_open_for_writing"])


def test_full_disk_then_resume(env, tmp_path, capsys):
    mnt = mount_tmpfs(env, "full", "3m")
    out = mnt / "run.h5"
    # a model of ~0.8 MB: the teacher and epoch 0 fit, epoch 1 (student + Adam moments) does not
    argv = [
        "distill",
        "--out",
        out,
        "--dataset",
        "mnist",
        "--data-root",
        env.mnist,
        "--epochs",
        "2",
        "--save-every",
        "1",
        *TINY,
        "--arch-options",
        '{"widths": [256]}',
    ]
    err = expect_cli(argv, capsys, "disk is full", "rerun to resume")
    s = Store(out)
    done = s.commits()
    assert done and s.epochs == done and list(s.metrics.epoch.values) == done
    for e in done:
        s.student(e)
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]  # no half-written leftovers
    before = checksums(out)
    expect_cli(["pack", out, mnt / "p.h5"], capsys, "disk is full")
    assert checksums(out) == before and not (mnt / "p.h5").exists()
    r = subprocess.run(["mount", "-o", "remount,size=32m", str(mnt)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr  # "free the disk"
    assert rtt([str(a) for a in argv]) == 0
    capsys.readouterr()
    s = Store(out)
    assert s.epochs == [0, 1, 2] and list(s.metrics.epoch.values) == [0, 1, 2]
    report(capsys, f"full disk: {err.split(': error: ')[1][:100]}...; commits {done} intact; resumed to [0, 1, 2]")
    CASES.extend(["fs:enospc_distill", "fs:enospc_pack", "fs:enospc_resume_after_freeing"])


def test_permission_denied(env, tmp_path, capsys):
    """Root ignores permission bits; the commands run as root without the capabilities that let it
    (setpriv), so a folder without write permission really refuses them with EACCES."""
    setpriv = shutil.which("setpriv")
    if setpriv is None or os.geteuid() != 0:
        pytest.skip("needs root and setpriv (util-linux) to drop the capability that overrides permissions")
    drop = "-dac_override,-dac_read_search"
    shutil.copytree(env.good, tmp_path / "good.h5")
    closed = tmp_path / "closed"
    closed.mkdir()
    os.chmod(closed, 0o555)
    before = checksums(tmp_path)
    runner = (
        "import contextlib, io, json, sys\nfrom landscape.cli import main\nfor argv in json.loads(sys.argv[1]):\n"
        "    err = io.StringIO()\n    with contextlib.redirect_stderr(err):\n        code = main(argv)\n"
        "    print(json.dumps({'code': code, 'stderr': err.getvalue()}))\n"
    )
    cmds = {
        "pack": ["pack", tmp_path / "good.h5", closed / "p.h5"],
        "distill": distill_argv(env, closed / "new.h5"),
        "verify": ["verify", tmp_path / "good.h5"],
    }
    r = subprocess.run(
        [
            setpriv,
            f"--inh-caps={drop}",
            f"--bounding-set={drop}",
            sys.executable,
            "-c",
            runner,
            json.dumps([[str(a) for a in argv] for argv in cmds.values()]),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr
    outs = {
        name: SimpleNamespace(returncode=d["code"], stderr=d["stderr"])
        for name, d in zip(cmds, [json.loads(x) for x in r.stdout.splitlines() if x.startswith('{"code"')])
    }
    for name in ("pack", "distill"):
        r = outs[name]
        assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "permission denied" in r.stderr and "closed" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert outs["verify"].returncode == 0, outs["verify"].stderr  # reading needs no write permission
    os.chmod(closed, 0o755)
    assert checksums(tmp_path) == before and not list(closed.iterdir())
    CASES.extend(["fs:eacces_pack", "fs:eacces_distill"])


# ---------------------------------------------------------------------------- the CIFAR unpickler
def _cifar_folder(tmp: Path, batch: bytes) -> Path:
    folder = tmp / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(batch)
    return tmp


class _Reduce:
    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _pickle_called_ndarray() -> bytes:
    return pickle.dumps({"data": _Reduce(np.ndarray, ((100_000, 3072), "B")), "labels": [0]}, protocol=2)


def _pickle_huge_reconstruct() -> bytes:
    rec = np.zeros(1).__reduce__()[0]
    return pickle.dumps({"data": _Reduce(rec, (np.ndarray, (100_000, 3072), b"B")), "labels": []}, protocol=2)


def _pickle_object_dtype() -> bytes:
    return pickle.dumps({"data": np.array([1, "x"], dtype=object), "labels": [0, 1]}, protocol=2)


UNPICKLE = {
    "ndarray_called_with_a_shape": (_pickle_called_ndarray, "may only be rebuilt"),
    "reconstruct_larger_than_file": (_pickle_huge_reconstruct, "larger than the"),
    "object_dtype_array": (_pickle_object_dtype, "not a plain numeric"),
}
CASES += [f"unpickle:{k}" for k in UNPICKLE]


@pytest.mark.parametrize("case", list(UNPICKLE))
def test_unpickler_admits_only_arrays_bounded_by_the_file(case, tmp_path, capsys):
    make, needle = UNPICKLE[case]
    blob = make()
    assert len(blob) < 2000
    root = _cifar_folder(tmp_path / "data", blob)
    with pytest.raises(ValueError, match=needle):
        distill.data.unpickle_restricted(blob, "batch")
    before = checksums(tmp_path)
    expect_cli(
        ["distill", "--out", tmp_path / "new.h5", "--dataset", "cifar10", "--data-root", root, *TINY],
        capsys,
        needle,
        "data_batch_1",
    )
    assert not (tmp_path / "new.h5").exists() and checksums(tmp_path) == before


def test_api_misuse_is_a_one_line_error(tmp_path):
    s = Store.create(tmp_path / "s.h5")
    m = distill.build_model("mlp", (1, 8, 8), head=None, widths=[8])
    for bad in ("../escape", "/abs", "a//b", ".hidden", ""):
        with pytest.raises(StoreError) as exc:
            s.save_module(bad, m)
        one_line(exc, "invalid object name")
    with pytest.raises(StoreError) as exc:
        Store(s.path).save_module("x", m)
    one_line(exc, "read-only")
    with pytest.raises(StoreError) as exc:
        Store.create(s.path)
    one_line(exc, "already exists")
    assert Store(s.path).names() == []
    CASES.extend(["api:bad_names", "api:write_read_only", "api:create_existing"])


def test_zz_count_the_cases(capsys):
    report(
        capsys,
        f"bad-input suite: {len(CASES)} cases ({len(set(c.split(':')[0] for c in CASES))} kinds), each a "
        "one-line error, non-zero exit, existing files unchanged",
    )
    assert len(CASES) >= 40
