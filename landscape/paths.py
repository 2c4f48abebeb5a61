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
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import Tensor, nn

from distill.bn import has_batchnorm
from distill.device import resolve_device
from distill.options import with_config
from distill.provenance import stamp
from landscape.configs import PathConfig
from landscape.evaluate import POLICIES, compile_name, lerp, prepare_inputs, run_segment, trial_backends
from landscape.refs import load_ref, require_classifier

BACKENDS = ("auto", "loop", "vmap")
PATH_DEFINITION = (
    "theta(alpha) = (1 - alpha) * theta_a + alpha * theta_b over every floating-point "
    "parameter and buffer; integer buffers from a"
)
BARRIER_ERROR_DEFINITION = "max_alpha err(alpha) - (err(0) + err(1)) / 2 (Frankle et al. 2020)"
BARRIER_LOSS_DEFINITION = "max_alpha [L(alpha) - ((1 - alpha) * L(0) + alpha * L(1))]"
# auto picks vmap only on CUDA and only for models up to this many parameters (see _choose_backend)
VMAP_MAX_PARAMS = 25_000_000


# ----------------------------------------------------------------------------- state helpers
def _check_same_architecture(sd_a: Mapping[str, Tensor], sd_b: Mapping[str, Tensor]) -> None:
    keys = list(sd_a) + [k for k in sd_b if k not in sd_a]
    for k in keys:
        ta, tb = sd_a.get(k), sd_b.get(k)
        shape_a = tuple(ta.shape) if ta is not None else "no such key"
        shape_b = tuple(tb.shape) if tb is not None else "no such key"
        if ta is None or tb is None or ta.shape != tb.shape or ta.is_floating_point() != tb.is_floating_point():
            raise ValueError(
                f"models differ at state_dict key {k!r}: a has {shape_a} ({_dtype(ta)}), "
                f"b has {shape_b} ({_dtype(tb)}); interpolate between two models of one architecture"
            )


def _dtype(t: Tensor | None) -> str:
    return "-" if t is None else str(t.dtype).replace("torch.", "")


def interpolate_state(sd_a: Mapping[str, Tensor], sd_b: Mapping[str, Tensor], alpha: float) -> dict[str, Tensor]:
    """State dict at ``alpha`` on the line from ``sd_a`` (alpha = 0) to ``sd_b`` (alpha = 1).

    Floating-point entries (parameters and buffers, BN running statistics included) become
    ``(1 - alpha) * a + alpha * b``; integer entries (e.g. ``num_batches_tracked``) are copied from
    ``sd_a``. Both ends are exact. Raises ValueError naming the first key whose shape differs.
    """
    _check_same_architecture(sd_a, sd_b)
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


def _resolve(ref: Any, device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    """(module for our own use, provenance attrs without the a_/b_ prefix): `landscape.refs.load_ref`."""
    return load_ref(ref, device)


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


def _use_channels_last(option: bool | None, device: torch.device, model: nn.Module, ndim: int) -> bool:
    if option is not None:
        return bool(option)
    return device.type == "cpu" and ndim == 4 and any(isinstance(m, nn.Conv2d) for m in model.modules())


def _positive(name: str, value: int) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}={value!r}: pass a positive integer")
    return int(value)


# ----------------------------------------------------------------------------- public API
@with_config(PathConfig)
def linear_path(
    a: Any,
    b: Any,
    data: Any,
    *,
    alphas: int | Sequence[float],
    bn: str,
    splits: Sequence[str],
    bn_batches: int,
    bn_batch_size: int,
    bn_seed: int,
    eval_batch_size: int,
    max_examples: int | None,
    backend: str,
    device: str | torch.device,
    eval_seed: int,
    alpha_chunk: int | None,
    channels_last: bool | None,
    align: str | None,
    align_options: Mapping[str, Any] | None,
    repair: bool,
    compile: bool | str | Callable[..., Any] = False,
) -> xr.Dataset:
    """Loss and error along ``theta(alpha) = (1 - alpha) theta_a + alpha theta_b``.

    a, b: ``nn.Module`` (never modified) or references for ``distill.store.as_module``
        (``(store_or_path, epoch)`` or ``(store_or_path, name)``); same architecture, and
        classifiers for ``data``'s classes (a distilled student is not one: its DINO head has
        65,536 outputs; a ValueError names `landscape.instability` and
        `distill.supervised.with_classifier`, which make classifiers from it).

    Args:
        data: a ``distill.Dataset`` (uint8 ``train``/``test`` splits, per-channel ``mean``/``std``).
        alphas: number of evenly spaced points in [0, 1] (both ends included) or the values themselves;
            default 30, the grid of Frankle et al. 2020 (the paper's Figure 9 uses 50); stored as attrs
            ``n_alphas`` and coordinate ``alpha``.
        bn: BatchNorm running statistics at each alpha: ``reset`` (re-estimated, exactly as
            ``torch.optim.swa_utils.update_bn``, on ``bn_batches`` batches of ``bn_batch_size``
            training images drawn once with ``bn_seed`` and shared by every alpha), ``interpolate``
            (like the weights) or ``keep_a``. Ignored (recorded as ``none``) without BN layers.
        max_examples: evaluate a subset of this size per split, drawn with ``eval_seed``; None = all.
        backend: ``loop`` (reference), ``vmap`` (``alpha_chunk`` alphas per pass, default 8; an
            evaluation pass holds ``eval_batch_size`` images in all, a BN-reset pass ``alpha_chunk``
            x ``bn_batch_size``) or ``auto`` (loop on CPU, where vmap measured ~0.5-0.8x the loop's
            speed; vmap on CUDA for models up to 25M parameters without dropout).
        channels_last: None = on for conv nets on CPU (loop backend); then results match a plain
            evaluation to float rounding (~1e-6) rather than bit for bit.
        align: None, ``weights`` or ``activations``: permute b's hidden units onto a first
            (`landscape.align.align`, options ``align_options``); recorded in attrs (``align_*``).
        repair: rescale the interpolated network's channels not followed by BatchNorm to the
            interpolated endpoint statistics at each alpha (`landscape.align.repair_state`, on
            the BN-reset batches); evaluated with the loop backend.
        compile: evaluate the loop backend's forward through ``torch.compile`` (True: inductor, or a
            backend name or callable), compiled once per architecture and process and reused by every
            alpha and every later path of that architecture (`landscape.evaluate.compiled_forward`);
            recorded in attrs ``compile`` (``none`` when off or when vmap evaluates).

    Returns:
        An ``xr.Dataset`` with dims (alpha, split): ``loss`` (mean cross-entropy, nats) and
        ``error`` (1 - accuracy, fraction), evaluated in eval mode in fp32; attrs hold provenance.
    """
    if bn not in POLICIES:
        raise ValueError(f"bn={bn!r}: choose one of {', '.join(POLICIES)}")
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: choose one of {', '.join(BACKENDS)}")
    splits = (splits,) if isinstance(splits, str) else tuple(splits)
    if not splits or len(set(splits)) != len(splits) or any(s not in ("train", "test") for s in splits):
        raise ValueError(f"splits={splits!r}: pass distinct names among 'train' and 'test'")
    bn_batches = _positive("bn_batches", bn_batches)
    bn_batch_size = _positive("bn_batch_size", bn_batch_size)
    eval_batch_size = _positive("eval_batch_size", eval_batch_size)
    if max_examples is not None:
        max_examples = _positive("max_examples", max_examples)
    alpha_values = _alpha_values(alphas)
    dev = resolve_device(device)

    model, info_a = _resolve(a, dev)
    if isinstance(b, nn.Module):
        module_b, info_b = b, {"source": "module"}
    else:
        module_b, info_b = _resolve(b, dev)
    require_classifier(model, data, "a", info_a["source"])
    require_classifier(module_b, data, "b", info_b["source"])
    sd_b = module_b.state_dict()
    _check_same_architecture(model.state_dict(), sd_b)
    align_record: dict[str, Any] = {"align": "none"}
    if align is not None:
        from landscape.align import align as align_models

        module_b = copy.deepcopy(b).to(dev) if isinstance(b, nn.Module) else module_b
        aligned, align_record = align_models(model, module_b, align, data, **dict(align_options or {}))
        sd_b = aligned.state_dict()
    sa = {k: v.detach().clone() for k, v in model.state_dict().items()}
    sb = {k: v.detach().to(dev, v.dtype) for k, v in sd_b.items()}
    model.requires_grad_(False)

    policy = bn if has_batchnorm(model) else "none"
    chosen = _choose_backend(backend, dev, model, len(alpha_values))
    chunk = _positive("alpha_chunk", alpha_chunk) if alpha_chunk is not None else min(8, len(alpha_values))
    use_cl = chosen == "loop" and _use_channels_last(channels_last, dev, model, data.train.images.dim())
    inputs = prepare_inputs(
        data,
        splits,
        bn_batches=bn_batches,
        bn_batch_size=bn_batch_size,
        bn_seed=bn_seed,
        max_examples=max_examples,
        eval_seed=eval_seed,
        device=dev,
        need_bn=policy == "reset" or repair,
        channels_last=use_cl,
    )
    if any(n == 0 for n in inputs.counts.values()):
        raise ValueError(f"empty split among {splits}: pass a dataset with examples in every split evaluated")
    alist = [float(x) for x in alpha_values]
    rule = (
        "requested"
        if backend != "auto"
        else (
            "cpu: loop (vmap measured 0.5-0.8x the loop there)"
            if dev.type != "cuda"
            else f"cuda: {chosen} by model type"
        )
    )
    compile_backend = ("inductor" if compile is True else compile) or None
    if repair:
        from landscape.align import endpoint_stats, repair_state

        rows, stats = [], endpoint_stats(model, sa, sb, inputs.bn)
        for x in alist:
            s = repair_state(model, sa, sb, x, inputs.bn, stats)
            rows.append(run_segment(model, s, s, [0.0], policy, inputs, eval_batch_size, 1, "loop", "loop")[:2])
        loss, error, chosen = np.concatenate([r[0] for r in rows]), np.concatenate([r[1] for r in rows]), "loop"
        rule = "repair: loop"
    else:
        if backend == "auto" and chosen == "vmap" and dev.type == "cuda":
            trial = trial_backends(model, sa, sb, alist, policy, inputs, eval_batch_size, chunk)
            chosen = "vmap" if trial["vmap"] < trial["loop"] else "loop"
            rule = (
                f"cuda: measured {1e3 * trial['loop']:.2f} ms/alpha loop, {1e3 * trial['vmap']:.2f} ms/alpha "
                f"vmap on a trial of {min(chunk, len(alist))} alphas x (1 BN batch + 1 eval batch): {chosen}"
            )
        loss, error, chosen = run_segment(
            model, sa, sb, alist, policy, inputs, eval_batch_size, chunk, backend, chosen, compile_backend
        )

    attrs: dict[str, Any] = {
        "path_definition": PATH_DEFINITION,
        "bn_policy": policy,
        "backend": chosen,
        "backend_rule": rule,
        "compile": compile_name(compile_backend if chosen == "loop" and not repair else None),
        "alpha_chunk": chunk if chosen == "vmap" else 1,
        "precision": "fp32",
        "device": str(dev),
        "memory_format": "channels_last" if use_cl else "contiguous",
        "n_alphas": len(alpha_values),
        "bn_batches": bn_batches,
        "bn_batch_size": bn_batch_size,
        "bn_seed": bn_seed,
        "bn_examples": sum(len(x) for x in inputs.bn),
        "eval_batch_size": eval_batch_size,
        "eval_seed": eval_seed,
        "dataset": str(getattr(data, "name", "")),
        "repair": int(bool(repair)),
    }
    attrs.update(align_record)
    attrs.update({f"examples_{s}": n for s, n in inputs.counts.items()})
    attrs.update({f"a_{k}": v for k, v in info_a.items()})
    attrs.update({f"b_{k}": v for k, v in info_b.items()})
    spec = getattr(model, "spec", None)
    if isinstance(spec, Mapping):
        attrs["model_spec"] = json.dumps(spec, sort_keys=True, default=str)
    recipe = {
        k: v for k, v in attrs.items() if k not in ("backend", "alpha_chunk", "memory_format", "device", "compile")
    }
    recipe["alphas"] = [float(x) for x in alpha_values]
    stamp(attrs, recipe, kind="lmc", device=dev, precision="fp32")

    return xr.Dataset(
        {
            "loss": (("alpha", "split"), loss, {"long_name": "cross-entropy loss", "units": "nats"}),
            "error": (("alpha", "split"), error, {"long_name": "classification error", "units": "fraction"}),
        },
        coords={
            "alpha": ("alpha", alpha_values, {"long_name": "interpolation coefficient", "units": "1"}),
            "split": ("split", np.array(splits)),
        },
        attrs=attrs,
    )


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
        height = err.max("alpha") - (err.isel(alpha=i0, drop=True) + err.isel(alpha=i1, drop=True)) / 2
        height.attrs = {"long_name": "error barrier", "units": err.attrs.get("units", "fraction")}
        out["barrier_error"] = height
    if "loss" in ds:
        loss = ds["loss"]
        chord = (1 - alpha) * loss.isel(alpha=i0, drop=True) + alpha * loss.isel(alpha=i1, drop=True)
        height = (loss - chord).max("alpha")
        height.attrs = {"long_name": "loss barrier", "units": loss.attrs.get("units", "nats")}
        out["barrier_loss"] = height
    attrs = dict(ds.attrs)
    attrs["barrier_error_definition"] = BARRIER_ERROR_DEFINITION
    attrs["barrier_loss_definition"] = BARRIER_LOSS_DEFINITION
    return xr.Dataset(out, attrs=attrs)
