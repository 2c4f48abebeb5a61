"""The level loop of `landscape.lottery`: one IMP sequence per rewind target, its baselines, and
the store that checkpoints every trained level (layout in `landscape.lottery`'s docstring)."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from distill.config import SupervisedConfig
from distill.store import Store
from distill.supervised import train_supervised
from landscape.pruning import (
    _clean_name,
    apply_masks,
    full_masks,
    global_magnitude_prune,
    masked_state_dict,
    random_prune,
)
from landscape.units import differing, refuse

RANDOM_PRUNE_STRIDE = 1000  # random_prune at level l draws with seed * stride + l
STEP_SCHEDULE = "continued from rewind_step"  # how levels after a step rewind train (a stored setting)
Masks = Mapping[str, Tensor]  # tensors by state_dict name: masks, or states
STEP_SETTINGS = ("rewind_step", "rewind_optimizer", "step_schedule")  # settings that only matter for 'step'
METRICS = ("best_accuracy", "final_accuracy", "final_loss", "steps")


# ----------------------------------------------------------------------------- optimiser state by name
# train_supervised's optimiser numbers the trainable parameters in model.parameters() order. Masks
# registered as parametrizations move a weight to "<module>.parametrizations.weight.original" and
# after the module's own parameters, so that order differs between the dense level-0 model and a
# masked one; the state is therefore kept by the (clean) parameter name in between.
OptimizerByName = tuple[dict[str, Tensor], dict[str, Any]]  # ({"<key>/<name>": tensor}, meta)


def trainable(model: nn.Module) -> list[tuple[str, Tensor]]:
    """(clean name, parameter) in the order train_supervised hands them to its optimiser."""
    return [(_clean_name(n), p) for n, p in model.named_parameters() if p.requires_grad]


def optimizer_by_name(model: nn.Module, state: Mapping[str, Any]) -> OptimizerByName:
    """An SGD ``state_dict()`` of an optimiser over ``model``'s trainable parameters, keyed by name."""
    named = trainable(model)
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


def optimizer_for(model: nn.Module, saved: OptimizerByName, masks: Mapping[str, Tensor] | None) -> dict[str, Any]:
    """The SGD ``state_dict()`` for ``model`` (masked or not) from state kept by name; entries of
    per-parameter tensors at pruned positions are set to zero."""
    tensors, meta = saved
    by_name: dict[str, dict[str, Tensor]] = {}
    for full, t in tensors.items():
        key, _, name = full.partition("/")
        by_name.setdefault(name, {})[key] = t
    named = trainable(model)
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


@dataclass(frozen=True)
class LotterySettings:
    """Everything one `landscape.lottery.lottery` call fixes for its runs.

    ``names``: the prunable tensors; ``counts``: unpruned weights per level; ``fraction``: pruned
    per level; ``baselines``: methods run beside IMP; ``classifier``: how the head was made;
    ``fingerprint``: the start's state (`landscape.lottery._fingerprint`).
    """

    cfg: SupervisedConfig
    prunable: str | list[str]
    names: list[str]
    counts: list[int]
    fraction: float
    rewind_step: int | None
    rewind_optimizer: bool
    rewind_rng: bool
    baselines: list[str]
    seed: int
    classifier: str
    fingerprint: str

    def recorded(self) -> dict[str, Any]:
        """The settings saved with every level, compared when a store is resumed."""
        return {
            "start_fingerprint": self.fingerprint,
            "prune_fraction": self.fraction,
            "prunable": self.prunable,
            "supervised_config": json.dumps(
                {k: v for k, v in self.cfg.to_dict().items() if k != "device"}, sort_keys=True
            ),
            "seed": self.seed,
            "rewind_step": self.rewind_step,
            "rewind_optimizer": self.rewind_optimizer,
            "step_schedule": STEP_SCHEDULE,
            "rewind_rng": self.rewind_rng,
            "classifier": self.classifier,
        }

    def for_rewind(self, rewind: str) -> dict[str, Any]:
        """What must match for a stored run of ``rewind`` to be continued."""
        return {k: v for k, v in self.recorded().items() if rewind == "step" or k not in STEP_SETTINGS}

    def level_cfg(self, level: int) -> SupervisedConfig:
        """The recipe of ``level``: the same seeds at every level, or shifted by the level."""
        if self.rewind_rng:
            return self.cfg
        return self.cfg.replace(data_seed=self.cfg.data_seed + level, aug_seed=self.cfg.aug_seed + level)


def fresh_state(template: nn.Module, seed: int) -> dict[str, Tensor]:
    """The state of a new random init of ``template``'s architecture drawn with ``seed``."""
    from distill.init import fresh_like

    if getattr(template, "spec", None) is None:
        raise ValueError(
            "rewind='init' and the random_reinit baseline need a model built with distill.build_model (it has no .spec)"
        )
    return clone_state(fresh_like(template, seed).state_dict())


def clone_state(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Detached copies of every tensor."""
    return {k: v.detach().clone() for k, v in state.items()}


def rewound(target: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``target`` with the masked entries of the prunable tensors set to zero."""
    out = dict(target)
    for k, m in masks.items():
        out[k] = target[k] * (m.to(target[k].device) != 0).to(target[k].dtype)
    return out


@dataclass
class _Sequence:
    """One IMP sequence between levels: its rewind target and optimiser state at the rewind point
    (step rewinds), the step later levels start from, and the last level's (trained state, masks)."""

    rewind: str
    target: Mapping[str, Tensor]
    optimizer: OptimizerByName | None = None
    start_step: int = 0
    prev: tuple[dict[str, Tensor], dict[str, Tensor]] | None = None

    @property
    def prefix(self) -> str:
        return f"lottery/{self.rewind}"


class LotteryRun:
    """The IMP sequences of one `landscape.lottery.lottery` call, sharing trainings between them
    (level 0 of 'start' and 'step', random_reinit's level 0) and, with a store, checkpointing
    every level; ``bar`` counts the trainings."""

    def __init__(
        self,
        template: nn.Module,
        data: Any,
        settings: LotterySettings,
        store: Store | None,
        device: Any,
        progress: bool | None,
        bar: Any,
    ) -> None:
        self.template, self.data, self.settings, self.store = template, data, settings, store
        self.device, self.progress, self.bar = device, progress, bar
        self.start_state = clone_state(template.state_dict())
        self._fresh: dict[int, dict[str, Tensor]] = {}
        self._shared: dict[Any, Any] = {}  # trainings shared between rewind targets within this call

    # ---------------------------------------------------------------- pieces
    def fresh(self, seed: int) -> dict[str, Tensor]:
        """A random init drawn with ``seed`` (the settings' seed: 'init'; seed + 1: random_reinit)."""
        if seed not in self._fresh:
            self._fresh[seed] = fresh_state(self.template, seed)
        return self._fresh[seed]

    def full(self) -> dict[str, Tensor]:
        """Masks keeping every prunable weight (the dense level)."""
        return full_masks(self.template, self.settings.names)

    def train(
        self,
        weights: Masks,
        masks: Masks | None,
        level: int,
        *,
        capture: int | None = None,
        start_step: int = 0,
        optimizer: OptimizerByName | None = None,
    ) -> tuple[dict, dict, tuple | None]:
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
        opt_state = None if optimizer is None else optimizer_for(model, optimizer, masks)
        res = train_supervised(
            model,
            self.data,
            self.settings.level_cfg(level),
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
            captured = (clone_state(snap["model"]), optimizer_by_name(model, snap["optimizer"]))
        metrics = {
            "best_accuracy": float(res["best_test_accuracy"]),
            "final_accuracy": float(res["test_accuracy"]),
            "final_loss": float(res["test_loss"]),
            "steps": int(res["steps"]) - start_step,
            "start_step": start_step,
        }
        return metrics, clone_state(masked_state_dict(model)), captured

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
        """Re-read which lottery checkpoints the store holds."""
        self._names = set(self.store.names("lottery/")) if self.store is not None else set()
        self._attrs: dict[str, dict[str, Any]] = {}

    def load(self, name: str) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """(trained state on the device, bool masks in prunable order) of stored module ``name``."""
        state, _ = self.held.load_state(name)
        masks = self.held.load_masks(name)
        names = self.settings.names
        if set(masks) != set(names):
            raise ValueError(
                f"{self.held.path}: '{name}' was pruned over other tensors than prunable selects "
                f"now: pass the same prunable as before or use a new store"
            )
        own = self.template.state_dict()
        state = {k: v.to(self.device, own[k].dtype) for k, v in state.items()}
        return state, {k: masks[k].to(self.device) != 0 for k in names}

    def save(
        self, name: str, state: Mapping[str, Tensor], masks: Mapping[str, Tensor] | None, attrs: Mapping[str, Any]
    ) -> None:
        """Store ``state`` (and ``masks``) as checkpoint ``name`` with ``attrs``; nothing without a store."""
        if self.store is None:
            return
        model = copy.deepcopy(self.template)
        model.load_state_dict(state)
        settings = self.settings.for_rewind(str(attrs["rewind"]))
        self.store.save_module(
            name,
            model,
            {**attrs, "settings": json.dumps(settings, sort_keys=True)},
            masks=None if masks is None else {k: m.to(torch.uint8) for k, m in masks.items()},
        )

    def check_settings(self, rewind: str, name: str) -> None:
        """Refuse to continue the stored level ``name`` when it was made with other settings."""
        attrs = self.stored(name)
        if attrs is None:
            return
        old = json.loads(attrs.get("settings", "{}"))
        if rewind == "step" and "step_schedule" not in old:
            raise ValueError(
                f"{self.held.path}: '{name}' comes from a version whose later levels restarted the "
                f"schedule at step 0 after a step rewind: use a new store"
            )
        wanted = self.settings.for_rewind(rewind)
        refuse(f"{self.held.path}: '{name}'", differing(old, wanted, [k for k in wanted if k in old]), old, wanted)

    def load_target(self, name: str) -> dict[str, Tensor]:
        """The stored rewind target ``name`` (a state dict); a missing one is a one-line error."""
        if self.stored(name) is None:
            raise ValueError(
                f"{self.held.path} lacks '{name}', the rewind target of its completed levels: use a new store"
            )
        state, _ = self.held.load_state(name)
        own = self.template.state_dict()
        return {k: v.to(self.device, own[k].dtype) for k, v in state.items()}

    def load_optimizer(self, name: str) -> OptimizerByName:
        """The optimiser state stored with ``name``, by parameter name."""
        got = self.held.load_state_group(name)
        if got is None:
            raise ValueError(
                f"{self.held.path} lacks the optimiser state '{name}' that rewind_optimizer=True needs: use a new store"
            )
        tensors, meta = got
        return {k: v.to(self.device) for k, v in tensors.items()}, meta

    # ---------------------------------------------------------------- one IMP sequence
    def run(self, rewind: str, levels: int) -> dict[str, list[dict[str, float]]]:
        """Rows (metrics per level) of IMP and each baseline for rewind target ``rewind``."""
        self.refresh()
        seq, done = self.sequence(rewind, levels)
        rows: dict[str, list[dict[str, float]]] = {m: [] for m in ("imp", *self.settings.baselines)}
        random_masks = self.full()
        for level in range(levels):
            masks: dict[str, Tensor] | None = None
            if level < done:
                rows["imp"].append(self.stored_level(f"{seq.prefix}/{level:02d}", level))
                seq.prev = None  # loaded lazily when needed
            else:
                metrics, masks = self.imp_level(seq, level)
                rows["imp"].append(metrics)
            if level:
                seed = self.settings.seed * RANDOM_PRUNE_STRIDE + level
                random_masks = random_prune(random_masks, self.settings.fraction, seed=seed)
            for method in self.settings.baselines:
                rows[method].append(self.baseline(seq, method, level, masks, random_masks, rows["imp"][0]))
        return rows

    def sequence(self, rewind: str, levels: int) -> tuple[_Sequence, int]:
        """The sequence of ``rewind`` as the store leaves it, and how many levels it holds."""
        prefix = f"lottery/{rewind}"
        self.check_settings(rewind, f"{prefix}/00")
        done = 0
        while done < levels and self.stored(f"{prefix}/{done:02d}") is not None:
            done += 1
        step = self.settings.rewind_step
        seq = _Sequence(rewind, self.fresh(self.settings.seed) if rewind == "init" else self.start_state)
        seq.start_step = int(step) if rewind == "step" and step is not None else 0
        if rewind in ("init", "step") and done:  # else 'step' replaces it by the point level 0 captures
            seq.target = self.load_target(f"{prefix}/rewind")
            if rewind == "step" and self.settings.rewind_optimizer:
                seq.optimizer = self.load_optimizer(f"{prefix}/rewind")
        return seq, done

    def stored_level(self, name: str, level: int) -> dict[str, float]:
        """The metrics of a level found in the store (its size checked against this call's)."""
        attrs = self.stored(name)
        assert attrs is not None  # found in the store
        if int(attrs["remaining_weights"]) != self.settings.counts[level]:
            raise ValueError(
                f"{self.held.path}: '{name}' keeps {attrs['remaining_weights']} weights, "
                f"this call expects {self.settings.counts[level]}: use the same settings or a new store"
            )
        return {k: float(attrs[k]) for k in METRICS}

    def imp_level(self, seq: _Sequence, level: int) -> tuple[dict[str, float], dict[str, Tensor]]:
        """Train IMP's ``level`` (level 0: dense, capturing a step rewind's target); (metrics, masks)."""
        if level == 0:
            masks = self.full()
            metrics, trained, captured = self.train_origin(seq.rewind, seq.target)
            if seq.rewind == "step":
                assert captured is not None  # train_origin captures the step-rewind point
                seq.target, snapshot = captured
                seq.optimizer = snapshot if self.settings.rewind_optimizer else None
            if seq.rewind in ("init", "step"):
                self.save(f"{seq.prefix}/rewind", seq.target, None, {"rewind": seq.rewind, "step": seq.start_step})
            if seq.rewind == "step" and self.store is not None:
                self.store.save_state(f"{seq.prefix}/rewind", snapshot[0], {**snapshot[1], "step": seq.start_step})
        else:
            if seq.prev is None:
                seq.prev = self.load(f"{seq.prefix}/{level - 1:02d}")
            masks = global_magnitude_prune(seq.prev[0], seq.prev[1], self.settings.fraction)
            weights = rewound(seq.target, masks)
            metrics, trained, _ = self.train(weights, masks, level, start_step=seq.start_step, optimizer=seq.optimizer)
        self.save(f"{seq.prefix}/{level:02d}", trained, masks, self.attrs(seq.rewind, "imp", level, metrics))
        seq.prev = (trained, masks)
        return metrics, masks

    def train_origin(self, rewind: str, origin: Mapping[str, Tensor]) -> tuple[dict, dict, tuple | None]:
        """Level 0 (dense) from ``origin``; shared by 'start' and 'step', which start alike."""
        key = "init" if rewind == "init" else "start"
        wants = self.settings.rewind_step if rewind == "step" else None
        hit = self._shared.get(key)
        if hit is not None and (wants is None or hit[2] is not None):
            return hit
        result = self.train(origin, None, 0, capture=self.settings.rewind_step if key == "start" else None)
        self._shared[key] = result
        return result

    def baseline(
        self,
        seq: _Sequence,
        method: str,
        level: int,
        imp_masks: Masks | None,
        random_masks: Masks,
        imp_level0: dict[str, float],
    ) -> dict[str, float]:
        """One level of ``method``. random_prune trains like IMP's level (from the sequence's start
        step, with its optimiser state masked like its weights); random_reinit, a fresh init, runs the
        whole recipe with a fresh optimiser."""
        if method == "random_prune" and level == 0:
            return dict(imp_level0)  # the dense network rewound to the target is IMP's level 0
        name = f"{seq.prefix}/{method}/{level:02d}"
        attrs = self.stored(name)
        if attrs is not None:
            return {k: float(attrs[k]) for k in METRICS}
        kw: dict[str, Any] = {}
        if method == "random_prune":
            masks = random_masks
            weights = rewound(seq.target, masks)
            kw = {"start_step": seq.start_step, "optimizer": seq.optimizer}
        else:
            if imp_masks is None:
                imp_masks = self.load(f"{seq.prefix}/{level:02d}")[1]
            masks = imp_masks
            weights = rewound(self.fresh(self.settings.seed + 1), masks)
        if level == 0 and ("reinit0" in self._shared):
            metrics, trained = self._shared["reinit0"]
        else:
            metrics, trained, _ = self.train(weights, masks if level else None, level, **kw)
            if level == 0:
                self._shared["reinit0"] = (metrics, trained)
        self.save(name, trained, masks, self.attrs(seq.rewind, method, level, metrics))
        return metrics

    def attrs(self, rewind: str, method: str, level: int, metrics: Mapping[str, float]) -> dict[str, Any]:
        """The attrs recorded with one trained level: its rewind target, method, level, weights kept and metrics."""
        n = self.settings.counts[level]
        return {
            "rewind": rewind,
            "method": method,
            "level": level,
            "remaining_weights": n,
            "sparsity": n / self.settings.counts[0],
            **metrics,
        }
