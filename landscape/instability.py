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
from distill.store.names import SUFFIX, store_name
from distill.supervised import check_classifier, evaluate, train_supervised, with_classifier
from landscape import refs
from landscape.configs import InstabilityConfig
from landscape.executors import run_units
from landscape.paths import barrier, linear_path

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


def _open_store(store: Any, config: Mapping[str, Any], head_seed: int) -> Store:
    from distill.store import Store

    if isinstance(store, Store):
        return store if store.mode == "a" else Store(store.path, "a")
    path = Path(store)
    if path.exists():
        return Store(path, "a")
    return Store.create(path, config, kind="instability", seeds={"head_seed": int(head_seed)})


def _same_state(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k].cpu(), b[k].detach().cpu().to(a[k].dtype)) for k in a)


# ----------------------------------------------------------------------------- work units
def child_part_path(store: str | Path, index: int) -> Path:
    """Where the work unit of child ``index`` writes its own store, beside the children store."""
    store = Path(store)
    return store_name(store.with_name(f"{store.stem}.child{index}{SUFFIX}"))


def _recipe_json(ccfg: SupervisedConfig) -> str:
    return json.dumps(ccfg.to_dict(), sort_keys=True)


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
        from distill.store import Store, StoreError

        if self.out is None or not Path(self.out).exists():
            return False
        try:
            store = Store(self.out)
            if self.name not in store.names():
                return False
            return store.load_state(self.name)[1].get("config") == _recipe_json(SupervisedConfig.from_dict(self.cfg))
        except (StoreError, OSError):
            return False

    def __call__(self) -> dict[str, Any]:
        from distill.device import resolve_device
        from distill.store import Store

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
            "config": _recipe_json(ccfg),
        }
        if self.out is None:
            return {"state": {k: v.detach().cpu() for k, v in child.state_dict().items()}, "attrs": attrs}
        path = Path(self.out)
        store = (
            Store(path, "a")
            if path.exists()
            else Store.create(path, {"child": self.index, "supervised": ccfg.to_dict()}, kind="instability-child")
        )
        with store:
            store.save_module(self.name, child, attrs)
        return {}


# ----------------------------------------------------------------------------- public API
@with_config(InstabilityConfig)
def instability(
    start: Any,
    data: Any,
    *,
    children: int,
    seeds: Sequence[int] | None,
    cfg: SupervisedConfig | None,
    alphas: int | Sequence[float],
    bn: str,
    splits: Sequence[str],
    device: str | torch.device,
    head_seed: int,
    path_options: Mapping[str, Any] | None,
    epochs: int | None = None,
    store: Any = None,
    progress: bool | None = None,
    num_classes: int | None = None,
    executor: Executor | None = None,
) -> xr.Dataset:
    """Train children of ``start`` with labels and measure the barrier between every pair.

    Args:
        start: ``nn.Module`` (never modified) or ``(store_or_path, epoch | name)``. A start whose head
            is not a linear classifier with ``num_classes`` (default ``data.num_classes``) outputs gets a
            fresh one (`distill.supervised.with_classifier`, drawn once with ``head_seed``), so
            all children start from exactly the same weights.
        seeds: child i trains with ``data_seed = aug_seed = seeds[i]``; default ``range(children)``.
        cfg: the training recipe (default: the paper's, ``SupervisedConfig()``: 160 epochs per child,
            as ``rtt instability``; ``SupervisedConfig.preset("cpu")`` trains 8); ``epochs`` overrides
            ``cfg.epochs``.
        store: a Store or path (created with kind "instability" when missing) receiving "start" and
            each child as module ``children/<i>`` (attrs seed, epochs, test_accuracy, config) and the
            result as ``results/instability``. Children already in it are loaded, not retrained; a
            store holding another start or children of another recipe is refused.

    alphas, bn, splits: passed to `landscape.paths.linear_path` (with ``path_options``).

    Args:
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

    cfg = SupervisedConfig() if cfg is None else cfg
    if not isinstance(cfg, SupervisedConfig):
        raise ValueError(f"cfg must be a distill.SupervisedConfig, got {type(cfg).__name__}")
    if epochs is not None:
        cfg = cfg.replace(epochs=int(epochs))
    if seeds is None:
        if isinstance(children, bool) or not isinstance(children, (int, np.integer)) or children < 2:
            raise ValueError(f"children={children!r}: train at least 2 children to have a pair")
        seeds = list(range(int(children)))
    else:
        seeds = [int(s) for s in seeds]
        if len(seeds) < 2:
            raise ValueError(f"seeds={seeds}: pass at least 2 seeds (one per child)")
    n_children = len(seeds)
    dev = resolve_device(device)
    n_classes = int(num_classes if num_classes is not None else data.num_classes)

    base, info = load_ref(start, "cpu")
    try:
        check_classifier(base, n_classes)
        head = "the start's own linear classifier"
    except ValueError:
        base = with_classifier(base, n_classes, seed=head_seed)
        head = f"fresh linear classifier drawn with seed {head_seed} (shared by every child)"
    base.requires_grad_(True)

    writer: Store | None = None
    if store is not None:
        config = {
            **(_store_config(start) or {"dataset": str(getattr(data, "name", ""))}),
            "supervised": cfg.to_dict(),
            "start": info["source"],
            "seeds": seeds,
            "head_seed": head_seed,
        }
        writer = _open_store(store, config, head_seed)
        if "start" in writer.names():
            if not _same_state(writer.load_state("start")[0], base.state_dict()):
                raise ValueError(f"{writer.path} holds children of another start checkpoint: pass another store")
        else:
            writer.save_module("start", base, {"source": info["source"], "head": head})

    held = set(writer.names("children/")) if writer is not None else set()
    units: dict[int, ChildUnit] = {}
    for i, seed in enumerate(seeds):
        ccfg = cfg.replace(data_seed=seed, aug_seed=seed)
        name = f"children/{i}"
        if writer is not None and name in held:
            attrs = writer.load_state(name)[1]
            if attrs.get("config") != _recipe_json(ccfg):
                raise ValueError(
                    f"{writer.path} holds {name} trained with another recipe or seed "
                    f"(seed {attrs.get('seed')}, {attrs.get('epochs')} epochs): pass another store"
                )
            continue
        part = str(child_part_path(writer.path, i)) if writer is not None else None
        units[i] = ChildUnit(
            base,
            data,
            ccfg.to_dict(),
            i,
            int(seed),
            part,
            str(dev) if executor is None else str(device),
            progress if executor is None else False,
        )
    order = sorted(units)
    results, _ = run_units([units[i] for i in order], executor, desc="instability children", progress=progress)
    returned = dict(zip(order, results))

    models, accuracies = [], []
    for i in range(n_children):
        name = f"children/{i}"
        if writer is None:  # every child was trained here and returned its state
            child = copy.deepcopy(base).to(dev)
            child.load_state_dict(returned[i]["state"])
            attrs = returned[i]["attrs"]
        else:
            if i in units:  # move the unit's own store into the children store
                from distill.store import Store

                out = units[i].out
                assert out is not None  # with a children store, each unit writes its own
                unit_store = Store(out)
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
        acc = float(acc) if acc is not None else evaluate(child, data, "test", device=dev)[1]
        models.append(child.eval())
        accuracies.append(acc)

    pairs = list(itertools.combinations(range(n_children), 2))
    curves = [
        linear_path(
            models[i], models[j], data, alphas=alphas, bn=bn, splits=splits, device=dev, **dict(path_options or {})
        )
        for i, j in pairs
    ]
    path_attrs = {k: v for k, v in curves[0].attrs.items() if not k.startswith(("a_", "b_"))}
    ds = xr.concat([xr.Dataset(c.data_vars, c.coords) for c in curves], dim="pair")  # without attrs
    ds = ds.assign_coords(
        pair=("pair", [f"{i}-{j}" for i, j in pairs]),
        child_i=("pair", np.array([i for i, _ in pairs], dtype=np.int64)),
        child_j=("pair", np.array([j for _, j in pairs], dtype=np.int64)),
    )
    ds = ds.transpose("pair", "alpha", "split")
    heights = barrier(ds)
    ds["barrier_error"] = heights["barrier_error"]
    ds["barrier_loss"] = heights["barrier_loss"]
    ds["child_test_accuracy"] = xr.DataArray(
        np.asarray(accuracies, dtype=np.float64),
        dims="child",
        coords={
            "child": np.arange(n_children, dtype=np.int64),
            "child_seed": ("child", np.asarray(seeds, dtype=np.int64)),
        },
        attrs={"long_name": "test accuracy of each child after training", "units": "fraction"},
    )
    ds["pair"].attrs = {"long_name": "pair of children i-j"}
    ds["child"].attrs = {"long_name": "child index"}

    attrs = dict(path_attrs)
    attrs.update(
        {
            "analysis": "instability",
            "instability_definition": DEFINITION,
            "barrier_error_definition": heights.attrs["barrier_error_definition"],
            "barrier_loss_definition": heights.attrs["barrier_loss_definition"],
            "start_source": info["source"],
            "config": json.dumps(cfg.to_dict(), sort_keys=True),
            "seeds": json.dumps(seeds),
            "children": n_children,
            "epochs": cfg.epochs,
            "head": head,
            "head_seed": int(head_seed),
            "num_classes": n_classes,
            "training_device": str(dev),
            "training_precision": cfg.precision if dev.type == "cuda" else "fp32",
            "child_store": str(writer.path) if writer is not None else "",
        }
    )
    attrs.update({f"start_{k}": v for k, v in info.items() if k != "source"})
    recipe = {
        "supervised": cfg.to_dict(),
        "seeds": seeds,
        "head_seed": int(head_seed),
        "start": info["source"],
        "alphas": np.atleast_1d(ds.alpha.values).tolist(),
        "bn": bn,
        "splits": list(splits),
    }
    stamp(attrs, recipe, kind="instability", device=dev, precision=attrs["training_precision"])
    ds.attrs = attrs
    if writer is not None:
        writer.write_result("instability", ds)
    return ds
