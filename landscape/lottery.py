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

import copy
import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import Tensor, nn
from tqdm.auto import tqdm

from distill.config import SupervisedConfig
from distill.device import resolve_device
from distill.options import with_config
from distill.provenance import stamp
from distill.store import Store
from distill.supervised import check_classifier, fit_head, steps_per_epoch, train_supervised, with_classifier
from landscape.configs import LotteryConfig
from landscape.pruning import (
    _clean_name,
    apply_masks,
    full_masks,
    global_magnitude_prune,
    masked_state_dict,
    prunable_names,
    prune_count,
    random_prune,
)
from landscape.refs import load_ref

__all__ = ["lottery", "REWINDS", "BASELINES", "remaining_counts"]

REWINDS = ("start", "init", "step")
BASELINES = ("random_prune", "random_reinit")
PRUNING_DEFINITION = (
    "global magnitude pruning: each level removes exactly round(prune_fraction * remaining) "
    "of the unpruned prunable weights with the smallest |w| over all prunable tensors together "
    "(ties: lower position in the concatenation of the flattened tensors first)"
)
_RANDOM_PRUNE_STRIDE = 1000  # random_prune at level l draws with seed * stride + l
STEP_SCHEDULE = "continued from rewind_step"  # how levels after a step rewind train (a stored setting)
_STEP_SETTINGS = ("rewind_step", "rewind_optimizer", "step_schedule")  # settings that only matter for 'step'


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


def _fresh(template: nn.Module, seed: int) -> nn.Module:
    """A new random init of ``template``'s architecture drawn with ``seed``, on its device."""
    from distill.init import fresh_like

    spec = getattr(template, "spec", None)
    if spec is None:
        raise ValueError(
            "rewind='init' and the random_reinit baseline need a model built with distill.build_model (it has no .spec)"
        )
    return fresh_like(template, seed)


def _clone_state(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in state.items()}


# ----------------------------------------------------------------------------- optimiser state by name
# train_supervised's optimiser numbers the trainable parameters in model.parameters() order. Masks
# registered as parametrizations move a weight to "<module>.parametrizations.weight.original" and
# after the module's own parameters, so that order differs between the dense level-0 model and a
# masked one; the state is therefore kept by the (clean) parameter name in between.
OptimizerByName = tuple[dict[str, Tensor], dict[str, Any]]  # ({"<key>/<name>": tensor}, meta)


def _trainable(model: nn.Module) -> list[tuple[str, Tensor]]:
    """(clean name, parameter) in the order train_supervised hands them to its optimiser."""
    return [(_clean_name(n), p) for n, p in model.named_parameters() if p.requires_grad]


def _optimizer_by_name(model: nn.Module, state: Mapping[str, Any]) -> OptimizerByName:
    """An SGD ``state_dict()`` of an optimiser over ``model``'s trainable parameters, keyed by name."""
    named = _trainable(model)
    ids = [i for g in state["param_groups"] for i in g["params"]]
    if len(ids) != len(named):
        raise ValueError(
            f"the optimiser state covers {len(ids)} parameters, the model trains {len(named)}: "
            f"pass the state of an optimiser over this model"
        )
    tensors = {}
    for i, (name, _) in zip(ids, named):
        for key, v in state["state"].get(i, {}).items():
            if isinstance(v, Tensor):
                tensors[f"{key}/{name}"] = v.detach().clone()
    groups = [{k: v for k, v in g.items() if k != "params"} for g in state["param_groups"]]
    return tensors, {"param_groups": groups}


def _optimizer_for(model: nn.Module, saved: OptimizerByName, masks: Mapping[str, Tensor] | None) -> dict[str, Any]:
    """The SGD ``state_dict()`` for ``model`` (masked or not) from state kept by name; entries of
    per-parameter tensors at pruned positions are set to zero."""
    tensors, meta = saved
    by_name: dict[str, dict[str, Tensor]] = {}
    for full, t in tensors.items():
        key, _, name = full.partition("/")
        by_name.setdefault(name, {})[key] = t
    named = _trainable(model)
    unknown = set(by_name) - {n for n, _ in named}
    if unknown:
        raise ValueError(
            f"the rewound optimiser state names tensors the model does not train "
            f"({', '.join(sorted(unknown)[:3])}): use a store made for this model"
        )
    state: dict[int, dict[str, Tensor]] = {}
    for i, (name, p) in enumerate(named):
        entry = {}
        for key, t in by_name.get(name, {}).items():
            t = t.to(p.device, p.dtype)
            if masks is not None and name in masks and tuple(t.shape) == tuple(p.shape):
                t = t * (masks[name].to(p.device) != 0).to(p.dtype)
            entry[key] = t
        if entry:
            state[i] = entry
    groups = meta.get("param_groups") or [{}]
    return {"state": state, "param_groups": [{**groups[0], "params": list(range(len(named)))}]}


# ----------------------------------------------------------------------------- the runner
class _Lottery:
    """State shared by the IMP runs of one `lottery` call."""

    def __init__(
        self,
        template: nn.Module,
        data: Any,
        cfg: SupervisedConfig,
        names: list[str],
        counts: list[int],
        fraction: float,
        rewind_step: int | None,
        rewind_optimizer: bool,
        rewind_rng: bool,
        baselines: list[str],
        store: Store | None,
        settings: dict[str, Any],
        device: torch.device,
        progress: bool | None,
        seed: int,
        bar: Any,
    ) -> None:
        self.template, self.data, self.cfg, self.names = template, data, cfg, names
        self.counts, self.fraction, self.rewind_step, self.rewind_rng = counts, fraction, rewind_step, rewind_rng
        self.rewind_optimizer = rewind_optimizer
        self.baselines, self.store, self.settings, self.device = baselines, store, settings, device
        self.progress, self.seed, self.bar = progress, seed, bar
        self.start_state = _clone_state(template.state_dict())
        self._init_state: dict[str, Tensor] | None = None
        self._reinit_state: dict[str, Tensor] | None = None
        self._shared: dict[Any, Any] = {}  # trainings shared between rewind targets within this call

    # ---------------------------------------------------------------- pieces
    def init_state(self) -> dict[str, Tensor]:
        if self._init_state is None:
            self._init_state = _clone_state(_fresh(self.template, self.seed).state_dict())
        return self._init_state

    def reinit_state(self) -> dict[str, Tensor]:
        if self._reinit_state is None:
            self._reinit_state = _clone_state(_fresh(self.template, self.seed + 1).state_dict())
        return self._reinit_state

    def level_cfg(self, level: int) -> SupervisedConfig:
        if self.rewind_rng:
            return self.cfg
        return self.cfg.replace(data_seed=self.cfg.data_seed + level, aug_seed=self.cfg.aug_seed + level)

    def full(self) -> dict[str, Tensor]:
        return full_masks(self.template, self.names)

    def train(
        self,
        weights: Mapping[str, Tensor],
        masks: Mapping[str, Tensor] | None,
        level: int,
        *,
        capture: int | None = None,
        start_step: int = 0,
        optimizer: OptimizerByName | None = None,
    ) -> tuple[dict[str, float], dict[str, Tensor], tuple[dict[str, Tensor], OptimizerByName] | None]:
        """Train a copy of the template holding ``weights`` under ``masks`` (None: dense), from step
        ``start_step`` of the recipe, with ``optimizer`` state (masked like the weights) or a fresh one.

        Returns:
            (metrics, trained state with masks applied, (weights, optimiser state by name) after
            ``capture`` steps or None).
        """
        model = copy.deepcopy(self.template)
        model.load_state_dict(weights)
        if masks is not None:
            apply_masks(model, masks)
        opt_state = None if optimizer is None else _optimizer_for(model, optimizer, masks)
        res = train_supervised(
            model,
            self.data,
            self.level_cfg(level),
            device=self.device,
            progress=self.progress,
            start_step=start_step,
            optimizer_state=opt_state,
            snapshot_step=capture,
        )
        if self.bar is not None:
            self.bar.update(1)
        captured = None
        if capture is not None:  # only asked of dense trainings, whose state_dict keys are the clean ones
            snap = res["snapshot"]
            captured = (_clone_state(snap["model"]), _optimizer_by_name(model, snap["optimizer"]))
        metrics = {
            "best_accuracy": float(res["best_test_accuracy"]),
            "final_accuracy": float(res["test_accuracy"]),
            "final_loss": float(res["test_loss"]),
            "steps": int(res["steps"]) - start_step,
            "start_step": start_step,
        }
        return metrics, _clone_state(masked_state_dict(model)), captured

    def rewound(self, target: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``target`` with the masked entries of the prunable tensors set to zero."""
        out = dict(target)
        for k, m in masks.items():
            out[k] = target[k] * (m.to(target[k].device) != 0).to(target[k].dtype)
        return out

    # ---------------------------------------------------------------- store access
    @property
    def held(self) -> Store:
        """The store, where the caller knows there is one (something was found in it)."""
        if self.store is None:
            raise RuntimeError("this lottery run keeps no store")
        return self.store

    def stored(self, name: str) -> dict[str, Any] | None:
        """Attrs of the complete module ``name`` in the store, or None."""
        if self.store is None or name not in self._names:
            return None
        if name not in self._attrs:
            self._attrs[name] = self.store.load_state(name)[1]
        return self._attrs[name]

    def refresh(self) -> None:
        self._names = set(self.store.names("lottery/")) if self.store is not None else set()
        self._attrs: dict[str, dict[str, Any]] = {}

    def load(self, name: str) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """(trained state on the device, bool masks in prunable order) of stored module ``name``."""
        state, _ = self.held.load_state(name)
        masks = self.held.load_masks(name)
        if set(masks) != set(self.names):
            raise ValueError(
                f"{self.held.path}: '{name}' was pruned over other tensors than prunable selects "
                f"now: pass the same prunable as before or use a new store"
            )
        own = self.template.state_dict()
        state = {k: v.to(self.device, own[k].dtype) for k, v in state.items()}
        return state, {k: masks[k].to(self.device) != 0 for k in self.names}

    def save(
        self, name: str, state: Mapping[str, Tensor], masks: Mapping[str, Tensor] | None, attrs: Mapping[str, Any]
    ) -> None:
        if self.store is None:
            return
        model = copy.deepcopy(self.template)
        model.load_state_dict(state)
        settings = self.settings_for(str(attrs["rewind"]))
        self.store.save_module(
            name,
            model,
            {**attrs, "settings": json.dumps(settings, sort_keys=True)},
            masks=None if masks is None else {k: m.to(torch.uint8) for k, m in masks.items()},
        )

    def settings_for(self, rewind: str) -> dict[str, Any]:
        """What must match for a stored run of ``rewind`` to be continued."""
        out = {k: v for k, v in self.settings.items() if k not in _STEP_SETTINGS}
        if rewind == "step":
            out.update({k: self.settings[k] for k in _STEP_SETTINGS})
        return out

    def check_settings(self, rewind: str, name: str) -> None:
        attrs = self.stored(name)
        if attrs is None:
            return
        old = json.loads(attrs.get("settings", "{}"))
        if rewind == "step" and "step_schedule" not in old:
            raise ValueError(
                f"{self.held.path}: '{name}' comes from a version whose later levels restarted the "
                f"schedule at step 0 after a step rewind: use a new store"
            )
        for key, value in self.settings_for(rewind).items():
            if key in old and old[key] != value:
                raise ValueError(
                    f"{self.held.path}: '{name}' was made with {key}={old[key]!r}, this call asks "
                    f"{value!r}: pass the same settings to resume, or use a new store"
                )

    # ---------------------------------------------------------------- one IMP sequence
    def run(self, rewind: str, levels: int) -> dict[str, list[dict[str, float]]]:
        """Rows (metrics per level) of IMP and each baseline for rewind target ``rewind``."""
        self.refresh()
        prefix = f"lottery/{rewind}"
        self.check_settings(rewind, f"{prefix}/00")
        done = 0
        while done < levels and self.stored(f"{prefix}/{done:02d}") is not None:
            done += 1
        origin = self.init_state() if rewind == "init" else self.start_state
        optimizer: OptimizerByName | None = None  # optimiser state at the rewind point (step rewinds only)
        target: Mapping[str, Tensor]  # the rewind target
        if rewind in ("init", "step") and done:
            target = self.load_target(f"{prefix}/rewind")
            if rewind == "step" and self.rewind_optimizer:
                optimizer = self.load_optimizer(f"{prefix}/rewind")
        else:
            target = origin  # 'step': replaced by the point level 0 captures, before any use
        start_step = int(self.rewind_step) if rewind == "step" and self.rewind_step is not None else 0
        rows: dict[str, list[dict[str, float]]] = {m: [] for m in ("imp", *self.baselines)}
        prev: tuple[dict[str, Tensor], dict[str, Tensor]] | None = None  # (trained state, masks) of last level
        random_masks = self.full()
        for level in range(levels):
            name = f"{prefix}/{level:02d}"
            if level < done:
                attrs = self.stored(name)
                assert attrs is not None  # level < done: found in the store
                if int(attrs["remaining_weights"]) != self.counts[level]:
                    raise ValueError(
                        f"{self.held.path}: '{name}' keeps {attrs['remaining_weights']} weights, "
                        f"this call expects {self.counts[level]}: use the same settings or a new store"
                    )
                rows["imp"].append(
                    {k: float(attrs[k]) for k in ("best_accuracy", "final_accuracy", "final_loss", "steps")}
                )
                prev = None  # loaded lazily when needed
                masks = None
            else:
                if level == 0:
                    masks = self.full()
                    metrics, trained, captured = self.train_origin(rewind, origin)
                    if rewind == "step":
                        assert captured is not None  # train_origin captures the step-rewind point
                        target, snapshot_optimizer = captured
                        optimizer = snapshot_optimizer if self.rewind_optimizer else None
                    if rewind in ("init", "step"):
                        self.save(f"{prefix}/rewind", target, None, {"rewind": rewind, "step": start_step})
                    if rewind == "step" and self.store is not None:
                        self.store.save_state(
                            f"{prefix}/rewind", snapshot_optimizer[0], {**snapshot_optimizer[1], "step": start_step}
                        )
                else:
                    if prev is None:
                        prev = self.load(f"{prefix}/{level - 1:02d}")
                    masks = global_magnitude_prune(prev[0], prev[1], self.fraction)
                    metrics, trained, _ = self.train(
                        self.rewound(target, masks), masks, level, start_step=start_step, optimizer=optimizer
                    )
                self.save(name, trained, masks, self.attrs(rewind, "imp", level, metrics))
                rows["imp"].append(metrics)
                prev = (trained, masks)
            if level:
                random_masks = random_prune(random_masks, self.fraction, seed=self.seed * _RANDOM_PRUNE_STRIDE + level)
            for method in self.baselines:
                rows[method].append(
                    self.baseline(
                        rewind, method, level, target, masks, random_masks, rows["imp"][0], start_step, optimizer
                    )
                )
        return rows

    def train_origin(self, rewind: str, origin: Mapping[str, Tensor]) -> tuple[dict, dict, tuple | None]:
        """Level 0 (dense) from ``origin``; shared by 'start' and 'step', which start alike."""
        key = "init" if rewind == "init" else "start"
        wants = self.rewind_step if rewind == "step" else None
        hit = self._shared.get(key)
        if hit is not None and (wants is None or hit[2] is not None):
            return hit
        result = self.train(origin, None, 0, capture=self.rewind_step if key == "start" else None)
        self._shared[key] = result
        return result

    def load_target(self, name: str) -> dict[str, Tensor]:
        if self.stored(name) is None:
            raise ValueError(
                f"{self.held.path} lacks '{name}', the rewind target of its completed levels: use a new store"
            )
        state, _ = self.held.load_state(name)
        own = self.template.state_dict()
        return {k: v.to(self.device, own[k].dtype) for k, v in state.items()}

    def load_optimizer(self, name: str) -> OptimizerByName:
        got = self.held.load_state_group(name)
        if got is None:
            raise ValueError(
                f"{self.held.path} lacks the optimiser state '{name}' that rewind_optimizer=True needs: use a new store"
            )
        tensors, meta = got
        return {k: v.to(self.device) for k, v in tensors.items()}, meta

    def baseline(
        self,
        rewind: str,
        method: str,
        level: int,
        target: Mapping[str, Tensor],
        imp_masks: Mapping[str, Tensor] | None,
        random_masks: Mapping[str, Tensor],
        imp_level0: dict[str, float],
        start_step: int = 0,
        optimizer: OptimizerByName | None = None,
    ) -> dict[str, float]:
        """One level of ``method``. random_prune trains like IMP's level (from ``start_step``, with
        ``optimizer`` state masked like its weights); random_reinit, a fresh init, runs the whole
        recipe with a fresh optimiser."""
        if method == "random_prune" and level == 0:
            return dict(imp_level0)  # the dense network rewound to the target is IMP's level 0
        name = f"lottery/{rewind}/{method}/{level:02d}"
        attrs = self.stored(name)
        if attrs is not None:
            return {k: float(attrs[k]) for k in ("best_accuracy", "final_accuracy", "final_loss", "steps")}
        kw: dict[str, Any] = {}
        if method == "random_prune":
            masks = random_masks
            weights = self.rewound(target, masks)
            kw = {"start_step": start_step, "optimizer": optimizer}
        else:
            if imp_masks is None:
                imp_masks = self.load(f"lottery/{rewind}/{level:02d}")[1]
            masks = imp_masks
            weights = self.rewound(self.reinit_state(), masks)
        if level == 0 and ("reinit0" in self._shared):
            metrics, trained = self._shared["reinit0"]
        else:
            metrics, trained, _ = self.train(weights, masks if level else None, level, **kw)
            if level == 0:
                self._shared["reinit0"] = (metrics, trained)
        self.save(name, trained, masks, self.attrs(rewind, method, level, metrics))
        return metrics

    def attrs(self, rewind: str, method: str, level: int, metrics: Mapping[str, float]) -> dict[str, Any]:
        n = self.counts[level]
        return {
            "rewind": rewind,
            "method": method,
            "level": level,
            "remaining_weights": n,
            "sparsity": n / self.counts[0],
            **metrics,
        }


# ----------------------------------------------------------------------------- public entry point
@with_config(LotteryConfig)
def lottery(
    start: Any,
    data: Any,
    *,
    levels: int,
    prune_fraction: float,
    rewind: str | Sequence[str],
    prunable: str | Sequence[str],
    cfg: SupervisedConfig | None,
    rewind_step: int | None,
    rewind_optimizer: bool,
    baselines: str | Sequence[str] | None,
    device: str | torch.device,
    seed: int,
    rewind_rng: bool,
    store: Store | str | Path | None = None,
    progress: bool | None = None,
) -> xr.Dataset:
    """Iterative magnitude pruning with rewinding from ``start``; see the module docstring.

    Args:
        start: a module or a ``(store, epoch | name)`` reference (`distill.store.as_module`).
            Without a linear classifier for ``data``'s classes, a fresh one is put on with
            `distill.supervised.with_classifier` (drawn with ``seed``).
        data: a `distill.data.Dataset`. levels: number of trained levels, level 0 = dense.
        prune_fraction: fraction of the remaining prunable weights removed per level (0.2 gives
            100, 80, 64, 51.2, ... % remaining). prunable: "weights" (conv and linear weights,
            classifier included; Frankle et al.), "all" (every float parameter; the paper's code),
            or a list of state_dict names.
        cfg: the supervised recipe of every level (default: the paper's, ``SupervisedConfig()``, 160
            epochs per level, as ``rtt lottery``; ``SupervisedConfig.preset("cpu")`` trains 8).
        rewind: "start", "init", "step" or a list of them (one IMP run each); rewind_step: k for "step"
            (at most the recipe's number of steps). Levels after a step rewind continue the recipe
            from step k (schedule, data order, augmentation), as Frankle et al.
        rewind_optimizer: False (default, Frankle et al.): every level starts with a fresh optimiser.
            True: levels after a step rewind start from level 0's optimiser state at step k (SGD
            momentum buffers; entries of pruned weights zeroed). "start" and "init" rewind to a
            point before any step, whose optimiser state is the fresh one: there it has no effect.
        rewind_rng: True (default): every level replays the same data order and augmentation
            (``cfg``'s seeds); False: level l uses ``data_seed + l`` and ``aug_seed + l``.
        baselines: any of "random_prune", "random_reinit" (default none: each adds a training run per
            level, so the cost is that of one more IMP run).
        store: a Store or path; created (kind "lottery") when missing. Every trained level is saved
            with its masks; a later call continues at the first level missing from the store.
        seed: classifier head and "init" draw; ``seed + 1`` draws random_reinit's init;
            random_prune's level l draws with ``1000 * seed + l``.

    Returns:
        A Dataset over (rewind, level), with a ``method`` dim ("imp", baselines...) when
        baselines are asked for: best_accuracy, final_accuracy (test, fractions), final_loss (nats);
        remaining_weights over level; coords level and sparsity (fraction of prunable weights left).
        Select methods with a dict, ``ds.sel({"method": "imp"})``: ``sel``'s own keyword ``method``
        would take ``ds.sel(method="imp")``.
    """
    rewinds = _rewinds(rewind, rewind_step)
    rewind_step = int(rewind_step) if "step" in rewinds and rewind_step is not None else None
    methods = _baselines(baselines)
    if isinstance(levels, bool) or not isinstance(levels, (int, np.integer)) or levels < 1:
        raise ValueError(f"levels={levels!r} must be an integer >= 1 (level 0 is the dense network)")
    if not 0.0 < float(prune_fraction) < 1.0:
        raise ValueError(f"prune_fraction={prune_fraction!r} must lie strictly between 0 and 1")
    cfg = SupervisedConfig() if cfg is None else cfg
    dev = resolve_device(device)
    model, ref_info = load_ref(start, dev)
    info = _describe(ref_info)
    fingerprint = _fingerprint(model)
    try:
        check_classifier(model, data.num_classes)
        classifier = "given"
    except ValueError:
        model = with_classifier(model, data.num_classes, seed=seed).to(dev)
        classifier = f"with_classifier(num_classes={data.num_classes}, seed={seed})"
        if cfg.head_epochs:  # the rewind target holds the fitted head (the reference code's pre_epochs_clf)
            fit_head(model, data, cfg.head_epochs, seed=seed, device=dev)
            classifier += f", head fitted {cfg.head_epochs} epochs"
    model.requires_grad_(True)
    if rewind_step is not None:
        per_epoch = steps_per_epoch(model, len(data.train.labels), cfg.batch_size)
        if rewind_step > cfg.epochs * per_epoch:
            raise ValueError(
                f"rewind_step={rewind_step} exceeds the {cfg.epochs * per_epoch} optimiser steps of one "
                f"training run ({cfg.epochs} epochs x {per_epoch}): pass a smaller rewind_step or "
                f"more epochs"
            )
    names = prunable_names(model, prunable)
    total = sum(model.state_dict()[k].numel() for k in names)
    counts = remaining_counts(total, int(levels), float(prune_fraction))

    cfg_json = json.dumps({k: v for k, v in cfg.to_dict().items() if k != "device"}, sort_keys=True)
    settings = {
        "start_fingerprint": fingerprint,
        "prune_fraction": float(prune_fraction),
        "prunable": prunable if isinstance(prunable, str) else list(prunable),
        "supervised_config": cfg_json,
        "seed": int(seed),
        "rewind_step": rewind_step if "step" in rewinds else None,
        "rewind_optimizer": bool(rewind_optimizer),
        "step_schedule": STEP_SCHEDULE,
        "rewind_rng": bool(rewind_rng),
        "classifier": classifier,
    }
    st = _open_store(store, settings)

    n_train = len(rewinds) * int(levels) * (1 + len(methods)) - (len(rewinds) if "random_prune" in methods else 0)
    bar = tqdm(total=n_train, desc="lottery", unit="run", disable=None if progress is None else not progress)
    runner = _Lottery(
        model,
        data,
        cfg,
        names,
        counts,
        float(prune_fraction),
        rewind_step,
        bool(rewind_optimizer),
        bool(rewind_rng),
        methods,
        st,
        settings,
        dev,
        progress,
        int(seed),
        bar,
    )
    try:
        rows = {r: runner.run(r, int(levels)) for r in rewinds}
    finally:
        bar.close()

    ds = _dataset(rows, rewinds, methods, counts)
    ds.attrs.update(
        _provenance(
            info,
            prunable,
            names,
            prune_fraction,
            rewind_step,
            bool(rewind_optimizer),
            rewind_rng,
            cfg,
            seed,
            classifier,
            fingerprint,
            dev,
            st,
        )
    )
    if st is not None:
        st.write_result("lottery", ds)
    return ds


def _open_store(store: Store | str | Path | None, settings: dict[str, Any]) -> Store | None:
    if store is None:
        return None
    if isinstance(store, Store):
        return store if store.mode == "a" else Store(store.path, "a")
    path = Path(store)
    if path.exists():
        return Store(path, "a")
    return Store.create(
        path,
        {k: v for k, v in settings.items() if v is not None},
        kind="lottery",
        seeds={"seed": int(settings["seed"])},
    )


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

    desc = {
        "best_accuracy": ("best test accuracy over the evaluations of the level's training", "fraction"),
        "final_accuracy": ("test accuracy at the end of the level's training", "fraction"),
        "final_loss": ("test cross-entropy at the end of the level's training", "nats"),
    }
    data_vars: dict[str, Any] = {k: (dims, array(k), {"long_name": d, "units": u}) for k, (d, u) in desc.items()}
    data_vars["remaining_weights"] = (
        ("level",),
        np.asarray(counts, dtype=np.int64),
        {"long_name": "unpruned prunable weights", "units": "count"},
    )
    coords: dict[str, Any] = {
        "rewind": ("rewind", np.asarray(rewinds, dtype=object), {"long_name": "rewind target"}),
        "level": ("level", np.arange(levels, dtype=np.int64), {"long_name": "pruning level", "units": "1"}),
        "sparsity": (
            "level",
            np.asarray(counts, dtype=np.float64) / counts[0],
            {"long_name": "fraction of prunable weights remaining", "units": "fraction"},
        ),
    }
    if with_method:
        coords["method"] = ("method", np.asarray(all_methods, dtype=object), {"long_name": "pruning method"})
    return xr.Dataset(data_vars, coords=coords)


def _provenance(
    info: dict[str, Any],
    prunable: Any,
    names: list[str],
    fraction: float,
    rewind_step: int | None,
    rewind_optimizer: bool,
    rewind_rng: bool,
    cfg: SupervisedConfig,
    seed: int,
    classifier: str,
    fingerprint: str,
    device: torch.device,
    store: Store | None,
) -> dict[str, Any]:
    attrs: dict[str, Any] = {k: (v if isinstance(v, (str, int, float)) else str(v)) for k, v in info.items()}
    attrs.update(
        {
            "analysis": "lottery",
            "pruning": PRUNING_DEFINITION,
            "prunable": prunable if isinstance(prunable, str) else "names",
            "prunable_names": json.dumps(names),
            "prune_fraction": float(fraction),
            "rewind_step": -1 if rewind_step is None else int(rewind_step),
            "rewind_optimizer": int(rewind_optimizer),
            "rewind_rng": int(bool(rewind_rng)),
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
            "supervised_config": json.dumps(cfg.to_dict(), sort_keys=True),
            "classifier": classifier,
            "seed": int(seed),
            "reinit_seed": int(seed) + 1,
            "random_prune_seeds": f"{_RANDOM_PRUNE_STRIDE} * seed + level",
            "data_seed": int(cfg.data_seed),
            "aug_seed": int(cfg.aug_seed),
            "start_fingerprint": fingerprint,
        }
    )
    if store is not None:
        attrs["store"] = str(store.path)
    recipe = {k: v for k, v in attrs.items() if k not in ("store",)}
    stamp(attrs, recipe, kind="lottery", device=device, precision=cfg.precision if device.type == "cuda" else "fp32")
    return attrs
