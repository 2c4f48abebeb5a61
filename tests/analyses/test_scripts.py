"""Every analysis script runs with --preset smoke and writes a valid .nc and a non-empty .png; the .png
redraws from the .nc alone; ``rtt plot`` draws every result file and refuses anything else in one line."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import xarray as xr

from analyses import all as run_all

# the dims (and variables) each result file promises, written out by hand
EXPECTED = {
    "table1": {
        "accuracy": {"run", "epoch", "model", "probe"},
        "summary": {"run", "statistic", "model", "probe"},
        "first_pass": {"run", "reference", "probe"},
        "epochs_done": {"run"},
        "paper": {"paper_arch", "model", "probe"},
        "effective_rank": {"run", "epoch", "model"},
        "distance": {"run", "epoch"},
    },
    "tables": {
        "teacher": {"arch", "seed", "probe"},
        "teacher_bn": {"arch", "seed", "probe"},
        "student": {"arch", "seed", "probe"},
        "input": {"input_seed", "probe"},
        "paper_teacher_linear": {"arch"},
    },
    "probe_spread": {
        "accuracy": {"arch", "seed", "recipe", "probe_seed"},
        "best": {"arch", "seed", "recipe"},
        "paper_teacher_linear": {"arch"},
    },
    "probing_curves": {"accuracy": {"seed", "epoch", "model", "probe"}},
    "locality": {"accuracy": {"net", "alpha", "seed", "model", "probe"}},
    "data_dependence": {
        "accuracy": {"data", "regime", "n", "seed", "model", "probe"},
        "steps": {"data", "regime", "n"},
    },
    "transfer": {"accuracy": {"pair", "seed", "model", "probe"}},
    "planes": {"loss": {"view", "x", "y"}, "accuracy": {"view", "x", "y"}, "point_x": {"view", "point"}},
    "lottery": {"best_accuracy": {"curve", "seed", "level"}},
    "instability": {"error": {"seed", "start", "pair", "alpha"}, "barrier_error": {"seed", "start", "pair"}},
    "head_dim": {
        "accuracy_out_dim": {"out_dim", "seed", "model", "probe"},
        "accuracy_bottleneck": {"bottleneck_dim", "seed", "model", "probe"},
    },
    "surface": {
        "line_loss": {"centre", "seed", "t"},
        "line_error": {"centre", "seed", "t"},
        "plane_loss": {"centre", "seed", "x", "y"},
        "plane_error": {"centre", "seed", "x", "y"},
        "through_loss": {"u", "v"},
        "through_error": {"u", "v"},
        "child_test_accuracy": {"centre", "child"},
    },
    "hessian": {
        "path_eigenvalue": {"start", "pair", "alpha", "eigen"},
        "path_trace": {"start", "pair", "alpha"},
        "level_eigenvalue": {"level", "eigen"},
        "level_trace": {"level"},
        "remaining": {"level"},
        "density": {"start", "lambda"},
        "child_test_accuracy": {"start", "child"},
    },
    "align_barriers": {
        "error": {"width", "seed", "alignment", "alpha"},
        "loss": {"width", "seed", "alignment", "alpha"},
        "end_accuracy": {"width", "seed", "end"},
        "barrier_error": {"width", "seed", "alignment"},
    },
    "dynamics": {
        "accuracy": {"epoch", "model", "probe"},
        "effective_rank": {"epoch", "model"},
        "embedding_cosine": {"epoch", "model"},
        "layer_cosine": {"epoch", "model", "layer"},
    },
}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, fmnist_root, cifar_tarball):
    out = tmp_path_factory.mktemp("smoke")
    rc = run_all.main(
        [
            "--preset",
            "smoke",
            "--results",
            str(out / "results"),
            "--runs",
            str(out / "runs"),
            "--root",
            str(cifar_tarball),
        ]
    )
    return out, rc


def test_every_script_is_run_by_all():
    assert set(run_all.SCRIPTS) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_smoke_preset_writes_valid_nc_and_png(smoke, name):
    out, rc = smoke
    nc, png = out / "results" / f"{name}_smoke.nc", out / "results" / f"{name}_smoke.png"
    assert nc.exists() and png.exists(), f"{name} wrote nothing (analyses.all exit {rc})"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    with xr.open_dataset(nc, engine="h5netcdf") as ds:
        for var, dims in EXPECTED[name].items():
            assert var in ds, f"{name}.nc has no {var}"
            assert set(ds[var].dims) == dims, (name, var, ds[var].dims)
        for key in ("commit", "command_line", "recipe", "config", "seeds", "preset"):
            assert key in ds.attrs, f"{name}.nc lacks provenance attr {key}"
        assert ds.attrs["preset"] == "smoke" and set(ds.attrs["recipe"].split(",")) <= {"paper", "reference"}
        assert json.loads(ds.attrs["config"]) and len(ds.attrs["commit"]) >= 7
        # the script's own command, as analyses.all called it: rerunnable as written, not pytest's argv
        cmd = shlex.split(ds.attrs["command_line"])
        assert cmd[:5] == ["python", "-m", f"analyses.{name}", "--preset", "smoke"], cmd
        assert cmd[cmd.index("--results") + 1] == str(out / "results"), cmd
        acc = [v for v in ds.data_vars if ds[v].attrs.get("units") == "fraction"]
        assert acc, f"{name}.nc has no accuracy in fractions"
        for v in acc:
            vals = ds[v].values
            assert ((vals[vals == vals] >= 0) & (vals[vals == vals] <= 1)).all(), (name, v)


def test_legend_of_every_panel_names_a_line_drawn_on_one_panel_only():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from analyses import common

    fig, (a, b) = plt.subplots(1, 2)
    a.plot([0, 1], label="student")
    a.plot([1, 0], label="paper")
    b.plot([0, 1], label="student")
    common.legend(b)
    assert [t.get_text() for t in b.get_legend().get_texts()] == ["student"]
    common.legend(b, every_panel=True)
    assert [t.get_text() for t in b.get_legend().get_texts()] == ["student", "paper"]
    plt.close(fig)


def test_all_scripts_succeeded(smoke):
    assert smoke[1] == 0


def test_plot_only_redraws_from_the_nc_alone(smoke, tmp_path):
    from analyses import locality

    out, _ = smoke
    (tmp_path / "locality.nc").write_bytes((out / "results" / "locality_smoke.nc").read_bytes())
    assert locality.main(["--plot-only", "--results", str(tmp_path), "--runs", str(tmp_path / "none")]) == 0
    assert (tmp_path / "locality.png").stat().st_size > 5000 and not (tmp_path / "none").exists()
    assert locality.main(["--plot-only", "--results", str(tmp_path / "empty")]) == 1


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_rtt_plot_draws_every_result_file(smoke, name, tmp_path):
    from landscape.cli import main as rtt

    out, _ = smoke
    png = tmp_path / f"{name}.png"
    assert rtt(["plot", str(out / "results" / f"{name}_smoke.nc"), "--out", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 3000


def test_rtt_plot_refuses_anything_else_in_one_line(tmp_path):
    bad = tmp_path / "notes.nc"
    bad.write_text("not a result file\n")
    for path in (bad, tmp_path / "missing.nc"):
        r = subprocess.run(
            [sys.executable, "-m", "landscape.cli", "plot", str(path)], capture_output=True, text=True, timeout=300
        )
        assert r.returncode == 1 and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "rtt plot: error" in r.stderr


def test_only_naming_no_architecture_is_one_line_and_writes_nothing(tmp_path, capsys):
    from analyses import tables

    argv = ["--preset", "smoke", "--only", "resnet999", "--results", str(tmp_path / "r"), "--runs", str(tmp_path)]
    assert tables.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "resnet999" in err and "choose from" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_results_saved_at_once_to_one_path_leave_one_whole_file(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    from analyses import common

    path = tmp_path / "unit.nc"
    sets = [xr.Dataset({"x": ("i", np.full(50_000, float(k)))}) for k in range(4)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda ds: common.save(ds, path), sets))
    got = common.open_result(path).x.values
    assert len(set(got.tolist())) == 1 and got[0] in range(4) and got.size == 50_000
    assert [p.name for p in tmp_path.iterdir()] == ["unit.nc"]  # no temporary file left behind


def test_plane_grid_values_are_the_networks_at_those_points_and_leave_them_unchanged():
    import copy

    import numpy as np
    import torch

    from analyses.planes import grid_values
    from distill import build_model
    from distill.data import Dataset, Split, normalize

    g = torch.Generator().manual_seed(3)
    imgs = torch.randint(0, 256, (40, 1, 3, 3), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 3, (40,), generator=g)
    data = Dataset("synthetic", Split(imgs, labels), Split(imgs[:20], labels[:20]), ["0", "1", "2"], (0.5,), (0.25,))
    opts = dict(head="dino", widths=[6], out_dim=8, hidden_dim=7, bottleneck_dim=4)
    nets = {}
    for i, name in enumerate(("a", "b", "c")):
        torch.manual_seed(i)
        nets[name] = build_model("mlp", (1, 3, 3), **opts).eval()
    before = {n: copy.deepcopy(m.state_dict()) for n, m in nets.items()}
    teacher = nets["a"]
    xs, ys = np.array([0.0, 1.0, 0.5]), np.array([0.0, 0.0])
    loss, _, _ = grid_values(nets, ("a", "b", "c"), teacher, data, dict(n_loss=16, n_probe=20), xs, ys)
    x = normalize(imgs[:16], data.mean, data.std)
    with torch.no_grad():
        p_t = torch.softmax(before_model(opts, before["a"])(x), -1)

        def ce(sd):
            return float(-(p_t * torch.log_softmax(before_model(opts, sd)(x), -1)).sum(-1).mean())

        mid = {k: (before["a"][k] + before["b"][k]) / 2 for k in before["a"]}
    # x = 0 is a, x = 1 is b and x = 0.5 their midpoint, whatever was evaluated before
    np.testing.assert_allclose(loss[:, 0], [ce(before["a"]), ce(before["b"]), ce(mid)], rtol=1e-5)
    for n, m in nets.items():
        assert all(torch.equal(m.state_dict()[k], before[n][k]) for k in before[n]), f"{n} was changed"


def before_model(opts: dict, state: dict):
    from distill import build_model

    m = build_model("mlp", (1, 3, 3), **opts).eval()
    m.load_state_dict(state)
    return m


def test_tables_reference_vit_row_is_built_with_the_reference_options(smoke):
    from analyses.common import open_result

    out, rc = smoke
    assert rc == 0
    ds = open_result(out / "results" / "tables_smoke.nc")
    assert list(ds.arch.values) == ["vgg11", "vit_tiny", "vit_tiny-reference"]
    assert float(ds.paper_teacher_linear.sel(arch="vit_tiny-reference")) == 0.3293  # ViT-Tiny's Table 5 number
    unit = open_result(next((out / "runs").rglob("teacher-vit_tiny-reference-s0.nc")))
    options = json.loads(unit.attrs["config"])["arch_options"]
    assert options == {"depth": 1, "tie_blocks": True, "weight_init": "torch", "block": "reference"}
    plain = open_result(next((out / "runs").rglob("teacher-vit_tiny-s0.nc")))
    assert json.loads(plain.attrs["config"])["arch_options"] == {"depth": 1}


# ----------------------------------------------------------------------------- the full preset
def test_full_tables_hold_every_table5_architecture_and_cpu_rows_are_computed_as_there():
    from analyses import tables

    full, cpu = tables.PRESETS["full"], tables.PRESETS["cpu"]
    # the paper's ten Table-5 networks and the authors' two ViTs, written out here
    paper = {
        "vgg11",
        "vgg13",
        "vgg16",
        "vgg19",
        "resnet18",
        "resnet20",
        "resnet34",
        "resnet56",
        "vit_tiny",
        "vit_small",
    }
    assert set(full["archs"]) == paper | {"vit_tiny-reference", "vit_small-reference"}
    assert set(cpu["archs"]) < set(full["archs"]) and {"vgg11", "resnet20", "vit_tiny"} <= set(cpu["archs"])
    for key in ("subset", "n_test", "seeds", "input_seeds", "student"):
        assert cpu[key] == full[key], key  # the probes of the full 50k / 10k split in both
    assert full["subset"] is None and full["n_test"] is None


def test_full_preset_is_offered_only_where_defined_and_writes_beside_the_cpu_file(smoke, tmp_path, capsys):
    from analyses import locality, tables

    out, _ = smoke
    (tmp_path / "tables_full.nc").write_bytes((out / "results" / "tables_smoke.nc").read_bytes())
    assert tables.main(["--preset", "full", "--plot-only", "--results", str(tmp_path)]) == 0
    assert (tmp_path / "tables_full.png").stat().st_size > 5000 and not (tmp_path / "tables.png").exists()
    # a script without a full preset refuses it as a usage error, naming the presets it has
    with pytest.raises(SystemExit) as e:
        locality.main(["--preset", "full", "--results", str(tmp_path / "r"), "--runs", str(tmp_path / "runs")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'full'" in err and "'cpu'" in err and not (tmp_path / "r").exists()


def test_all_with_the_full_preset_runs_the_scripts_that_have_it_and_names_the_others(monkeypatch, tmp_path, capsys):
    from analyses import probe_spread

    called = []
    monkeypatch.setattr(probe_spread, "main", lambda argv: called.append(list(argv)) or 0)
    argv = ["--results", str(tmp_path / "r"), "--runs", str(tmp_path / "runs")]
    assert run_all.main(["--preset", "full", "--only", "locality,probe_spread", *argv]) == 0
    assert len(called) == 1 and called[0][:2] == ["--preset", "full"]
    assert "analyses.locality: skipped (it has no full preset)" in capsys.readouterr().out
    # none of the named scripts has it: a one-line usage error naming the scripts that do
    assert run_all.main(["--preset", "full", "--only", "locality", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "probe_spread" in err and "tables" in err and len(called) == 1


# ----------------------------------------------------------------------------- the checkout's results are safe
REPO = Path(__file__).resolve().parents[2]


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False).stdout


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_smoke_results_and_runs_in_the_checkout_are_ignored_by_git(name):
    from analyses.common import result_stem

    stem = result_stem(name, "smoke")
    assert stem == f"{name}_smoke"
    paths = [f"results/{stem}.nc", f"results/{stem}.png", f"runs/{name}/smoke/x.rts", f"runs/{name}/smoke/x.h5"]
    assert _git("check-ignore", *paths).split() == paths  # every one ignored: git status stays clean


def test_a_smoke_run_in_the_checkout_leaves_git_status_as_it_was(fmnist_root, monkeypatch):
    from analyses import head_dim

    before = _git("status", "--porcelain")
    monkeypatch.chdir(REPO)
    assert head_dim.main(["--preset", "smoke"]) == 0  # default --results results --runs runs
    try:
        assert _git("status", "--porcelain") == before
        assert (REPO / "results" / "head_dim_smoke.nc").exists()
    finally:
        for p in (REPO / "results").glob("head_dim_smoke.*"):
            p.unlink()


def test_a_committed_result_is_refused_before_any_work_unless_overwrite(monkeypatch, capsys):
    from analyses import locality

    nc = REPO / "results" / "locality.nc"
    if not _git("ls-files", "results/locality.nc").strip():
        pytest.fail("results/locality.nc is not committed")
    data = nc.read_bytes()
    monkeypatch.chdir(REPO)
    assert locality.main(["--preset", "cpu", "--runs", "/nonexistent/runs"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--overwrite" in err[0] and "committed result" in err[0]
    assert nc.read_bytes() == data and not Path("/nonexistent/runs").exists()
