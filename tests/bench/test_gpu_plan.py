"""bench.gpu_plan: FLOP counts against a hand count of VGG11, and the plan's order is the script's."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench import gpu_plan

# VGG11 on 32x32 inputs, multiply-accumulates of its eight 3x3 convolutions (input side, channels in, out),
# counted by hand: 32*32*3*64 + 16*16*64*128 + 8*8*(128*256 + 256*256) + 4*4*(256*512 + 512*512) + 2*2*2*512*512
VGG11_CONV_MACS = 9 * (
    32 * 32 * 3 * 64
    + 16 * 16 * 64 * 128
    + 8 * 8 * (128 * 256 + 256 * 256)
    + 4 * 4 * (256 * 512 + 512 * 512)
    + 2 * 2 * 2 * 512 * 512
)
# the DINO head's matrices: 512 -> 2048 -> 2048 -> 256 -> 65536
HEAD_MACS = 512 * 2048 + 2048 * 2048 + 2048 * 256 + 256 * 65536


def test_vgg11_forward_and_distillation_step_match_a_hand_count():
    assert VGG11_CONV_MACS == 152_764_416
    assert gpu_plan.forward("vgg11").conv == pytest.approx(2 * VGG11_CONV_MACS)
    step = gpu_plan.distill_step("vgg11")
    # matrices: teacher and student forward, the student's two backward products (input and weight)
    assert step.mm == pytest.approx(4 * 2 * HEAD_MACS)
    # convolutions: two forwards, and the student's backward (weights of every layer, inputs of all but the first)
    first = 9 * 32 * 32 * 3 * 64
    assert step.conv == pytest.approx(2 * 2 * VGG11_CONV_MACS + 2 * (2 * VGG11_CONV_MACS - first), rel=1e-6)


def test_plan_starts_with_tables_1_and_3_and_the_script_runs_its_parts_in_that_order():
    names = [p[0] for p in gpu_plan.parts()]
    assert names[:6] == [f"table1 {a} s{s}" for s in (0, 1, 2) for a in ("vgg11", "resnet18")]
    order = list(dict.fromkeys(n.split()[0] for n in names))
    script = (Path(__file__).resolve().parents[2] / "scripts" / "gpu-analyses.sh").read_text()
    parts = re.search(r'^ALL="([^"]+)"', script, re.M)
    assert parts is not None and parts.group(1).split() == order


def test_minutes_follow_the_stated_rates():
    f = gpu_plan.Flops(conv=gpu_plan.RATE["conv"] * 60, mm=gpu_plan.RATE["mm"] * 120)
    assert f.minutes() == pytest.approx(gpu_plan.OVERHEAD * 3)
