"""Lottery tickets: iterative magnitude pruning (IMP) with rewinding, and its baselines.

``lottery(start, data, levels=5, prune_fraction=0.2, rewind="start")`` trains ``start`` with
labels (level 0, dense), prunes ``round(0.2 * remaining)`` of the prunable weights with the
smallest magnitude over the whole network, resets the survivors to the rewind target, trains
again (level 1), and so on. It returns an ``xarray.Dataset`` of best and final test accuracy per
level; with a ``store`` every trained level is checkpointed and a later call resumes.

Rewind targets (``rewind``; a list runs one IMP sequence per target):
- ``"start"``: the given checkpoint (e.g. a distilled student, no labels used).
- ``"init"``: a fresh random init of the same architecture drawn with ``seed`` (Frankle et al.'s
  "epoch 0" rewinding; level 0 then also trains from that init).
- ``"step"``: the weights after ``rewind_step`` optimiser steps of level 0's training from
  ``start``. Later levels continue the recipe from step ``rewind_step`` to its end, as Frankle et
  al. do: the learning-rate schedule, data order and augmentation are those of steps k+1, k+2, ...
  of an uninterrupted run (``train_supervised(start_step=k)``), so each later level takes
  ``total - k`` steps. With ``rewind_optimizer=True`` they also start from level 0's optimiser
  state at step k (SGD momentum buffers, pruned entries zeroed); otherwise from a fresh optimiser.
  For ``"start"`` and ``"init"`` the rewind point is before any step, where the optimiser state is
  the fresh one, so ``rewind_optimizer`` changes nothing there.

Baselines (``baselines``), at the same number of remaining weights per level:
- ``"random_prune"``: a uniformly random mask over all prunable weights (nested from level to
  level), weights rewound to the same target, then trained as IMP's level (for ``"step"``: from
  step k, with the rewound optimiser state when asked). Its level 0 is IMP's (same run).
- ``"random_reinit"``: IMP's mask with a fresh random init (drawn with ``seed + 1``), then
  trained with the whole recipe and a fresh optimiser; its level 0 is the dense network trained
  from that init.

Store layout (names of `distill.store.Store.save_module`): ``lottery/<rewind>/<level:02d>``
(IMP, trained, masks applied, uint8 masks beside it, accuracies in attrs),
``lottery/<rewind>/<baseline>/<level:02d>``, ``lottery/<rewind>/rewind`` (the rewind target for
``init`` and ``step``); for ``step`` the optimiser state at the rewind point is saved with
`distill.store.Store.save_state` as ``lottery/step/rewind`` (tensors named
``<state key>/<parameter name>``, e.g. ``momentum_buffer/head.weight``), so a resumed run needs
no new level 0. The returned Dataset is also written as result ``lottery``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import nn
from tqdm.auto import tqdm

from distill.config import SupervisedConfig
from distill.device import resolve_device
from distill.options import with_config
from distill.provenance import stamp
from distill.schema import result_dataset
from distill.store import Store
from distill.supervised import check_classifier, fit_head, steps_per_epoch, with_classifier
from landscape.configs import LotteryConfig
from landscape.lottery_levels import (  # noqa: F401 - the constants are also importable from here
    RANDOM_PRUNE_STRIDE,
    LotteryRun,
    LotterySettings,
)
from landscape.pruning import prunable_names, prune_count
from landscape.refs import load_ref
from landscape.units import open_store

__all__ = ["lottery", "REWINDS", "BASELINES", "remaining_counts"]

REWINDS = ("start", "init", "step")
BASELINES = ("random_prune", "random_reinit")
PRUNING_DEFINITION = (
    "global magnitude pruning: each level removes exactly round(prune_fraction * remaining) "
    "of the unpruned prunable weights with the smallest |w| over all prunable tensors together "
    "(ties: lower position in the concatenation of the flattened tensors first)"
)


def remaining_counts(total: int, levels: int, fraction: float) -> list[int]:
    """Unpruned weights at levels 0..levels-1: ``n_0 = total``, ``n_l = n_{l-1} - round(fraction * n_{l-1})``."""
    counts = [int(total)]
    for _ in range(1, levels):
        counts.append(counts[-1] - prune_count(counts[-1], fraction))
    return counts


# ----------------------------------------------------------------------------- argument handling
def _rewinds(rewind: str | Sequence[str], rewind_step: int | None) -> list[str]:
    items = [rewind] if isinstance(rewind, str) else list(rewind)
    if not items:
        raise ValueError("rewind is empty: pass 'start', 'init', 'step' or a list of them")
    for r in items:
        if r not in REWINDS:
            raise ValueError(f"rewind={r!r} is not valid: choose from {', '.join(REWINDS)}")
    if len(set(items)) != len(items):
        raise ValueError("rewind lists a target twice: pass each once")
    if "step" in items and (rewind_step is None or isinstance(rewind_step, bool) or int(rewind_step) < 0):
        raise ValueError(f"rewind='step' needs rewind_step, a number of optimiser steps >= 0 (got {rewind_step!r})")
    return items


def _baselines(baselines: str | Sequence[str] | None) -> list[str]:
    items = [] if baselines is None else [baselines] if isinstance(baselines, str) else list(baselines)
    for b in items:
        if b not in BASELINES:
            raise ValueError(f"baseline {b!r} is not valid: choose from {', '.join(BASELINES)} (or none)")
    return [b for b in BASELINES if b in items]


def _describe(info: Mapping[str, Any]) -> dict[str, Any]:
    """Provenance attrs of the start from `landscape.refs.load_ref`'s info."""
    return {"start": info["source"], **{f"start_{k}": info[k] for k in ("store", "epoch", "name") if k in info}}


def _fingerprint(model: nn.Module) -> str:
    """SHA-256 of the state_dict (keys and bytes): identifies the start of a stored run."""
    h = hashlib.sha256()
    for k, t in model.state_dict().items():
        h.update(k.encode())
        h.update(
            t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()
            if t.dim()
            else t.detach().cpu().reshape(1).view(torch.uint8).numpy().tobytes()
        )
    return h.hexdigest()[:16]


def _classifier(
    model: nn.Module, data: Any, cfg: SupervisedConfig, seed: int, dev: torch.device
) -> tuple[nn.Module, str]:
    """``model`` with a linear classifier for ``data``'s classes (a fresh head drawn with ``seed``
    and fitted for ``cfg.head_epochs`` when it has none), and how the head was made."""
    try:
        check_classifier(model, data.num_classes)
        return model, "given"
    except ValueError:
        model = with_classifier(model, data.num_classes, seed=seed).to(dev)
        classifier = f"with_classifier(num_classes={data.num_classes}, seed={seed})"
        if cfg.head_epochs:  # the rewind target holds the fitted head (the reference code's pre_epochs_clf)
            fit_head(model, data, cfg.head_epochs, seed=seed, device=dev)
            classifier += f", head fitted {cfg.head_epochs} epochs"
        return model, classifier


def _check_rewind_step(model: nn.Module, data: Any, cfg: SupervisedConfig, rewind_step: int | None) -> None:
    if rewind_step is None:
        return
    per_epoch = steps_per_epoch(model, len(data.train.labels), cfg.batch_size)
    if rewind_step > cfg.epochs * per_epoch:
        raise ValueError(
            f"rewind_step={rewind_step} exceeds the {cfg.epochs * per_epoch} optimiser steps of one "
            f"training run ({cfg.epochs} epochs x {per_epoch}): pass a smaller rewind_step or "
            f"more epochs"
        )


# ----------------------------------------------------------------------------- public entry point
@with_config(LotteryConfig)
def lottery(
    start: Any,
    data: Any,
    *,
    config: LotteryConfig,
    store: Store | str | Path | None = None,
    progress: bool | None = None,
) -> xr.Dataset:
    """Iterative magnitude pruning with rewinding from ``start``; see the module docstring.

    Args:
        start: a module or a ``(store, epoch | name)`` reference (`distill.store.as_module`).
            Without a linear classifier for ``data``'s classes, a fresh one is put on with
            `distill.supervised.with_classifier` (drawn with ``seed``).
        data: a `distill.data.Dataset`.
        store: a Store or path; created (kind "lottery") when missing. Every trained level is saved
            with its masks; a later call continues at the first level missing from the store.

    Returns:
        A Dataset over (rewind, level), with a ``method`` dim ("imp", baselines...) when
        baselines are asked for: best_accuracy, final_accuracy (test, fractions), final_loss (nats);
        remaining_weights over level; coords level and sparsity (fraction of prunable weights left).
        Select methods with a dict, ``ds.sel({"method": "imp"})``: ``sel``'s own keyword ``method``
        would take ``ds.sel(method="imp")``.
    """
    c = config
    levels, prune_fraction, prunable, rewind_step, seed = c.levels, c.prune_fraction, c.prunable, c.rewind_step, c.seed
    rewinds = _rewinds(c.rewind, rewind_step)
    step = int(rewind_step) if "step" in rewinds and rewind_step is not None else None
    methods = _baselines(c.baselines)
    if isinstance(levels, bool) or not isinstance(levels, (int, np.integer)) or levels < 1:
        raise ValueError(f"levels={levels!r} must be an integer >= 1 (level 0 is the dense network)")
    if not 0.0 < float(prune_fraction) < 1.0:
        raise ValueError(f"prune_fraction={prune_fraction!r} must lie strictly between 0 and 1")
    cfg = c.cfg
    dev = resolve_device(c.device)
    model, ref_info = load_ref(start, dev)
    fingerprint = _fingerprint(model)
    model, classifier = _classifier(model, data, cfg, seed, dev)
    model.requires_grad_(True)
    _check_rewind_step(model, data, cfg, step)
    names = prunable_names(model, prunable)
    total = sum(model.state_dict()[k].numel() for k in names)
    settings = LotterySettings(
        cfg,
        prunable if isinstance(prunable, str) else list(prunable),
        names,
        remaining_counts(total, int(levels), float(prune_fraction)),
        float(prune_fraction),
        step,
        bool(c.rewind_optimizer),
        bool(c.rewind_rng),
        methods,
        int(seed),
        classifier,
        fingerprint,
    )
    recorded = {k: v for k, v in settings.recorded().items() if v is not None}
    st = None if store is None else open_store(store, recorded, "lottery", {"seed": int(seed)})
    n_train = len(rewinds) * int(levels) * (1 + len(methods)) - (len(rewinds) if "random_prune" in methods else 0)
    bar = tqdm(total=n_train, desc="lottery", unit="run", disable=None if progress is None else not progress)
    runner = LotteryRun(model, data, settings, st, dev, progress, bar)
    try:
        rows = {r: runner.run(r, int(levels)) for r in rewinds}
    finally:
        bar.close()
    ds = _dataset(rows, rewinds, methods, settings.counts)
    ds.attrs.update(_provenance(settings, _describe(ref_info), dev, st))
    if st is not None:
        st.write_result("lottery", ds)
    return ds


def _dataset(
    rows: dict[str, dict[str, list[dict[str, float]]]], rewinds: list[str], methods: list[str], counts: list[int]
) -> xr.Dataset:
    levels = len(counts)
    with_method = bool(methods)
    all_methods = ["imp", *methods]
    dims = ("rewind", "method", "level") if with_method else ("rewind", "level")

    def array(key: str) -> np.ndarray:
        a = np.array(
            [[[rows[r][m][lv][key] for lv in range(levels)] for m in all_methods] for r in rewinds], dtype=np.float64
        )
        return a if with_method else a[:, 0, :]

    data_vars: dict[str, Any] = {k: (dims, array(k)) for k in ("best_accuracy", "final_accuracy", "final_loss")}
    data_vars["remaining_weights"] = (("level",), np.asarray(counts, dtype=np.int64))
    coords: dict[str, Any] = {
        "rewind": ("rewind", np.asarray(rewinds, dtype=object)),
        "level": ("level", np.arange(levels, dtype=np.int64)),
        "sparsity": ("level", np.asarray(counts, dtype=np.float64) / counts[0]),
    }
    if with_method:
        coords["method"] = ("method", np.asarray(all_methods, dtype=object))
    return result_dataset("lottery", data_vars, coords)


def _provenance(
    settings: LotterySettings, info: dict[str, Any], device: torch.device, store: Store | None
) -> dict[str, Any]:
    attrs: dict[str, Any] = {k: (v if isinstance(v, (str, int, float)) else str(v)) for k, v in info.items()}
    attrs.update(
        {
            "analysis": "lottery",
            "pruning": PRUNING_DEFINITION,
            "prunable": settings.prunable if isinstance(settings.prunable, str) else "names",
            "prunable_names": json.dumps(settings.names),
            "prune_fraction": settings.fraction,
            "rewind_step": -1 if settings.rewind_step is None else settings.rewind_step,
            "rewind_optimizer": int(settings.rewind_optimizer),
            "rewind_rng": int(settings.rewind_rng),
            "rewind_optimizer_scope": (
                "rewind='step' only: levels after the rewind start from level 0's SGD momentum "
                "buffers at rewind_step, entries of pruned weights zeroed; 'start' and 'init' "
                "rewind to before any step, where the optimiser state is the fresh one"
            ),
            "rewind_step_schedule": (
                "levels after a step rewind continue the recipe from step rewind_step to its end "
                "(learning-rate schedule, data order and augmentation of an uninterrupted run); "
                "level 0, random_reinit and the other rewind targets train the whole recipe"
            ),
            "supervised_config": json.dumps(settings.cfg.to_dict(), sort_keys=True),
            "classifier": settings.classifier,
            "seed": settings.seed,
            "reinit_seed": settings.seed + 1,
            "random_prune_seeds": f"{RANDOM_PRUNE_STRIDE} * seed + level",
            "data_seed": int(settings.cfg.data_seed),
            "aug_seed": int(settings.cfg.aug_seed),
            "start_fingerprint": settings.fingerprint,
        }
    )
    if store is not None:
        attrs["store"] = str(store.path)
    recipe = {k: v for k, v in attrs.items() if k not in ("store",)}
    stamp(
        attrs,
        recipe,
        kind="lottery",
        device=device,
        precision=settings.cfg.precision if device.type == "cuda" else "fp32",
    )
    return attrs
