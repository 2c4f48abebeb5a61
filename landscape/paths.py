"""Linear paths between two networks and the barrier heights along them.

``linear_path(a, b, data)`` evaluates ``theta(alpha) = (1 - alpha) theta_a + alpha theta_b`` on
the chosen splits and returns an ``xarray.Dataset`` with dims (alpha, split); ``barrier(ds)``
reduces such curves to the error barrier of Frankle et al. (2020) and a loss barrier.

Example:

```python
ds = linear_path((store, 10), (store, 20), data, alphas=30, bn="reset")
landscape.barrier(ds).barrier_error.sel(split="test")  # or .to_series(): one value per split, labelled
```
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import Tensor, nn

from distill.bn import has_batchnorm
from distill.device import resolve_device
from distill.options import with_config
from distill.schema import result_dataset
from landscape.configs import PathConfig
from landscape.evaluate import PathInputs, compile_name, lerp, run_segment, trial_backends
from landscape.points import EvalSettings, check_same_architecture, stamp_result, use_channels_last
from landscape.refs import load_ref, require_classifier

PATH_DEFINITION = (
    "theta(alpha) = (1 - alpha) * theta_a + alpha * theta_b over every floating-point "
    "parameter and buffer; integer buffers from a"
)
BARRIER_ERROR_DEFINITION = "max_alpha err(alpha) - (err(0) + err(1)) / 2 (Frankle et al. 2020)"
BARRIER_LOSS_DEFINITION = "max_alpha [L(alpha) - ((1 - alpha) * L(0) + alpha * L(1))]"
# (model, sa, sb, alphas, policy, inputs, eval_batch_size, alpha chunk): a segment for `run_segment`
_Segment = tuple[nn.Module, Mapping[str, Tensor], Mapping[str, Tensor], list[float], str, PathInputs, int, int]
# auto picks vmap only on CUDA and only for models up to this many parameters (see _choose_backend)
VMAP_MAX_PARAMS = 25_000_000


# ----------------------------------------------------------------------------- state helpers
def interpolate_state(sd_a: Mapping[str, Tensor], sd_b: Mapping[str, Tensor], alpha: float) -> dict[str, Tensor]:
    """State dict at ``alpha`` on the line from ``sd_a`` (alpha = 0) to ``sd_b`` (alpha = 1).

    Floating-point entries (parameters and buffers, BN running statistics included) become
    ``(1 - alpha) * a + alpha * b``; integer entries (e.g. ``num_batches_tracked``) are copied from
    ``sd_a``. Both ends are exact. Raises ValueError naming the first key whose shape differs.
    """
    check_same_architecture(sd_a, sd_b)
    out = {}
    for k, ta in sd_a.items():
        tb = sd_b[k]
        if ta.is_floating_point():
            out[k] = lerp(ta.detach(), tb.detach().to(ta.device, ta.dtype), float(alpha))
        else:
            out[k] = ta.detach().clone()
    return out


# ----------------------------------------------------------------------------- argument handling
def _alpha_values(alphas: int | Sequence[float]) -> np.ndarray:
    if isinstance(alphas, bool):
        raise ValueError(f"alphas={alphas}: pass an int >= 2 (a point count) or a sequence of finite numbers")
    if isinstance(alphas, (int, np.integer)):
        if alphas < 2:
            raise ValueError(f"alphas={alphas}: ask for at least 2 points (both ends are included)")
        return np.linspace(0.0, 1.0, int(alphas))
    values = np.asarray([float(a) for a in alphas], dtype=np.float64)
    if values.ndim != 1 or len(values) == 0 or not np.all(np.isfinite(values)):
        raise ValueError("alphas must be an int >= 2 or a non-empty sequence of finite numbers")
    if len(np.unique(values)) != len(values):
        raise ValueError("alphas contains repeated values: pass each interpolation coefficient once")
    return values


def _choose_backend(requested: str, device: torch.device, model: nn.Module, n_alphas: int) -> str:
    """``auto``: loop on CPU (vmap ran at 0.5-0.8x the loop's speed there, bench/bench_paths.py);
    on CUDA, vmap is the candidate for models up to VMAP_MAX_PARAMS parameters without dropout and
    more than one alpha; `linear_path` then times both on a short trial on the device
    (`landscape.evaluate.trial_backends`) and keeps the faster, recorded in ``backend_rule``."""
    if requested != "auto":
        return requested
    if device.type != "cuda" or n_alphas < 2:
        return "loop"
    if any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules()):
        return "loop"  # train-mode randomness in the BN reset would differ from the loop's
    n_params = sum(p.numel() for p in model.parameters())
    return "vmap" if n_params <= VMAP_MAX_PARAMS else "loop"


# ----------------------------------------------------------------------------- public API
@with_config(PathConfig)
def linear_path(
    a: Any, b: Any, data: Any, *, config: PathConfig, compile: bool | str | Callable[..., Any] = False
) -> xr.Dataset:
    """Loss and error along ``theta(alpha) = (1 - alpha) theta_a + alpha theta_b``.

    a, b: ``nn.Module`` (never modified) or references for ``distill.store.as_module``
        (``(store_or_path, epoch)`` or ``(store_or_path, name)``); same architecture, and
        classifiers for ``data``'s classes (a distilled student is not one: its DINO head has
        65,536 outputs; a ValueError names `landscape.instability` and
        `distill.supervised.with_classifier`, which make classifiers from it).
    ``backend="auto"`` runs the loop on a CPU (vmap measured ~0.5-0.8x its speed there); on CUDA it
    times both evaluators on a short trial for models up to 25M parameters without dropout.

    Args:
        data: a ``distill.Dataset`` (uint8 ``train``/``test`` splits, per-channel ``mean``/``std``).
        compile: evaluate the loop backend's forward through ``torch.compile`` (True: inductor, or a
            backend name or callable), compiled once per architecture and process and reused by every
            alpha and every later path of that architecture (`landscape.evaluate.compiled_forward`);
            recorded in attrs ``compile`` (``none`` when off or when vmap evaluates).

    Returns:
        An ``xr.Dataset`` with dims (alpha, split): ``loss`` (mean cross-entropy, nats) and
        ``error`` (1 - accuracy, fraction), evaluated in eval mode in fp32; attrs hold provenance
        (``n_alphas``: the number of points).
    """
    c = config
    splits = _splits(c.splits)
    ev = EvalSettings.of(c)
    alpha_values = _alpha_values(c.alphas)
    alist = [float(x) for x in alpha_values]
    dev = resolve_device(c.device)
    model, sa, sb, provenance = _endpoints(a, b, data, dev, c.align, c.align_options)
    policy = c.bn if has_batchnorm(model) else "none"
    chosen = _choose_backend(c.backend, dev, model, len(alpha_values))
    chunk = c.alpha_chunk if c.alpha_chunk is not None else min(8, len(alpha_values))
    use_cl = use_channels_last(c.channels_last, dev, model, data.train.images.dim(), chosen)
    empty = f"empty split among {splits}: pass a dataset with examples in every split evaluated"
    inputs = ev.inputs(data, splits, dev, policy == "reset" or c.repair, use_cl, empty)
    compile_backend = ("inductor" if compile is True else compile) or None
    args: _Segment = (model, sa, sb, alist, policy, inputs, ev.eval_batch_size, chunk)
    if c.repair:
        (loss, error), chosen, rule = _repaired(args), "loop", "repair: loop"
    else:
        loss, error, chosen, rule = _evaluate(args, c.backend, chosen, compile_backend)
    attrs = _attrs(policy, chosen, rule, ev, inputs, data, provenance, dev)
    attrs.update(
        {
            "compile": compile_name(compile_backend if chosen == "loop" and not c.repair else None),
            "alpha_chunk": chunk if chosen == "vmap" else 1,
            "memory_format": "channels_last" if use_cl else "contiguous",
            "n_alphas": len(alpha_values),
            "repair": int(bool(c.repair)),
        }
    )
    leave_out = ("backend", "alpha_chunk", "memory_format", "device", "compile")
    stamp_result(attrs, model, "lmc", dev, leave_out, alphas=alist)
    dims, coords = ("alpha", "split"), {"alpha": ("alpha", alpha_values), "split": ("split", np.array(splits))}
    return result_dataset("linear_path", {"loss": (dims, loss), "error": (dims, error)}, coords, attrs)


def _splits(splits: str | Sequence[str]) -> tuple[str, ...]:
    out = (splits,) if isinstance(splits, str) else tuple(splits)
    if not out or len(set(out)) != len(out) or any(s not in ("train", "test") for s in out):
        raise ValueError(f"splits={out!r}: pass distinct names among 'train' and 'test'")
    return out


def _attrs(
    policy: str,
    chosen: str,
    rule: str,
    ev: EvalSettings,
    inputs: PathInputs,
    data: Any,
    provenance: Mapping[str, Any],
    dev: torch.device,
) -> dict[str, Any]:
    """The path's attrs but those of the evaluator's set-up."""
    return {
        "path_definition": PATH_DEFINITION,
        "bn_policy": policy,
        "backend": chosen,
        "backend_rule": rule,
        "precision": "fp32",
        "device": str(dev),
        **ev.attrs(),
        "bn_examples": sum(len(x) for x in inputs.bn),
        "dataset": str(getattr(data, "name", "")),
        **provenance,
        **{f"examples_{s}": n for s, n in inputs.counts.items()},
    }


def _endpoints(
    a: Any, b: Any, data: Any, dev: torch.device, align: str | None, align_options: Mapping[str, Any] | None
) -> tuple[nn.Module, dict[str, Tensor], dict[str, Tensor], dict[str, Any]]:
    """(working copy of a, a's state, b's state (aligned onto a when asked), provenance attrs: the
    alignment record and the a_/b_ reference info); both checked to be classifiers of one architecture."""
    model, info_a = load_ref(a, dev)
    module_b, info_b = (b, {"source": "module"}) if isinstance(b, nn.Module) else load_ref(b, dev)
    require_classifier(model, data, "a", info_a["source"])
    require_classifier(module_b, data, "b", info_b["source"])
    sd_b = module_b.state_dict()
    check_same_architecture(model.state_dict(), sd_b)
    align_record: dict[str, Any] = {"align": "none"}
    if align is not None:
        from landscape.align import align as align_models

        module_b = copy.deepcopy(b).to(dev) if isinstance(b, nn.Module) else module_b
        aligned, align_record = align_models(model, module_b, align, data, **dict(align_options or {}))
        sd_b = aligned.state_dict()
    sa = {k: v.detach().clone() for k, v in model.state_dict().items()}
    sb = {k: v.detach().to(dev, v.dtype) for k, v in sd_b.items()}
    model.requires_grad_(False)
    provenance = {**align_record, **{f"a_{k}": v for k, v in info_a.items()}}
    provenance.update({f"b_{k}": v for k, v in info_b.items()})
    return model, sa, sb, provenance


def _evaluate(
    args: _Segment, backend: str, chosen: str, compile_backend: str | Callable[..., Any] | None
) -> tuple[np.ndarray, np.ndarray, str, str]:
    """Loss, error, the evaluator used and the rule that chose it, for ``args`` = (model, sa, sb,
    alphas, policy, inputs, eval_batch_size, alpha chunk) of `run_segment`; ``auto`` on CUDA times
    both evaluators on a short trial (`trial_backends`) first and keeps the faster."""
    dev = args[5].mean.device
    rule = "requested" if backend != "auto" else f"cuda: {chosen} by model type"
    if backend == "auto" and dev.type != "cuda":
        rule = "cpu: loop (vmap measured 0.5-0.8x the loop there)"
    if backend == "auto" and chosen == "vmap" and dev.type == "cuda":
        trial = trial_backends(*args)
        chosen = "vmap" if trial["vmap"] < trial["loop"] else "loop"
        rule = (
            f"cuda: measured {1e3 * trial['loop']:.2f} ms/alpha loop, {1e3 * trial['vmap']:.2f} ms/alpha "
            f"vmap on a trial of {min(args[7], len(args[3]))} alphas x (1 BN batch + 1 eval batch): {chosen}"
        )
    loss, error, chosen = run_segment(*args, backend, chosen, compile_backend)
    return loss, error, chosen, rule


def _repaired(args: _Segment) -> tuple[np.ndarray, np.ndarray]:
    """Loss and error (alpha, split) of the REPAIRed network at each alpha (`landscape.repair.repair_state`),
    for ``args`` as in `_evaluate`, evaluated by the loop."""
    from landscape.repair import endpoint_stats, repair_state

    model, sa, sb, alist, policy, inputs, eval_batch_size, _ = args
    rows, stats = [], endpoint_stats(model, sa, sb, inputs.bn)
    for x in alist:
        s = repair_state(model, sa, sb, x, inputs.bn, stats)
        rows.append(run_segment(model, s, s, [0.0], policy, inputs, eval_batch_size, 1, "loop", "loop")[:2])
    return np.concatenate([r[0] for r in rows]), np.concatenate([r[1] for r in rows])


def barrier(ds: xr.Dataset) -> xr.Dataset:
    """Barrier heights of the curves in ``ds`` (from `linear_path`), reduced over ``alpha``.

    ``barrier_error = max_alpha err(alpha) - (err(0) + err(1)) / 2`` (Frankle et al. 2020) and
    ``barrier_loss = max_alpha [L(alpha) - ((1 - alpha) L(0) + alpha L(1))]``, for every split
    and any other dimension (e.g. ``pair``). The path must contain alpha = 0 and alpha = 1.

    Returns:
        An ``xr.Dataset`` that keeps ``ds.attrs`` and adds both definitions. Its variables have the
        dims of ``ds`` but ``alpha``: ``split`` (labelled with the splits the path evaluated, in
        its order: ``.sel(split="test")``; ``.to_series()`` prints each value beside its split,
        where ``.values`` drops the labels) and any other, e.g. ``pair``.
    """
    if "alpha" not in ds.dims:
        raise ValueError("barrier needs a Dataset with an 'alpha' dimension, e.g. the result of linear_path")
    if "error" not in ds and "loss" not in ds:
        raise ValueError("barrier needs an 'error' or 'loss' variable along alpha")
    alpha = ds["alpha"]
    ends = []
    for end in (0.0, 1.0):
        hits = np.flatnonzero(np.isclose(alpha.values, end, rtol=0, atol=1e-12))
        if len(hits) != 1:
            raise ValueError(f"barrier needs alpha={end:g} exactly once on the path; include both ends")
        ends.append(int(hits[0]))
    i0, i1 = ends
    out = {}
    if "error" in ds:
        err = ds["error"]
        out["barrier_error"] = err.max("alpha") - (err.isel(alpha=i0, drop=True) + err.isel(alpha=i1, drop=True)) / 2
    if "loss" in ds:
        loss = ds["loss"]
        chord = (1 - alpha) * loss.isel(alpha=i0, drop=True) + alpha * loss.isel(alpha=i1, drop=True)
        out["barrier_loss"] = (loss - chord).max("alpha")
    attrs = dict(ds.attrs)
    attrs["barrier_error_definition"] = BARRIER_ERROR_DEFINITION
    attrs["barrier_loss_definition"] = BARRIER_LOSS_DEFINITION
    heights = result_dataset("barrier", out, attrs=attrs)
    for k, v in (("barrier_error", "error"), ("barrier_loss", "loss")):  # the units of the curves
        if k in heights and "units" in ds[v].attrs:
            heights[k].attrs["units"] = ds[v].attrs["units"]
    return heights


def with_barriers(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` (curves along ``alpha``, e.g. from `linear_path`) with the heights of `barrier` beside
    them, ``barrier_error`` and ``barrier_loss``, and both definitions in its attrs."""
    heights = barrier(ds)
    out = ds.assign({k: heights[k] for k in ("barrier_error", "barrier_loss") if k in heights})
    out.attrs.update({k: v for k, v in heights.attrs.items() if k.endswith("_definition") and k.startswith("barrier")})
    return out
