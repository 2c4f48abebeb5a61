"""Every ``gpu`` preset follows the paper's protocol (fp32, the paper's epochs, pruning depth and retraining
recipe); a shortened or bf16 variant exists only as ``gpu-quick`` and says what it changes."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Any

import pytest

from analyses import all as run_all
from analyses import common

# The paper's distillation length per script (PAPER.md: 150 epochs for Figures 1 and 3 and the tables,
# 100 for the ablations), written out by hand; None: the script is beyond the paper (no epoch rule).
PAPER_EPOCHS: dict[str, int | None] = {
    "table1": 150,
    "probing_curves": 150,
    "locality": 150,
    "data_dependence": 150,
    "transfer": 150,
    "planes": 150,
    "lottery": 150,
    "instability": 150,
    "head_dim": 100,
    "surface": 150,
    "hessian": 150,
    "tables": None,  # teachers only: no training in its gpu preset
    "probe_spread": None,  # teachers only
    "align_barriers": None,  # beyond the paper (Git Re-Basin at CPU scale)
    "dynamics": None,  # the follow-up paper's minimal setup
}
DISTILL_KEYS = ("cfg", "distill")  # where the presets keep a student's DistillConfig fields
PAPER_SUPERVISED = dict(epochs=160, milestones=[80, 120], lr=0.1, momentum=0.9, weight_decay=1e-4, batch_size=256)


def module(name: str) -> Any:
    return importlib.import_module(f"analyses.{name}")


def mappings(obj: Any, key: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every (key, dict) nested in a preset, DistillConfig instances as dicts."""
    if hasattr(obj, "to_dict"):
        obj = obj.to_dict()
    if isinstance(obj, dict):
        yield key, obj
        for k, v in obj.items():
            yield from mappings(v, str(k))
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from mappings(v, key)


def test_the_rule_covers_every_script():
    assert set(PAPER_EPOCHS) == set(run_all.SCRIPTS)


@pytest.mark.parametrize("name", sorted(PAPER_EPOCHS))
def test_gpu_preset_trains_in_fp32_with_the_papers_epochs(name):
    from distill.config import DistillConfig, SupervisedConfig

    gpu = module(name).PRESETS["gpu"]
    assert "bf16" not in repr(gpu), f"{name}: the gpu preset uses bf16; name such a variant gpu-quick"
    for key, d in mappings(gpu):
        if "precision" in d:
            assert d["precision"] == "fp32", (name, key)
        epochs = PAPER_EPOCHS[name]
        if key in DISTILL_KEYS and epochs is not None:
            got = d.get("epochs", DistillConfig().epochs)
            assert got >= epochs, f"{name}: students of {got} epochs in the gpu preset, the paper's: {epochs}"
        if key == "sup" and epochs is not None:  # children retrained with the paper's recipe
            sup = SupervisedConfig(**d)
            for field, want in PAPER_SUPERVISED.items():
                assert getattr(sup, field) == want, (name, field, getattr(sup, field))
            assert sup.precision == "fp32"


def test_gpu_lottery_prunes_to_half_a_percent_and_instability_uses_the_papers_grid():
    lot = module("lottery").PRESETS["gpu"]
    # level 0 is unpruned: the last level keeps (1 - f)^(levels - 1); the paper's last: 0.5 % of the weights
    assert (1 - lot["fraction"]) ** (lot["levels"] - 1) <= 0.005 < (1 - lot["fraction"]) ** (lot["levels"] - 2)
    assert lot["fraction"] == 0.2
    ins = module("instability").PRESETS["gpu"]
    assert ins["alphas"] >= 50 and ins["children"] >= 5
    assert module("data_dependence").PRESETS["gpu"]["epochs"] >= 150


@pytest.mark.parametrize("name", sorted(PAPER_EPOCHS))
def test_a_quick_variant_says_what_it_changes(name, capsys):
    mod = module(name)
    if "gpu-quick" not in mod.PRESETS:
        return
    note = getattr(mod, "PRESET_NOTES", {}).get("gpu-quick", "")
    assert "instead of" in note or "bf16" in note, f"{name}: gpu-quick does not say what it changes"
    with pytest.raises(SystemExit):
        mod.main(["-h"])
    assert "gpu-quick: " + note.split(",")[0] in " ".join(capsys.readouterr().out.split())


def test_quick_results_are_written_beside_the_gpu_ones():
    assert common.result_stem("lottery", "cpu") == "lottery"  # the checkout's committed file
    assert common.result_stem("lottery", "gpu") == "lottery_gpu"
    assert common.result_stem("lottery", "gpu-quick") == "lottery_gpu_quick"


def test_a_quick_run_records_its_note_in_the_result(tmp_path, monkeypatch):
    """The note goes into the .nc's attrs (run through a script whose compute is replaced by a stub)."""
    import xarray as xr

    mod = module("probing_curves")
    monkeypatch.setitem(mod.PRESETS, "gpu-quick", mod.PRESETS["smoke"])
    main = common.script(mod.__name__, mod.PRESETS, lambda pre, ctx: xr.Dataset({"a": ("x", [1.0])}), lambda ds, p: p)
    assert main(["--preset", "gpu-quick", "--results", str(tmp_path), "--runs", str(tmp_path / "runs")]) == 0
    with xr.open_dataset(tmp_path / "probing_curves_gpu_quick.nc", engine="h5netcdf") as ds:
        assert ds.attrs["preset_note"] == mod.PRESET_NOTES["gpu-quick"]


def test_variant_changes_nested_settings_key_by_key_and_leaves_the_preset_alone():
    gpu = {"seeds": [0, 1], "cfg": {"arch": "vgg11", "epochs": 150}}
    quick = common.variant(gpu, seeds=[0], cfg={"epochs": 30, "precision": "bf16"})
    assert quick == {"seeds": [0], "cfg": {"arch": "vgg11", "epochs": 30, "precision": "bf16"}}
    assert gpu == {"seeds": [0, 1], "cfg": {"arch": "vgg11", "epochs": 150}}


def test_a_cpu_long_preset_writes_beside_the_cpu_file_unless_the_script_has_no_cpu_preset():
    assert common.result_stem("instability", "cpu-long", ["smoke", "cpu", "cpu-long"]) == "instability_cpu_long"
    assert common.result_stem("instability", "cpu", ["smoke", "cpu", "cpu-long"]) == "instability"
    assert common.result_stem("table1", "cpu-long", ["smoke", "cpu-long", "gpu"]) == "table1"


@pytest.mark.parametrize(
    ("name", "preset"), [(n, p) for n in PAPER_EPOCHS for p in module(n).PRESETS], ids=lambda v: str(v)
)
def test_every_preset_builds_its_configs(name, preset):
    """A preset's student fields (``cfg``/``distill``, with each of ``nets`` where it has them) build a
    DistillConfig and its children's fields (``sup``) a SupervisedConfig: a misspelt or invalid field fails."""
    from distill.config import DistillConfig, SupervisedConfig

    pre = module(name).PRESETS[preset]
    built = 0
    for key in DISTILL_KEYS:
        if isinstance(pre.get(key), dict):
            for net in (pre.get("nets") or {"": {}}).values():
                cfg = DistillConfig(dataset=pre.get("dataset", "fashion-mnist"), **{**pre[key], **net})
                assert cfg.epochs >= 1
                built += 1
    if isinstance(pre.get("sup"), dict):
        assert SupervisedConfig(**pre["sup"]).epochs >= 1
        built += 1
    if name not in ("tables", "probe_spread", "dynamics"):  # teachers only, or their own setting
        assert built, f"{name} --preset {preset} holds no config fields"
