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
from distill.provenance import stamp
from distill.store.names import SUFFIX, store_name
from distill.supervised import check_classifier, evaluate, train_supervised, with_classifier
from landscape import refs
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


def _recipe_json(ccfg: SupervisedConfig) -> str:
    return json.dumps(ccfg.to_dict(), sort_keys=True)


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
            "config": _recipe_json(ccfg),
        }
        if self.out is None:
            return {"state": {k: v.detach().cpu() for k, v in child.state_dict().items()}, "attrs": attrs}
        with open_store(
            self.out, {"child": self.index, "supervised": ccfg.to_dict()}, "instability-child", {}
        ) as store:
            store.save_module(self.name, child, attrs)
        return {}


# ----------------------------------------------------------------------------- public API
def instability(
    start: Any,
    data: Any,
    children: int = 2,
    seeds: Sequence[int] | None = None,
    cfg: SupervisedConfig | None = None,
    epochs: int | None = None,
    store: Any = None,
    alphas: int | Sequence[float] = 30,
    bn: str = "reset",
    splits: Sequence[str] = ("test",),
    device: str | torch.device = "auto",
    progress: bool | None = None,
    num_classes: int | None = None,
    *,
    head_seed: int = 0,
    path_options: Mapping[str, Any] | None = None,
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
    seeds = _seeds(children, seeds)
    dev = resolve_device(device)
    n_classes = int(num_classes if num_classes is not None else data.num_classes)
    base, info, head = _start(start, n_classes, head_seed)
    writer = None
    if store is not None:
        config = {
            **(_store_config(start) or {"dataset": str(getattr(data, "name", ""))}),
            "supervised": cfg.to_dict(),
            "start": info["source"],
            "seeds": seeds,
            "head_seed": head_seed,
        }
        writer = _children_store(
            open_store(store, config, "instability", {"head_seed": int(head_seed)}), base, info, head
        )
    units = _units(base, data, cfg, seeds, writer, str(dev) if executor is None else str(device), progress, executor)
    order = sorted(units)
    results, _ = run_units([units[i] for i in order], executor, desc="instability children", progress=progress)
    returned = dict(zip(order, results))
    children_ = [_child(i, base, units, returned, writer, data, dev) for i in range(len(seeds))]
    ds = _pairs(children_, seeds, data, dev, dict(alphas=alphas, bn=bn, splits=splits), dict(path_options or {}))
    child_store = str(writer.path) if writer is not None else ""
    attrs = _attrs(ds.attrs, cfg, seeds, info, head, int(head_seed), n_classes, dev, child_store)
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


def _attrs(
    path_attrs: Mapping[str, Any],
    cfg: SupervisedConfig,
    seeds: list[int],
    info: Mapping[str, Any],
    head: str,
    head_seed: int,
    n_classes: int,
    dev: torch.device,
    child_store: str,
) -> dict[str, Any]:
    """The result's attrs: the paths' own (without their a_/b_ references), the definitions and the
    children's recipe, start and training set-up."""
    attrs = {k: v for k, v in path_attrs.items() if not k.startswith(("a_", "b_", "barrier_"))}
    attrs.update(
        {
            "analysis": "instability",
            "instability_definition": DEFINITION,
            "barrier_error_definition": path_attrs["barrier_error_definition"],
            "barrier_loss_definition": path_attrs["barrier_loss_definition"],
            "start_source": info["source"],
            "config": json.dumps(cfg.to_dict(), sort_keys=True),
            "seeds": json.dumps(seeds),
            "children": len(seeds),
            "epochs": cfg.epochs,
            "head": head,
            "head_seed": head_seed,
            "num_classes": n_classes,
            "training_device": str(dev),
            "training_precision": cfg.precision if dev.type == "cuda" else "fp32",
            "child_store": child_store,
        }
    )
    attrs.update({f"start_{k}": v for k, v in info.items() if k != "source"})
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


def _start(start: Any, n_classes: int, head_seed: int) -> tuple[nn.Module, dict[str, Any], str]:
    """The start on the CPU with a linear classifier for ``n_classes`` (a fresh one drawn with
    ``head_seed`` when it has none), its provenance and how the head was made."""
    base, info = load_ref(start, "cpu")
    try:
        check_classifier(base, n_classes)
        head = "the start's own linear classifier"
    except ValueError:
        base = with_classifier(base, n_classes, seed=head_seed)
        head = f"fresh linear classifier drawn with seed {head_seed} (shared by every child)"
    base.requires_grad_(True)
    return base, info, head


def _children_store(writer: Store, base: nn.Module, info: Mapping[str, Any], head: str) -> Store:
    """The children store, holding ``base`` as "start" (refused when it holds another start)."""
    if "start" in writer.names():
        if not _same_state(writer.load_state("start")[0], base.state_dict()):
            raise ValueError(f"{writer.path} holds children of another start checkpoint: pass another store")
    else:
        writer.save_module("start", base, {"source": info["source"], "head": head})
    return writer


def _units(
    base: nn.Module,
    data: Any,
    cfg: SupervisedConfig,
    seeds: list[int],
    writer: Store | None,
    device: str,
    progress: bool | None,
    executor: Executor | None,
) -> dict[int, ChildUnit]:
    """A work unit per child not yet in the children store (a stored child of another recipe is refused)."""
    held = set(writer.names("children/")) if writer is not None else set()
    units: dict[int, ChildUnit] = {}
    for i, seed in enumerate(seeds):
        ccfg = cfg.replace(data_seed=seed, aug_seed=seed)
        name = f"children/{i}"
        if writer is not None and name in held:
            attrs = writer.load_state(name)[1]
            recorded, wanted = json.loads(attrs.get("config") or "{}"), ccfg.to_dict()
            where = f"{writer.path}: {name}, trained with another recipe or seed,"
            refuse(where, _recipe_differs(attrs, ccfg), recorded, wanted, "pass another store")
            continue
        part = str(child_part_path(writer.path, i)) if writer is not None else None
        units[i] = ChildUnit(
            base, data, ccfg.to_dict(), i, int(seed), part, device, progress if executor is None else False
        )
    return units


def _child(
    i: int,
    base: nn.Module,
    units: Mapping[int, ChildUnit],
    returned: Mapping[int, Any],
    writer: Store | None,
    data: Any,
    dev: torch.device,
) -> tuple[nn.Module, float]:
    """Child ``i`` on ``dev`` in eval mode (moved from its unit's store into the children store when
    trained there) and its test accuracy."""
    from distill.store import Store

    name = f"children/{i}"
    if writer is None:  # every child was trained here and returned its state
        child = copy.deepcopy(base).to(dev)
        child.load_state_dict(returned[i]["state"])
        attrs = returned[i]["attrs"]
    elif i in units:  # move the unit's own store into the children store
        out = units[i].out
        assert out is not None  # with a children store, each unit writes its own
        unit_store = Store(out)
        attrs = unit_store.load_state(name)[1]
        child = unit_store.load_module(name, dev)
        writer.save_module(name, child, {k: v for k, v in attrs.items() if k not in ("spec", "complete", "written_at")})
        shutil.rmtree(unit_store.path) if unit_store.path.is_dir() else unit_store.path.unlink()
    else:
        attrs = writer.load_state(name)[1]
        child = writer.load_module(name, dev)
    acc = attrs.get("test_accuracy")
    acc = float(acc) if acc is not None else evaluate(child, data, "test", device=dev)[1]
    return child.eval(), acc


def _pairs(
    children: list[tuple[nn.Module, float]],
    seeds: list[int],
    data: Any,
    dev: torch.device,
    path: dict[str, Any],
    options: dict[str, Any],
) -> xr.Dataset:
    """Paths (`linear_path` with ``path`` and ``options``) and barriers between every pair of children, with
    each child's test accuracy; attrs: the paths' own, without the a_/b_ provenance."""
    pairs = list(itertools.combinations(range(len(children)), 2))
    curves = [linear_path(children[i][0], children[j][0], data, **path, device=dev, **options) for i, j in pairs]
    ds = xr.concat([xr.Dataset(c.data_vars, c.coords) for c in curves], dim="pair")  # without attrs
    ds = ds.assign_coords(
        pair=("pair", [f"{i}-{j}" for i, j in pairs]),
        child_i=("pair", np.array([i for i, _ in pairs], dtype=np.int64)),
        child_j=("pair", np.array([j for _, j in pairs], dtype=np.int64)),
    )
    ds.attrs = curves[0].attrs
    ds = with_barriers(ds.transpose("pair", "alpha", "split"))
    ds["child_test_accuracy"] = xr.DataArray(
        np.asarray([acc for _, acc in children], dtype=np.float64),
        dims="child",
        coords={
            "child": np.arange(len(children), dtype=np.int64),
            "child_seed": ("child", np.asarray(seeds, dtype=np.int64)),
        },
        attrs={"long_name": "test accuracy of each child after training", "units": "fraction"},
    )
    ds["pair"].attrs = {"long_name": "pair of children i-j"}
    ds["child"].attrs = {"long_name": "child index"}
    return ds
