"""Lottery-ticket sweeps over rewind targets and replicate seeds, one work unit (and store) each.

``lottery_sweep(start, data, rewinds=["start", "init"], seeds=[0, 1, 2], out_dir=..., executor=ex)``
runs `landscape.lottery.lottery` once per (rewind target, seed), each with its own store
``<out_dir>/lottery-<rewind>-seed<seed>.rts``, through any ``concurrent.futures.Executor``
(`landscape.executors`); finished units are skipped and unfinished ones resume from their
store. The result is `lottery`'s Dataset concatenated over ``rewind`` and, with several
seeds, over a new ``seed`` dim: the same numbers as one ``lottery(..., rewind=[...], seed=s)``
call per seed (which shares level 0 between 'start' and 'step'; separate units train it twice).
"""

from __future__ import annotations

import json
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from torch import nn

from distill.config import SupervisedConfig
from distill.options import with_config
from distill.provenance import stamp
from distill.store import Store
from distill.store.names import SUFFIX, store_name
from landscape.configs import LotterySweepConfig
from landscape.executors import run_units
from landscape.units import finished


def _start_key(start: Any) -> str:
    if isinstance(start, nn.Module):
        from landscape.lottery import _fingerprint

        return f"module#{_fingerprint(start)}"
    if isinstance(start, (tuple, list)) and len(start) == 2:
        return f"{getattr(start[0], 'path', start[0])}#{start[1]}"
    raise TypeError(f"expected an nn.Module or a (store, epoch|name) pair, got {type(start).__name__}")


@dataclass(frozen=True)
class LotteryUnit:
    """One IMP sequence (one rewind target, one seed) as a work unit: picklable, writes its own store,
    done when that store holds the finished result of the same settings."""

    start: Any  # an nn.Module (on the CPU) or (store path, epoch | name)
    data: Any
    out: str
    options: dict = field(default_factory=dict)  # lottery() keywords; "cfg" as a SupervisedConfig dict

    def key(self) -> str:
        """The unit's settings as canonical JSON (recorded in its result, compared by `done`)."""
        return json.dumps({"start": _start_key(self.start), **self.options}, sort_keys=True, default=str)

    def done(self) -> bool:
        """Whether the unit's store holds the finished result of the same settings (`key`)."""
        return finished(
            self.out,
            lambda store: (
                "lottery" in store.results() and store.read_result("lottery").attrs.get("work_unit") == self.key()
            ),
        )

    def __call__(self) -> str:
        from landscape.lottery import lottery

        if self.done():
            return self.out
        opts = dict(self.options)
        cfg = SupervisedConfig.from_dict(opts.pop("cfg"))
        ds = lottery(self.start, self.data, cfg=cfg, store=self.out, progress=False, **opts)
        ds.attrs["work_unit"] = self.key()
        with Store(self.out, "a") as store:
            store.write_result("lottery", ds)
        return self.out


def _concat(parts: list[xr.Dataset], dim: Any) -> xr.Dataset:
    """``parts`` side by side along ``dim`` (a name or a coordinate), sharing what does not vary."""
    if len(parts) == 1:
        return parts[0]
    return xr.concat(parts, dim=dim, data_vars="minimal", coords="minimal", compat="equals", combine_attrs="override")


@with_config(LotterySweepConfig)
def lottery_sweep(
    start: Any,
    data: Any,
    *,
    config: LotterySweepConfig,
    out_dir: str | Path = "runs/lottery",
    executor: Executor | None = None,
    progress: bool | None = None,
    **options: Any,
) -> xr.Dataset:
    """IMP for every (rewind target, seed), one store each (see the module docstring).

    Args:
        start: an ``nn.Module`` or ``(store_or_path, epoch | name)``.
        **options: the other keywords of `landscape.lottery.lottery` (levels, prune_fraction, prunable,
            rewind_step, baselines, device, ...).

    Returns:
        A Dataset over (rewind, level) [+ method], with a ``seed`` dim when ``len(seeds) > 1``; attrs
        ``stores`` (JSON list of the per-unit stores) and provenance.
    """
    rewinds, seeds, cfg = [str(r) for r in config.rewinds], [int(s) for s in config.seeds], config.cfg
    if not rewinds or not seeds:
        raise ValueError("pass at least one rewind target and one seed")
    ref = start
    if isinstance(start, (tuple, list)) and len(start) == 2:
        ref = (str(getattr(start[0], "path", start[0])), start[1])
    elif isinstance(start, nn.Module):
        import copy

        ref = copy.deepcopy(start).cpu()
    out_dir = Path(out_dir)
    units = {
        (r, s): LotteryUnit(
            ref,
            data,
            str(store_name(out_dir / f"lottery-{r}-seed{s}{SUFFIX}")),
            {**options, "rewind": r, "seed": s, "cfg": cfg.to_dict()},
        )
        for s in seeds
        for r in rewinds
    }
    run_units(list(units.values()), executor, desc="lottery", progress=progress)

    per_seed = [_concat([Store(units[(r, s)].out).read_result("lottery") for r in rewinds], "rewind") for s in seeds]
    ds = _concat(per_seed, xr.DataArray(np.asarray(seeds, dtype=np.int64), dims="seed", name="seed"))
    attrs = {k: v for k, v in per_seed[0].attrs.items() if k not in ("work_unit", "store", "seed")}
    attrs["stores"] = json.dumps([units[k].out for k in units])
    attrs["seeds"] = json.dumps(seeds)
    device = attrs.get("device", "cpu")
    stamp(
        attrs,
        {
            "start": _start_key(ref),
            "rewinds": rewinds,
            "seeds": seeds,
            "cfg": cfg.to_dict(),
            **{k: v for k, v in options.items() if k != "device"},
        },
        kind="lottery",
        device=device,
        precision=attrs.get("precision", "fp32"),
    )
    ds.attrs = attrs
    return ds
