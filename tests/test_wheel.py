"""The built wheel works on its own: installed into a fresh virtual environment (no editable
install, no checkout on the path) it distils, describes and compares checkpoints at toy size.

The fresh environment gets the wheel with ``--no-deps``; its dependencies (torch, ...) come from the
test session's environment through one ``.pth`` line, so nothing is downloaded. A ``.pth`` line only
appends a folder to ``sys.path``: the editable finder of that environment is not activated, and the
test checks that ``distill``, ``distill.store`` and ``landscape`` resolve inside the fresh environment.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The project's wheel, built from a copy of the sources (the build leaves nothing in the checkout)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    for pkg in ("distill", "landscape", "analyses"):
        shutil.copytree(ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(src), "-w", str(out)]
    _run(cmd, src, {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    (whl,) = out.glob("random_teachers-*.whl")
    return whl


def test_the_wheel_holds_every_package_and_the_type_markers(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = {
        str(p.parent.relative_to(ROOT))
        for pkg in ("distill", "landscape", "analyses")
        for p in (ROOT / pkg).rglob("__init__.py")
    }
    assert "distill/store" in packages  # a subpackage: a list of top-level packages alone leaves it out
    for pkg in packages:
        for module in (ROOT / pkg).glob("*.py"):
            assert f"{pkg}/{module.name}" in names, f"{pkg}/{module.name} is not in {wheel.name}"
    assert {"distill/py.typed", "landscape/py.typed"} <= names
    assert not any(n.startswith(("tests/", "bench/", "scripts/")) for n in names)


def test_a_fresh_environment_with_the_wheel_runs_distill_info_and_lmc(wheel, tmp_path, fmnist_root):
    env_dir = tmp_path / "env"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    fresh_site = Path(
        _run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path, {}
        ).stdout.strip()
    )
    # the dependencies of the test session's environment, appended after the fresh site-packages
    (fresh_site / "test-session-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index"]
    _run([*pip, str(wheel)], tmp_path, {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})

    work = tmp_path / "work"
    work.mkdir()
    env = {
        k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSAFEPATH")
    }
    env.update(
        PATH=str(env_dir / "bin") + os.pathsep + env.get("PATH", ""),
        RTT_DATA=str(fmnist_root.parent),
        TQDM_DISABLE="1",
        MPLBACKEND="Agg",
    )
    where = _run(
        [
            str(python),
            "-c",
            "import json, distill, distill.store, landscape; "
            "print(json.dumps([m.__file__ for m in (distill, distill.store, landscape)] + [len(dir(distill))]))",
        ],
        work,
        env,
    )
    *files, n_dir = json.loads(where.stdout)
    for f in files:
        assert Path(f).resolve().is_relative_to(fresh_site.resolve()), f"{f} is not the installed wheel's"
        assert not Path(f).resolve().is_relative_to(ROOT), f"{f} comes from the checkout"
    assert n_dir > 20  # the lazy API is listed by dir(distill)

    rtt = str(env_dir / "bin" / "rtt")
    toy = ["--dataset", "fashion-mnist", "--subset", "300", "--arch", "mlp", "--arch-options", '{"widths": [64]}']
    toy += ["--out-dim", "64", "--hidden-dim", "32", "--bottleneck-dim", "16", "--batch-size", "64", "--device", "cpu"]
    _run(
        [rtt, "distill", "--out", "runs/s.h5", *toy, "--epochs", "1", "--probes", "knn", "--probe-subset", "300"],
        work,
        env,
    )
    info = _run([rtt, "info", "runs/s.h5", "--json"], work, env)
    assert json.loads(info.stdout)["config"]["dataset"] == "fashion-mnist"
    _run(
        [rtt, "instability", "runs/s.h5:1", "--children", "2", "--preset", "tiny", "--sup-epochs", "1"]
        + ["--sup-batch-size", "64", "--alphas", "3", "--max-examples", "200", "--device", "cpu"],
        work,
        env,
    )
    children = "runs/s-instability-e1.rts"  # the derived default name
    out = _run(
        [rtt, "lmc", f"{children}:children/0", f"{children}:children/1", "--alphas", "3"]
        + ["--max-examples", "200", "--device", "cpu", "--out", "runs/lmc.nc"],
        work,
        env,
    )
    assert "wrote runs/lmc.nc" in out.stdout
    assert (work / "runs" / "lmc.nc").stat().st_size > 0
