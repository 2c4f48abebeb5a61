"""analyses.lottery --recipe reference follows the authors' finetune.py: every parameter pruned, AdamW at
its defaults, no schedule, no augmentation; written beside the paper recipe's result, never over it."""

from __future__ import annotations

import json

from analyses import common, lottery
from distill.store import Store


def test_reference_recipe_prunes_everything_with_adamw_and_writes_its_own_file(tmp_path, fmnist_root):
    args = ["--preset", "smoke", "--results", str(tmp_path / "res"), "--runs", str(tmp_path / "runs")]
    assert lottery.main([*args, "--recipe", "reference"]) == 0
    assert (tmp_path / "res" / "lottery_smoke_reference.nc").exists()
    assert not (tmp_path / "res" / "lottery_smoke.nc").exists()
    ds = common.open_result(tmp_path / "res" / "lottery_smoke_reference.nc")
    assert ds.attrs["recipe"] == "reference"
    imp = Store(tmp_path / "runs" / "lottery" / "smoke" / "reference-imp-student-s0.rts").read_result("lottery")
    unit = json.loads(imp.attrs["unit"]) if "unit" in imp.attrs else {}
    text = json.dumps({**imp.attrs, **unit}, default=str)
    assert '"prunable": "all"' in text or "'prunable': 'all'" in text or "prunable=all" in text, text[:400]
    assert "adamw" in text
    # every float parameter is masked, biases and the classifier included (the paper recipe: weights only)
    store = Store(tmp_path / "runs" / "lottery" / "smoke" / "reference-imp-student-s0.rts")
    masks = store.load_masks("lottery/start/01")
    assert {"head.bias", "head.weight", "backbone.features.0.0.bias"} <= set(masks)
    kept = sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
    assert abs(kept - 0.5) < 0.01  # the smoke preset prunes half at level 1, over all of them
