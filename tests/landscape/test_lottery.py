"""Iterative magnitude pruning: exact counts (ties included), masks as parametrizations,
rewinding, store checkpoints, resuming, result format."""

from __future__ import annotations

import copy
import importlib

import numpy as np
import pytest
import torch
import xarray as xr
from torch import nn

import distill
from distill.config import SupervisedConfig
from distill.data import Dataset, Split
from distill.store import Store
from distill.supervised import train_supervised
from landscape.lottery import lottery, remaining_counts
from landscape.pruning import (
    Mask,
    apply_masks,
    current_masks,
    full_masks,
    global_magnitude_prune,
    masked_state_dict,
    prunable_names,
    random_prune,
    remove_masks,
    unmasked_copy,
)

lottery_mod = importlib.import_module("landscape.lottery_levels")  # the module that trains the levels

CFG = SupervisedConfig(epochs=1, milestones=[], batch_size=32, augment="none", device="cpu")


def tiny_model(seed: int = 0, **kw) -> nn.Module:
    torch.manual_seed(seed)
    return distill.build_model("convnet", (1, 12, 12), head="linear", num_classes=4, width=8, depth=2, **kw)


def synthetic(n_train: int = 96, n_test: int = 48, seed: int = 0) -> Dataset:
    """4 classes; the class sets the brightness of the top-left quarter (learnable in a few steps)."""
    g = torch.Generator().manual_seed(seed)

    def split(n: int) -> Split:
        y = torch.randint(0, 4, (n,), generator=g)
        x = torch.randint(0, 256, (n, 1, 12, 12), generator=g)
        x[:, :, :6, :6] = (y * 80).view(-1, 1, 1, 1)
        return Split(x.to(torch.uint8), y)

    return Dataset("synthetic", split(n_train), split(n_test), list("abcd"), (0.5,), (0.3,))


@pytest.fixture(scope="module")
def data() -> Dataset:
    return synthetic()


def same_except_start_time(a: xr.Dataset, b: xr.Dataset) -> bool:
    """Identical, provenance included, apart from when each call started."""
    strip = [{k: v for k, v in d.attrs.items() if k != "started_at"} for d in (a, b)]
    return a.drop_attrs().identical(b.drop_attrs()) and strip[0] == strip[1]


def reference_prune(
    weights: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], fraction: float
) -> dict[str, np.ndarray]:
    """Independent global magnitude pruning: numpy stable argsort over the alive entries."""
    keys = list(masks)
    flat = np.concatenate([weights[k].detach().abs().double().numpy().ravel() for k in keys])
    alive = np.concatenate([masks[k].numpy().ravel() != 0 for k in keys])
    idx = np.flatnonzero(alive)
    k = int(round(fraction * len(idx)))
    order = np.argsort(flat[idx], kind="stable")
    keep = alive.copy()
    keep[idx[order[:k]]] = False
    out, start = {}, 0
    for key in keys:
        n = masks[key].numel()
        out[key] = keep[start : start + n].reshape(masks[key].shape)
        start += n
    return out


# ----------------------------------------------------------------------------- prunable sets
def test_prunable_sets_weights_and_all() -> None:
    model = tiny_model()
    conv_linear = [f"{name}.weight" for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert prunable_names(model, "weights") == conv_linear
    assert "head.weight" in conv_linear  # the classifier is pruned by default
    every = [n for n, p in model.named_parameters()]
    assert prunable_names(model, "all") == every
    assert any(n.endswith("bias") for n in every) and "backbone.features.0.1.weight" in every  # BN affine
    assert not any("running" in n for n in prunable_names(model, "all"))
    assert prunable_names(model, ["head.weight", "head.bias"]) == ["head.weight", "head.bias"]
    with pytest.raises(ValueError, match="prunable"):
        prunable_names(model, "biases")
    with pytest.raises(ValueError, match="not floating point"):
        prunable_names(model, ["backbone.features.0.1.num_batches_tracked"])


# ----------------------------------------------------------------------------- exact counts
@pytest.mark.parametrize("distinct", [3, 1000])
def test_global_prune_exact_counts_with_ties(distinct: int) -> None:
    model = tiny_model()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # few distinct magnitudes -> massive ties at every threshold
        for name in prunable_names(model):
            w = model.get_parameter(name)
            w.copy_((torch.randint(0, distinct, w.shape, generator=g) - distinct // 2).float() * 0.25)
    masks = full_masks(model)
    n = sum(m.numel() for m in masks.values())
    expected = [n]
    for _ in range(6):
        expected.append(expected[-1] - round(0.2 * expected[-1]))
    weights = {k: model.get_parameter(k).detach().clone() for k in masks}
    got = [n]
    for _ in range(6):
        ref = reference_prune(weights, masks, 0.2)
        masks = global_magnitude_prune(model, masks, 0.2)
        for k in masks:
            np.testing.assert_array_equal(masks[k].numpy(), ref[k], err_msg=k)
        got.append(int(sum(int(m.sum()) for m in masks.values())))
    assert got == expected
    assert remaining_counts(n, 7, 0.2) == expected


def test_global_prune_is_global_and_accepts_state_and_masked_model() -> None:
    model = tiny_model()
    masks = full_masks(model)
    with torch.no_grad():
        model.head.weight.mul_(1e-7)  # the smallest weights all sit in one layer
    new = global_magnitude_prune(model, masks, 0.04)
    k = round(0.04 * sum(m.numel() for m in masks.values()))
    assert k < model.head.weight.numel()
    assert int((~new["head.weight"]).sum()) == k  # global: all pruned weights come from the head
    from_state = global_magnitude_prune(model.state_dict(), masks, 0.04)
    assert all(torch.equal(new[key], from_state[key]) for key in new)
    apply_masks(model, new)  # a masked model ranks its masked weights the same way
    again = global_magnitude_prune(model, new, 0.3)
    ref = reference_prune(masked_state_dict(model), new, 0.3)
    assert all(np.array_equal(again[key].numpy(), ref[key]) for key in again)
    with pytest.raises(ValueError, match="fraction"):
        global_magnitude_prune(model, new, 1.5)


def test_random_prune_count_seeded_and_nested() -> None:
    masks = full_masks(tiny_model())
    n = sum(m.numel() for m in masks.values())
    a = random_prune(masks, 0.2, seed=3)
    b = random_prune(masks, 0.2, seed=3)
    c = random_prune(masks, 0.2, seed=4)
    assert sum(int(m.sum()) for m in a.values()) == n - round(0.2 * n)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    d = random_prune(a, 0.5, seed=5)
    assert sum(int(m.sum()) for m in d.values()) == (n - round(0.2 * n)) - round(0.5 * (n - round(0.2 * n)))
    assert all(not bool((d[k] & ~a[k]).any()) for k in a)  # only unpruned entries are pruned


# ----------------------------------------------------------------------------- parametrization
def test_masks_zero_forward_gradient_and_training(data: Dataset) -> None:
    model = tiny_model()
    masks = global_magnitude_prune(model, full_masks(model, "all"), 0.5)
    apply_masks(model, masks)
    for name, m in current_masks(model).items():
        module, _, attr = name.rpartition(".")
        original = model.get_submodule(module).parametrizations[attr].original
        assert torch.equal(original[~m], torch.zeros_like(original[~m]))  # originals zeroed too
    x, y = next(distill.data.iterate(data.train, 16, data.mean, data.std))
    nn.functional.cross_entropy(model(x), y).backward()
    for name, m in masks.items():
        module, _, attr = name.rpartition(".")
        grad = model.get_submodule(module).parametrizations[attr].original.grad
        assert grad is not None and bool((grad[~m] == 0).all()), name
        assert bool((grad[m] != 0).any()) or not bool(m.any()), name  # zero-init biases are pruned first
    model.zero_grad()
    before = masked_state_dict(model)
    cfg = CFG.replace(lr=0.2, momentum=0.9, weight_decay=0.05, epochs=2)  # momentum + decay on every entry
    train_supervised(model, data, cfg)
    after = masked_state_dict(model)
    for name, m in masks.items():
        module, _, attr = name.rpartition(".")
        original = model.get_submodule(module).parametrizations[attr].original
        assert bool((original[~m] == 0).all()) and bool((after[name][~m] == 0).all()), name
        assert not torch.equal(after[name][m], before[name][m]) or not bool(m.any()), name  # survivors trained


def test_remove_masks_gives_clean_state_and_copies_are_independent() -> None:
    model = tiny_model()
    clean_keys = set(model.state_dict())
    masks = random_prune(full_masks(model), 0.5, seed=0)
    apply_masks(model, masks)
    assert any(isinstance(m, Mask) for m in model.modules())
    twin = copy.deepcopy(model)
    copy_clean = unmasked_copy(model)
    assert set(copy_clean.state_dict()) == clean_keys
    x = torch.randn(2, 1, 12, 12)
    model.eval(), twin.eval(), copy_clean.eval()
    out = model(x)  # still masked after its copy was unmasked
    assert torch.equal(out, twin(x)) and torch.equal(out, copy_clean(x))
    remove_masks(model)
    assert set(model.state_dict()) == clean_keys and not current_masks(model)
    assert torch.equal(twin(x), out) and current_masks(twin).keys() == masks.keys()
    for k, m in masks.items():
        assert bool((model.state_dict()[k][~m] == 0).all())


# ----------------------------------------------------------------------------- the lottery
class CountingTrainer:
    """Wraps train_supervised: counts calls and records the weights each training starts from."""

    def __init__(self) -> None:
        self.starts: list[dict[str, torch.Tensor]] = []

    def __call__(self, model, *args, **kwargs):
        self.starts.append({k: v.detach().clone() for k, v in masked_state_dict(model).items()})
        return train_supervised(model, *args, **kwargs)


def test_lottery_store_counts_zeros_and_rewind_to_start(data: Dataset, tmp_path, monkeypatch) -> None:
    start = tiny_model(seed=5)
    spy = CountingTrainer()
    monkeypatch.setattr(lottery_mod, "train_supervised", spy)
    path = tmp_path / "lottery.h5"
    ds = lottery(start, data, levels=3, prune_fraction=0.3, cfg=CFG, store=path, device="cpu", progress=False)
    names = prunable_names(start)
    n = sum(start.state_dict()[k].numel() for k in names)
    expected = [n, n - round(0.3 * n)]
    expected.append(expected[-1] - round(0.3 * expected[-1]))
    assert ds.remaining_weights.values.tolist() == expected
    np.testing.assert_allclose(ds.sparsity.values, np.array(expected) / n)
    assert len(spy.starts) == 3
    store = Store(path)
    clean_keys = set(start.state_dict())
    start_state = start.state_dict()
    for level in range(3):
        state, attrs = store.load_state(f"lottery/start/{level:02d}")
        masks = store.load_masks(f"lottery/start/{level:02d}")
        assert set(state) == clean_keys and set(masks) == set(names)
        assert sum(int(m.sum()) for m in masks.values()) == expected[level]
        assert attrs["final_accuracy"] == ds.final_accuracy.sel(rewind="start", level=level).item()
        for k, m in masks.items():
            assert m.dtype == torch.uint8 and bool((state[k][m == 0] == 0).all()), k
        # the level's training started from the start weights under its mask, exactly
        rewound = spy.starts[level]
        for k, v in start_state.items():
            if k in masks:
                keep = masks[k] != 0
                assert torch.equal(rewound[k][keep], v[keep]) and bool((rewound[k][~keep] == 0).all()), k
            else:
                assert torch.equal(rewound[k], v), k
        if level:  # the mask came from the previous level's trained weights
            prev_state, _ = store.load_state(f"lottery/start/{level - 1:02d}")
            prev_masks = store.load_masks(f"lottery/start/{level - 1:02d}")
            ref = reference_prune(prev_state, {k: prev_masks[k] for k in names}, 0.3)
            assert all(np.array_equal(masks[k].numpy() != 0, ref[k]) for k in names)
    assert store.read_result("lottery").identical(ds)


def test_lottery_resume_trains_only_missing_levels(data: Dataset, tmp_path, monkeypatch) -> None:
    start = tiny_model(seed=2)
    spy = CountingTrainer()
    monkeypatch.setattr(lottery_mod, "train_supervised", spy)
    kw = dict(cfg=CFG, device="cpu", progress=False, rewind=["start", "step"], rewind_step=2)
    first = lottery(start, data, levels=2, store=tmp_path / "a.h5", **kw)
    assert len(spy.starts) == 3  # level 0 is shared by start and step, then level 1 of each
    spy.starts.clear()
    second = lottery(start, data, levels=3, store=tmp_path / "a.h5", **kw)
    assert len(spy.starts) == 2  # level 2 of each rewind target, nothing else
    assert same_except_start_time(second.isel(level=slice(0, 2)), first)
    spy.starts.clear()
    straight = lottery(start, data, levels=3, store=tmp_path / "b.h5", **kw)  # no interruption
    for var in ("best_accuracy", "final_accuracy", "final_loss", "remaining_weights"):
        np.testing.assert_array_equal(straight[var].values, second[var].values)
    with pytest.raises(ValueError, match="prune_fraction"):
        lottery(start, data, levels=4, store=tmp_path / "a.h5", prune_fraction=0.5, **kw)
    with pytest.raises(ValueError, match="start_fingerprint"):
        lottery(tiny_model(seed=9), data, levels=4, store=tmp_path / "a.h5", **kw)


def test_rewind_to_step_and_init(data: Dataset, monkeypatch) -> None:
    start = tiny_model(seed=3)
    spy = CountingTrainer()
    monkeypatch.setattr(lottery_mod, "train_supervised", spy)
    ds = lottery(
        start, data, levels=2, cfg=CFG, rewind=["step", "init"], rewind_step=2, device="cpu", progress=False, seed=7
    )
    assert ds.rewind.values.tolist() == ["step", "init"] and ds.sizes == {"rewind": 2, "level": 2}
    # independent step-2 weights: train a copy of start and capture after the second step
    captured = {}
    train_supervised(
        copy.deepcopy(start), data, CFG, on_step=lambda s, m: captured.setdefault(s, copy.deepcopy(m.state_dict()))
    )
    step_state = captured[2]
    torch.manual_seed(7)
    init_state = distill.build_model(**start.spec).state_dict()
    # trainings: step level 0 (from start), step level 1, init level 0 (from init), init level 1
    assert len(spy.starts) == 4
    assert all(torch.equal(spy.starts[0][k], v) for k, v in start.state_dict().items())
    assert all(torch.equal(spy.starts[2][k], v) for k, v in init_state.items())
    for level1, target in ((spy.starts[1], step_state), (spy.starts[3], init_state)):
        for k, v in target.items():
            if k in prunable_names(start):
                alive = level1[k] != 0
                assert torch.equal(level1[k][alive], v[alive]), k
                assert int((~alive).sum()) >= 1
            else:
                assert torch.equal(level1[k], v), k


def test_baselines_prunable_all_and_netcdf_roundtrip(data: Dataset, tmp_path) -> None:
    start = distill.build_model(
        "convnet", (1, 12, 12), head="dino", width=8, depth=2, out_dim=16, hidden_dim=16, bottleneck_dim=8
    )  # no classifier: one is put on
    ds = lottery(
        start,
        data,
        levels=2,
        cfg=CFG,
        prunable="all",
        baselines=("random_prune", "random_reinit"),
        device="cpu",
        progress=False,
    )
    assert ds.attrs["classifier"].startswith("with_classifier")
    assert ds.method.values.tolist() == ["imp", "random_prune", "random_reinit"]
    assert dict(ds.best_accuracy.sizes) == {"rewind": 1, "method": 3, "level": 2}
    model = distill.supervised.with_classifier(start, 4)
    n = sum(p.numel() for p in model.parameters())  # "all": every parameter, biases and BN included
    assert ds.remaining_weights.values.tolist() == [n, n - round(0.2 * n)]
    imp0 = ds.final_accuracy.sel({"method": "imp", "level": 0})  # dict form: sel's own kwarg is 'method'
    assert ds.final_accuracy.sel({"method": "random_prune", "level": 0}).item() == imp0.item()
    for var in ("best_accuracy", "final_accuracy"):
        assert ds[var].attrs["units"] == "fraction" and ds[var].attrs["long_name"]
        assert bool(((ds[var] >= 0) & (ds[var] <= 1)).all())
    for v in ds.attrs.values():
        assert isinstance(v, (str, int, float))
    path = tmp_path / "lottery.nc"
    ds.to_netcdf(path, engine="h5netcdf")
    back = xr.load_dataset(path, engine="h5netcdf")
    assert back.identical(ds)


def test_lottery_argument_errors(data: Dataset) -> None:
    start = tiny_model()
    for kw, match in [
        (dict(rewind="epoch"), "rewind"),
        (dict(rewind="step"), "rewind_step"),
        (dict(rewind="step", rewind_step=4), "rewind_step=4 exceeds the 3"),
        (dict(levels=0), "levels"),
        (dict(prune_fraction=1.0), "prune_fraction"),
        (dict(baselines=("magnitude",)), "baseline"),
    ]:
        with pytest.raises(ValueError, match=match):
            lottery(start, data, cfg=CFG, device="cpu", **kw)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_global_prune_on_cuda_matches_cpu() -> None:
    model = tiny_model()
    with torch.no_grad():
        for name in prunable_names(model):
            model.get_parameter(name).copy_(torch.randint(-2, 3, model.get_parameter(name).shape).float())
    cpu = global_magnitude_prune(model, full_masks(model), 0.37)
    gpu = global_magnitude_prune(model.cuda(), full_masks(model), 0.37)
    assert all(torch.equal(cpu[k], gpu[k].cpu()) for k in cpu) and all(m.is_cuda for m in gpu.values())


def test_rewind_rng_option_sets_level_seeds(data: Dataset, monkeypatch) -> None:
    seen = []

    def fake(model, data, cfg, **kw):  # records the recipe of each level; no training needed here
        seen.append((cfg.data_seed, cfg.aug_seed))
        return {"test_accuracy": 0.5, "best_test_accuracy": 0.5, "test_loss": 1.0, "steps": 1}

    monkeypatch.setattr(lottery_mod, "train_supervised", fake)
    cfg = CFG.replace(data_seed=10, aug_seed=20)
    lottery(tiny_model(), data, levels=3, cfg=cfg, device="cpu", progress=False)
    assert seen == [(10, 20)] * 3  # default: every level replays the same order and augmentation
    seen.clear()
    lottery(tiny_model(), data, levels=3, cfg=cfg, device="cpu", progress=False, rewind_rng=False)
    assert seen == [(10, 20), (11, 21), (12, 22)]


def test_rtt_lottery_command(fmnist_root, tmp_path, capsys) -> None:
    from landscape.cli import main

    torch.manual_seed(0)
    student = distill.build_model(
        "convnet", (1, 28, 28), head="dino", width=8, depth=2, out_dim=16, hidden_dim=16, bottleneck_dim=8
    )
    src = Store.create(tmp_path / "run.h5", {"dataset": "fashion-mnist", "data_root": str(fmnist_root)})
    src.save_module("student/00002", student, {"epoch": 2})
    args = [
        "lottery",
        str(src.path),
        "--levels",
        "2",
        "--preset",
        "tiny",
        "--sup-epochs",
        "1",
        "--subset",
        "64",
        "--device",
        "cpu",
        "--prunable",
        "all",
        "--baselines",
        "random_prune",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "start/random_prune" in out and "wrote" in out
    result = xr.load_dataset(tmp_path / "run-lottery-e2.nc", engine="h5netcdf")
    assert result.rewind.values.tolist() == ["start"] and result.attrs["prunable"] == "all"
    assert result.remaining_weights.values[1] == result.remaining_weights.values[0] - round(
        0.2 * int(result.remaining_weights.values[0])
    )
    assert result.attrs["start"].endswith("#epoch=2")
    assert Store(tmp_path / "run-lottery-e2.rts").names("lottery/start/") == [
        "lottery/start/00",
        "lottery/start/01",
        "lottery/start/random_prune/01",
    ]


# ----------------------------------------------------------------------------- step rewind with optimiser state
class ArgumentTrainer:
    """Wraps train_supervised: records the model, its starting weights and the keyword arguments of
    every call, and the momentum buffers the optimiser holds when it takes its first step."""

    def __init__(self, monkeypatch) -> None:
        self.calls: list[dict] = []
        real_step = torch.optim.SGD.step
        seen: set[int] = set()

        def step(opt, *args, **kwargs):
            if id(opt) not in seen:  # the first step of a training: the buffers as loaded
                seen.add(id(opt))
                self.calls[-1]["first_buffers"] = {
                    id(p): opt.state[p]["momentum_buffer"].clone()
                    for p in opt.param_groups[0]["params"]
                    if "momentum_buffer" in opt.state[p]
                }
            return real_step(opt, *args, **kwargs)

        monkeypatch.setattr(torch.optim.SGD, "step", step)
        monkeypatch.setattr(lottery_mod, "train_supervised", self)

    def __call__(self, model, *args, **kwargs):
        self.calls.append(
            {
                "model": model,
                "kwargs": dict(kwargs),
                "start": {k: v.detach().clone() for k, v in masked_state_dict(model).items()},
            }
        )
        return train_supervised(model, *args, **kwargs)


def reference_snapshot(
    start: nn.Module, data: Dataset, cfg: SupervisedConfig, k: int
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(weights, momentum buffer by parameter name) after step k of a plain dense training of a copy
    of ``start``; the optimiser is found through SGD.step and its state mapped by parameter identity."""
    model = copy.deepcopy(start)
    opts, out = [], {}
    real_step = torch.optim.SGD.step

    def step(opt, *args, **kwargs):
        opts.append(opt)
        return real_step(opt, *args, **kwargs)

    def grab(s, m):
        if s == k:
            out["weights"] = {key: v.clone() for key, v in m.state_dict().items()}
            out["buffers"] = {n: opts[-1].state[p]["momentum_buffer"].clone() for n, p in m.named_parameters()}

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.optim.SGD, "step", step)
        train_supervised(model, data, cfg, on_step=grab)
    return out["weights"], out["buffers"]


def clean(name: str) -> str:
    return name.replace("parametrizations.", "").replace(".original", "")


def test_step_rewind_restores_masked_optimizer_state_and_continues_schedule(
    data: Dataset, tmp_path, monkeypatch
) -> None:
    start = tiny_model(seed=6)
    cfg = CFG.replace(epochs=2, momentum=0.9, lr=0.1)  # 6 steps
    ref_weights, ref_buffers = reference_snapshot(start, data, cfg, 2)
    spy = ArgumentTrainer(monkeypatch)
    path = tmp_path / "a.h5"
    ds = lottery(
        start,
        data,
        levels=2,
        cfg=cfg,
        rewind="step",
        rewind_step=2,
        rewind_optimizer=True,
        store=path,
        device="cpu",
        progress=False,
    )
    assert len(spy.calls) == 2
    assert ds.attrs["rewind_optimizer"] == 1 and "continue" in ds.attrs["rewind_step_schedule"]
    level0, level1 = spy.calls
    assert level0["kwargs"]["start_step"] == 0 and level0["kwargs"]["optimizer_state"] is None
    assert level0["kwargs"]["snapshot_step"] == 2
    kw = level1["kwargs"]
    assert kw["start_step"] == 2 and kw["snapshot_step"] is None
    store = Store(path)
    masks = {k: m != 0 for k, m in store.load_masks("lottery/step/01").items()}
    assert all(int((~m).sum()) >= 1 for m in masks.values())
    # level 1 starts from the step-2 weights under its mask
    for k, v in ref_weights.items():
        expected = v * masks[k] if k in masks else v
        assert torch.equal(level1["start"][k], expected), k
    # with masks as parametrizations the parameter order differs from the dense model's ...
    model = level1["model"]
    names = [clean(n) for n, _ in model.named_parameters()]
    assert names != [n for n, _ in start.named_parameters()] and sorted(names) == sorted(ref_buffers)
    # ... and the optimiser state handed over follows the masked model's order, masked entries zero
    state = kw["optimizer_state"]["state"]
    assert sorted(state) == list(range(len(names)))
    for i, name in enumerate(names):
        expected = ref_buffers[name] * masks[name] if name in masks else ref_buffers[name]
        assert torch.equal(state[i]["momentum_buffer"], expected), name
    # the optimiser really holds these buffers, on the right parameters, at its first step
    held = level1["first_buffers"]
    for n, p in model.named_parameters():
        name = clean(n)
        expected = ref_buffers[name] * masks[name] if name in masks else ref_buffers[name]
        assert torch.equal(held[id(p)], expected), name
        if name in masks:
            assert bool((held[id(p)][~masks[name]] == 0).all()), name
    # the schedule continued: level 1 took the remaining 4 steps
    _, attrs = store.load_state("lottery/step/01")
    assert attrs["start_step"] == 2 and attrs["steps"] == 4
    saved, meta = store.load_state_group("lottery/step/rewind")
    assert meta["step"] == 2 and set(saved) == {f"momentum_buffer/{n}" for n in ref_buffers}
    assert all(torch.equal(saved[f"momentum_buffer/{n}"], b) for n, b in ref_buffers.items())


def test_step_rewind_with_optimizer_resumes_from_the_store(data: Dataset, tmp_path, monkeypatch) -> None:
    start = tiny_model(seed=8)
    kw = dict(
        cfg=CFG.replace(momentum=0.9), rewind="step", rewind_step=1, rewind_optimizer=True, device="cpu", progress=False
    )
    spy = ArgumentTrainer(monkeypatch)
    first = lottery(start, data, levels=2, store=tmp_path / "a.h5", **kw)
    spy.calls.clear()
    resumed = lottery(start, data, levels=3, store=tmp_path / "a.h5", **kw)
    assert len(spy.calls) == 1  # level 2 only: level 0's snapshot comes from the store
    resumed_state = spy.calls[0]["kwargs"]["optimizer_state"]
    assert spy.calls[0]["kwargs"]["start_step"] == 1 and resumed_state is not None
    spy.calls.clear()
    straight = lottery(start, data, levels=3, store=tmp_path / "b.h5", **kw)
    straight_state = spy.calls[2]["kwargs"]["optimizer_state"]
    assert resumed_state["state"].keys() == straight_state["state"].keys()
    assert all(
        torch.equal(resumed_state["state"][i]["momentum_buffer"], v["momentum_buffer"])
        for i, v in straight_state["state"].items()
    )
    assert same_except_start_time(resumed.isel(level=slice(0, 2)), first)
    for var in ("best_accuracy", "final_accuracy", "final_loss"):
        np.testing.assert_array_equal(straight[var].values, resumed[var].values)
    with pytest.raises(ValueError, match="rewind_optimizer"):
        lottery(start, data, levels=3, store=tmp_path / "a.h5", **{**kw, "rewind_optimizer": False})


def test_rewind_optimizer_has_no_effect_for_start_and_init(data: Dataset, monkeypatch) -> None:
    seen = []

    def fake(model, data, cfg, **kw):
        seen.append((kw["start_step"], kw["optimizer_state"]))
        return {"test_accuracy": 0.5, "best_test_accuracy": 0.5, "test_loss": 1.0, "steps": 3}

    monkeypatch.setattr(lottery_mod, "train_supervised", fake)
    ds = lottery(
        tiny_model(),
        data,
        levels=2,
        cfg=CFG,
        rewind=["start", "init"],
        rewind_optimizer=True,
        device="cpu",
        progress=False,
    )
    assert seen == [(0, None)] * 4  # fresh optimiser and the whole recipe at every level
    assert ds.attrs["rewind_optimizer"] == 1
