"""Instability (Frankle et al. 2020): train children of one checkpoint, measure barriers between them.

From a start checkpoint, ``instability`` trains N children with labels that differ only in the
data-order and augmentation seed, then evaluates the straight path between every pair of
children (`landscape.paths.linear_path`) and its barrier heights
(`landscape.paths.barrier`).

Example:

```python
ds = instability((store, -1), data, children=2, cfg=SupervisedConfig.preset("cpu"),
                 store="runs/children.rts")
ds.barrier_error.sel(split="test")
```
"""

from __future__ import annotations

import copy
import itertools
import json
import shutil
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import xarray as xr
from torch import nn

from distill.config import SupervisedConfig
from distill.options import with_config
from distill.provenance import stamp
from distill.schema import plain, result_dataset
from distill.store.names import SUFFIX, store_name
from distill.supervised import check_classifier, evaluate, train_supervised, with_classifier
from landscape import refs
from landscape.configs import InstabilityConfig
from landscape.executors import run_units
from landscape.paths import linear_path, with_barriers
from landscape.units import differing, finished, open_store, refuse

if TYPE_CHECKING:
    from distill.store import Store

DEFINITION = (
    "children trained with labels from one start checkpoint, identical except for the data-order and "
    "augmentation seed (child i: data_seed = aug_seed = seeds[i]); barrier between every pair of children"
)


# ----------------------------------------------------------------------------- references
load_ref = refs.load_ref  # the shared resolver, also importable from here


def _store_config(ref: Any) -> dict[str, Any]:
    """The dataset keys of the start's store config (empty for a plain module)."""
    if not (isinstance(ref, (tuple, list)) and len(ref) == 2):
        return {}
    from distill.store import Store

    store = ref[0] if isinstance(ref[0], Store) else Store(ref[0])
    cfg = store.config
    return {k: cfg[k] for k in ("dataset", "data_root", "subset", "data_seed") if k in cfg}


def _same_state(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k].cpu(), b[k].detach().cpu().to(a[k].dtype)) for k in a)


# ----------------------------------------------------------------------------- work units
def child_part_path(store: str | Path, index: int) -> Path:
    """Where the work unit of child ``index`` writes its own store, beside the children store."""
    store = Path(store)
    return store_name(store.with_name(f"{store.stem}.child{index}{SUFFIX}"))


def _recipe_differs(attrs: Mapping[str, Any], ccfg: SupervisedConfig) -> list[str]:
    """The recipe fields in which a stored child (its attrs) differs from ``ccfg``."""
    return differing(json.loads(attrs.get("config") or "{}"), ccfg.to_dict())


@dataclass(frozen=True)
class ChildUnit:
    """Training of one child as a work unit (`landscape.executors`): picklable; with ``out``
    it writes its own store (module ``children/<index>``) and is done when that store holds it;
    without, it returns the trained state."""

    base: nn.Module
    data: Any
    cfg: dict
    index: int
    seed: int
    out: str | None = None
    device: str = "auto"
    progress: bool | None = False

    @property
    def name(self) -> str:
        """The child's module name in the children store (``children/<index>``)."""
        return f"children/{self.index}"

    def done(self) -> bool:
        """Whether the unit's store holds this child, trained with the same recipe and seed."""

        def trained(store: Store) -> bool:
            if self.name not in store.names():
                return False
            return not _recipe_differs(store.load_state(self.name)[1], SupervisedConfig.from_dict(self.cfg))

        return finished(self.out, trained)

    def __call__(self) -> dict[str, Any]:
        from distill.device import resolve_device

        ccfg = SupervisedConfig.from_dict(self.cfg)
        if self.done():
            return {}
        dev = resolve_device(self.device)
        child = copy.deepcopy(self.base).to(dev)
        result = train_supervised(child, self.data, ccfg, device=dev, progress=self.progress)
        attrs = {
            "seed": self.seed,
            "epochs": ccfg.epochs,
            "test_accuracy": float(result["test_accuracy"]),
            "steps": int(result["steps"]),
            "config": ccfg.to_json(),
        }
        if self.out is None:
            return {"state": {k: v.detach().cpu() for k, v in child.state_dict().items()}, "attrs": attrs}
        with open_store(
            self.out, {"child": self.index, "supervised": ccfg.to_dict()}, "instability-child", {}
        ) as store:
            store.save_module(self.name, child, attrs)
        return {}


# ----------------------------------------------------------------------------- public API
@with_config(InstabilityConfig)
def instability(
    start: Any,
    data: Any,
    *,
    config: InstabilityConfig,
    epochs: int | None = None,
    store: Any = None,
    progress: bool | None = None,
    num_classes: int | None = None,
    executor: Executor | None = None,
) -> xr.Dataset:
    """Train children of ``start`` with labels and measure the barrier between every pair
    (`landscape.paths.linear_path` with ``alphas``, ``bn``, ``splits`` and ``path_options``).

    Args:
        start: ``nn.Module`` (never modified) or ``(store_or_path, epoch | name)``. A start whose head
            is not a linear classifier with ``num_classes`` (default ``data.num_classes``) outputs gets a
            fresh one (`distill.supervised.with_classifier`, drawn once with ``head_seed``), so
            all children start from exactly the same weights.
        epochs: overrides ``cfg.epochs``.
        store: a Store or path (created with kind "instability" when missing) receiving "start" and
            each child as module ``children/<i>`` (attrs seed, epochs, test_accuracy, config) and the
            result as ``results/instability``. Children already in it are loaded, not retrained; a
            store holding another start or children of another recipe is refused.
        executor: any ``concurrent.futures.Executor`` training the children in parallel (default: one
            after the other here). Each child is a work unit writing its own store beside ``store``
            (`child_part_path`), moved into ``store`` once all are trained; finished children
            are not retrained on a rerun. The result is the same as the sequential run's.

    Returns:
        An ``xr.Dataset``: dims (pair, alpha, split) for ``loss`` (nats) and ``error``
        (fraction); ``barrier_error`` and ``barrier_loss`` over (pair, split); ``child_test_accuracy``
        over ``child`` (each child's own evaluation after training, BN statistics as trained). Coords:
        ``pair`` ("0-1", ...), ``child_i``/``child_j`` on pair, ``child`` and ``child_seed``.
    """
    from distill.train import resolve_device

    c, cfg, head_seed = config, config.cfg, config.head_seed
    if not isinstance(cfg, SupervisedConfig):
        raise ValueError(f"cfg must be a distill.SupervisedConfig, got {type(cfg).__name__}")
    if epochs is not None:
        cfg = cfg.replace(epochs=int(epochs))
    seeds = _seeds(c.children, c.seeds)
    dev = resolve_device(c.device)
    st = _Start.load(start, int(num_classes if num_classes is not None else data.num_classes), int(head_seed), seeds)
    kids = _Children(st, data, cfg, None, dev)
    if store is not None:
        recorded = {
            **(_store_config(start) or {"dataset": str(getattr(data, "name", ""))}),
            "supervised": cfg.to_dict(),
            "start": st.info["source"],
            "seeds": seeds,
            "head_seed": head_seed,
        }
        kids.writer = st.keep(open_store(store, recorded, "instability", {"head_seed": int(head_seed)}))
    units = kids.units(str(dev) if executor is None else str(c.device), progress if executor is None else False)
    results, _ = run_units(list(units.values()), executor, desc="instability children", progress=progress)
    returned = dict(zip(units, results))
    trained = [kids.child(i, units.get(i), returned.get(i)) for i in range(len(seeds))]
    ds = _pairs(
        trained, seeds, data, dict(alphas=c.alphas, bn=c.bn, splits=c.splits, device=dev), dict(c.path_options or {})
    )
    attrs = _attrs(ds.attrs, cfg, st, dev)
    attrs["child_store"] = str(kids.writer.path) if kids.writer is not None else ""
    attrs.update({f"start_{k}": v for k, v in st.info.items() if k != "source"})
    recipe = {
        "supervised": cfg.to_dict(),
        "seeds": seeds,
        "head_seed": int(head_seed),
        "start": st.info["source"],
        "alphas": np.atleast_1d(ds.alpha.values).tolist(),
        "bn": c.bn,
        "splits": list(c.splits),
    }
    stamp(attrs, recipe, kind="instability", device=dev, precision=attrs["training_precision"])
    ds.attrs = attrs
    if kids.writer is not None:
        kids.writer.write_result("instability", ds)
    return ds


def _attrs(path_attrs: Mapping[str, Any], cfg: SupervisedConfig, st: _Start, dev: torch.device) -> dict[str, Any]:
    """The result's attrs: the paths' own (without their a_/b_ references), the definitions, the
    children's recipe and the start."""
    attrs = {k: v for k, v in path_attrs.items() if not k.startswith(("a_", "b_", "barrier_"))}
    attrs.update(
        {
            "analysis": "instability",
            "instability_definition": DEFINITION,
            "barrier_error_definition": path_attrs["barrier_error_definition"],
            "barrier_loss_definition": path_attrs["barrier_loss_definition"],
            "start_source": st.info["source"],
            "config": json.dumps(cfg.to_dict(), sort_keys=True),
            "seeds": json.dumps(st.seeds),
            "children": len(st.seeds),
            "epochs": cfg.epochs,
            "head": st.head,
            "head_seed": st.head_seed,
            "num_classes": st.n_classes,
            "training_device": str(dev),
            "training_precision": cfg.precision if dev.type == "cuda" else "fp32",
        }
    )
    return attrs


def _seeds(children: int, seeds: Sequence[int] | None) -> list[int]:
    """Child i's data and augmentation seed: ``seeds``, else ``range(children)``."""
    if seeds is None:
        if isinstance(children, bool) or not isinstance(children, (int, np.integer)) or children < 2:
            raise ValueError(f"children={children!r}: train at least 2 children to have a pair")
        return list(range(int(children)))
    out = [int(s) for s in seeds]
    if len(out) < 2:
        raise ValueError(f"seeds={out}: pass at least 2 seeds (one per child)")
    return out


@dataclass
class _Start:
    """The start on the CPU with a linear classifier for ``n_classes``, its provenance, how the head
    was made (a fresh one drawn with ``head_seed`` when it had none) and the children's seeds."""

    base: nn.Module
    info: dict[str, Any]
    head: str
    head_seed: int
    n_classes: int
    seeds: list[int]

    @classmethod
    def load(cls, start: Any, n_classes: int, head_seed: int, seeds: list[int]) -> _Start:
        base, info = load_ref(start, "cpu")
        try:
            check_classifier(base, n_classes)
            head = "the start's own linear classifier"
        except ValueError:
            base = with_classifier(base, n_classes, seed=head_seed)
            head = f"fresh linear classifier drawn with seed {head_seed} (shared by every child)"
        base.requires_grad_(True)
        return cls(base, info, head, head_seed, n_classes, seeds)

    def keep(self, writer: Store) -> Store:
        """The children store, holding the start as "start" (refused when it holds another)."""
        if "start" in writer.names():
            if not _same_state(writer.load_state("start")[0], self.base.state_dict()):
                raise ValueError(f"{writer.path} holds children of another start checkpoint: pass another store")
        else:
            writer.save_module("start", self.base, {"source": self.info["source"], "head": self.head})
        return writer


@dataclass
class _Children:
    """The children of one start, trained with ``cfg`` and the start's seeds, kept in ``writer`` (if any)."""

    start: _Start
    data: Any
    cfg: SupervisedConfig
    writer: Store | None
    dev: torch.device

    def units(self, device: str, progress: bool | None) -> dict[int, ChildUnit]:
        """A work unit per child not yet in the children store (one of another recipe is refused)."""
        writer = self.writer
        held = set(writer.names("children/")) if writer is not None else set()
        units: dict[int, ChildUnit] = {}
        for i, seed in enumerate(self.start.seeds):
            ccfg = self.cfg.replace(data_seed=seed, aug_seed=seed)
            if writer is not None and f"children/{i}" in held:
                attrs = writer.load_state(f"children/{i}")[1]
                where = f"{writer.path}: children/{i}, trained with another recipe or seed,"
                recorded = json.loads(attrs.get("config") or "{}")
                refuse(where, _recipe_differs(attrs, ccfg), recorded, ccfg.to_dict(), "pass another store")
                continue
            part = str(child_part_path(writer.path, i)) if writer is not None else None
            units[i] = ChildUnit(self.start.base, self.data, ccfg.to_dict(), i, int(seed), part, device, progress)
        return units

    def child(self, i: int, unit: ChildUnit | None, returned: Any) -> tuple[nn.Module, float]:
        """Child ``i`` on the device in eval mode (moved from its ``unit``'s store into the children
        store when trained there) and its test accuracy."""
        from distill.store import Store

        name, dev, writer = f"children/{i}", self.dev, self.writer
        if writer is None:  # every child was trained here and returned its state
            child = copy.deepcopy(self.start.base).to(dev)
            child.load_state_dict(returned["state"])
            attrs = returned["attrs"]
        elif unit is not None:  # move the unit's own store into the children store
            assert unit.out is not None  # with a children store, each unit writes its own
            unit_store = Store(unit.out)
            attrs = unit_store.load_state(name)[1]
            child = unit_store.load_module(name, dev)
            writer.save_module(
                name, child, {k: v for k, v in attrs.items() if k not in ("spec", "complete", "written_at")}
            )
            shutil.rmtree(unit_store.path) if unit_store.path.is_dir() else unit_store.path.unlink()
        else:
            attrs = writer.load_state(name)[1]
            child = writer.load_module(name, dev)
        acc = attrs.get("test_accuracy")
        acc = float(acc) if acc is not None else evaluate(child, self.data, "test", device=dev)[1]
        return child.eval(), acc


def _pairs(
    children: list[tuple[nn.Module, float]], seeds: list[int], data: Any, path: dict, options: dict
) -> xr.Dataset:
    """Paths (`linear_path` with ``path`` and ``options``) and barriers between every pair of children,
    with each child's test accuracy; attrs: the paths' own."""
    pairs = list(itertools.combinations(range(len(children)), 2))
    curves = [linear_path(children[i][0], children[j][0], data, **path, **options) for i, j in pairs]
    ds = xr.concat([xr.Dataset(c.data_vars, c.coords) for c in curves], dim="pair")  # without attrs
    ds = ds.assign_coords(
        pair=("pair", [f"{i}-{j}" for i, j in pairs]),
        child_i=("pair", np.array([i for i, _ in pairs], dtype=np.int64)),
        child_j=("pair", np.array([j for _, j in pairs], dtype=np.int64)),
    )
    ds.attrs = curves[0].attrs
    ds = with_barriers(ds.transpose("pair", "alpha", "split"))
    accuracy = ("child", np.asarray([acc for _, acc in children], dtype=np.float64))
    coords = {"child": ("child", np.arange(len(children), dtype=np.int64))}
    coords["child_seed"] = ("child", np.asarray(seeds, dtype=np.int64))
    data_vars = plain(ds.data_vars) | {"child_test_accuracy": accuracy}
    return result_dataset("instability", data_vars, plain(ds.coords) | coords, ds.attrs)
