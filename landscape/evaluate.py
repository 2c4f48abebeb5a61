"""Evaluators for points on a straight line between two networks of one architecture.

Two implementations behind one interface, used by `landscape.paths.linear_path`:

- `run_loop` (reference): one working copy of the model; per alpha the interpolated
  tensors are copied into it, BatchNorm statistics are re-estimated with
  `distill.bn.recalibrate_bn` when asked, and each split is evaluated batch by batch.
- `run_vmap`: a chunk of alphas in one pass with ``torch.func.functional_call`` +
  ``vmap`` over stacked parameters and buffers. The BN reset is done in the same batched
  form by `batched_bn_reset`, which reproduces the ``update_bn`` estimate.

Both return ``(loss, error)``: float64 arrays of shape (n_alphas, n_splits); loss is the mean
cross-entropy in nats, error = 1 - accuracy as a fraction.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap
from tqdm.auto import tqdm

from distill.bn import recalibrate_bn
from distill.device import in_mode
from landscape.configs import BN_POLICIES

__all__ = [
    "POLICIES",
    "PathInputs",
    "prepare_inputs",
    "bn_layers",
    "bn_stat_keys",
    "lerp",
    "compiled_forward",
    "compile_name",
    "run_segment",
    "trial_backends",
]

_BN = nn.modules.batchnorm._BatchNorm
POLICIES = BN_POLICIES


# ----------------------------------------------------------------------------- inputs
@dataclass
class PathInputs:
    """Evaluation data on the target device.

    ``bn``: normalised float batches (B, C, H, W) for the BN reset (empty when unused);
    ``splits``: per split name, uint8 images (N, C, H, W) and int64 labels (N,);
    ``mean``/``std``: per-channel tensors shaped (1, C, 1, ...) in [0, 1] pixel units.
    """

    bn: list[Tensor]
    splits: dict[str, tuple[Tensor, Tensor]]
    mean: Tensor
    std: Tensor
    channels_last: bool = False
    counts: dict[str, int] = field(default_factory=dict)

    def normalise(self, images: Tensor) -> Tensor:
        """uint8 images (B, C, H, W) as float, scaled to [0, 1] and standardised per channel."""
        x = images.float().div_(255).sub_(self.mean).div_(self.std)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def batches(self, split: str, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        """Normalised images (B, C, H, W) and labels (B,) of ``split``, in order, ``batch_size`` at a time."""
        images, labels = self.splits[split]
        for start in range(0, len(labels), batch_size):
            yield self.normalise(images[start : start + batch_size]), labels[start : start + batch_size]


def _channel_shape(values: Sequence[float], ndim: int, device: torch.device) -> Tensor:
    return torch.tensor([float(v) for v in values], dtype=torch.float32, device=device).view(1, -1, *[1] * (ndim - 2))


def prepare_inputs(
    data,
    splits: Sequence[str],
    *,
    bn_batches: int,
    bn_batch_size: int,
    bn_seed: int,
    max_examples: int | None,
    eval_seed: int,
    device: torch.device,
    need_bn: bool,
    channels_last: bool = False,
) -> PathInputs:
    """Draw the BN-reset batches and the evaluation subsets once.

    BN batches: ``torch.randperm(N_train, generator=Generator().manual_seed(bn_seed))``, the first
    ``bn_batches * bn_batch_size`` indices (fewer when the split is smaller), cut into consecutive
    batches of ``bn_batch_size``. Evaluation: the whole split, or, with ``max_examples``, a subset
    of that size drawn with ``eval_seed`` (kept in the split's original order).
    """
    ndim = data.train.images.dim()
    inputs = PathInputs(
        bn=[],
        splits={},
        mean=_channel_shape(data.mean, ndim, device),
        std=_channel_shape(data.std, ndim, device),
        channels_last=channels_last,
    )
    for name in splits:
        split = getattr(data, name)
        images, labels = split.images, split.labels
        n = len(labels)
        if max_examples is not None and max_examples < n:
            g = torch.Generator().manual_seed(eval_seed)
            idx = torch.randperm(n, generator=g)[:max_examples].sort().values
            images, labels = images[idx.to(images.device)], labels[idx.to(labels.device)]
        inputs.splits[name] = (images.to(device), labels.to(device=device, dtype=torch.long))
        inputs.counts[name] = len(labels)
    if need_bn:
        n = len(data.train.labels)
        g = torch.Generator().manual_seed(bn_seed)
        idx = torch.randperm(n, generator=g)[: bn_batches * bn_batch_size]
        images = data.train.images[idx.to(data.train.images.device)].to(device)
        inputs.bn = [inputs.normalise(images[s : s + bn_batch_size]) for s in range(0, len(idx), bn_batch_size)]
    return inputs


# ----------------------------------------------------------------------------- state helpers
def bn_layers(model: nn.Module) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    """BatchNorm layers that keep running statistics, with their qualified names."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _BN) and m.track_running_stats]


def _key(prefix: str, leaf: str) -> str:
    return f"{prefix}.{leaf}" if prefix else leaf


def bn_stat_keys(model: nn.Module) -> set[str]:
    """state_dict keys of the BN running mean/variance buffers."""
    return {_key(n, leaf) for n, _ in bn_layers(model) for leaf in ("running_mean", "running_var")}


def lerp(a: Tensor, b: Tensor, alpha: float) -> Tensor:
    """(1 - alpha) * a + alpha * b, with both ends exact (alpha = 0 gives a, alpha = 1 gives b)."""
    return a * (1.0 - alpha) + b * alpha


def lerp_stack(a: Tensor, b: Tensor, alphas: Tensor) -> Tensor:
    """Stack of ``lerp(a, b, alpha)`` for each alpha (float64 vector): shape (n, *a.shape)."""
    shape = (-1,) + (1,) * a.dim()
    w0 = (1.0 - alphas).to(a.dtype).view(shape)
    w1 = alphas.to(a.dtype).view(shape)
    return a.unsqueeze(0) * w0 + b.unsqueeze(0) * w1


def _score(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Summed cross-entropy (float64) and number correct, over the last-but-one axis."""
    k = logits.shape[-1]
    ce = F.cross_entropy(
        logits.reshape(-1, k).double(), labels.expand(logits.shape[:-1]).reshape(-1), reduction="none"
    ).view(logits.shape[:-1])
    correct = (logits.argmax(-1) == labels).sum(-1)
    return ce.sum(-1), correct


def _scores(
    forward: Callable[[Tensor], Tensor], inputs: PathInputs, batch_size: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Mean cross-entropy (nats) and error (fraction) of ``forward`` on every split, ``batch_size``
    images at a time; ``forward`` gives logits (B, K), or (width, B, K) for a stack of networks.
    Returns float64 arrays (width, n_splits); the sums run in float64 in batch order."""
    loss = np.zeros((width, len(inputs.splits)))
    error = np.zeros_like(loss)
    for j, name in enumerate(inputs.splits):
        total = torch.zeros(width, dtype=torch.float64, device=inputs.mean.device)
        correct = torch.zeros(width, dtype=torch.long, device=inputs.mean.device)
        for x, y in inputs.batches(name, batch_size):
            s, c = _score(forward(x), y)
            total += s
            correct += c
        n = inputs.counts[name]
        loss[:, j] = total.cpu().numpy() / n
        error[:, j] = 1.0 - correct.cpu().numpy() / n
    return loss, error


# ----------------------------------------------------------------------------- compiled forward
Forward = Callable[[Mapping[str, Tensor], Tensor], Tensor]
_COMPILED: dict[tuple[Any, ...], Forward] = {}


def _arch_key(model: nn.Module) -> tuple[Any, ...]:
    """What a compiled graph depends on: the module type and every state tensor's name, shape,
    dtype and device (not the values)."""
    state = tuple((k, tuple(v.shape), str(v.dtype), str(v.device)) for k, v in model.state_dict().items())
    return (type(model).__module__, type(model).__qualname__, state)


def compiled_forward(model: nn.Module, backend: str | Callable[..., Any] = "inductor") -> Forward:
    """``fn(state, x) -> logits``: ``model``'s eval-mode forward with every parameter and buffer
    passed as an input (``torch.func.functional_call`` on a private copy), compiled with
    ``torch.compile(backend=backend, dynamic=False)``.

    Cached per architecture (`_arch_key`) and backend for the process, so every point of a
    path and every further path between networks of that architecture (the next pruning level,
    another pair of children) reuses the same graph; a new input shape (a last, smaller batch)
    compiles one more. ``state``: the ``state_dict`` keys of ``model``.
    """
    key = (_arch_key(model), backend if isinstance(backend, str) else id(backend))
    fn = _COMPILED.get(key)
    if fn is None:
        template = copy.deepcopy(model).eval().requires_grad_(False)

        def forward(state: Mapping[str, Tensor], x: Tensor) -> Tensor:
            return functional_call(template, dict(state), (x,))

        fn = torch.compile(forward, backend=backend, dynamic=False)
        _COMPILED[key] = fn
    return fn


def compile_name(backend: str | Callable[..., Any] | None) -> str:
    """How a compile backend is recorded in attrs: ``none``, its name, or a callable's name."""
    if backend is None:
        return "none"
    return backend if isinstance(backend, str) else getattr(backend, "__name__", type(backend).__name__)


# ----------------------------------------------------------------------------- loop backend
@torch.inference_mode()
def run_loop(
    model: nn.Module,
    sa: Mapping[str, Tensor],
    sb: Mapping[str, Tensor],
    alphas: Sequence[float],
    policy: str,
    inputs: PathInputs,
    eval_batch_size: int,
    compile_backend: str | Callable[..., Any] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Evaluate each alpha in turn on ``model`` (modified in place; its state ends at the last alpha).

    ``policy`` is one of ``reset``, ``interpolate``, ``keep_a`` or ``none``. ``compile_backend``:
    evaluate through `compiled_forward` (the BN reset stays eager).
    """
    model.eval()
    if inputs.channels_last:
        model.to(memory_format=torch.channels_last)
    targets = model.state_dict()
    compiled = None if compile_backend is None else compiled_forward(model, compile_backend)
    fwd = model if compiled is None else (lambda x: compiled(targets, x))
    from_a = bn_stat_keys(model) if policy == "keep_a" else set()
    loss = np.zeros((len(alphas), len(inputs.splits)))
    error = np.zeros_like(loss)
    for i, alpha in enumerate(tqdm(alphas, desc="path (loop)", disable=None, leave=False)):
        for k, t in targets.items():
            if not t.is_floating_point() or k in from_a:
                t.copy_(sa[k])
            else:
                t.copy_(lerp(sa[k], sb[k], float(alpha)))
        if policy == "reset":
            recalibrate_bn(model, inputs.bn)
        loss[i : i + 1], error[i : i + 1] = _scores(fwd, inputs, eval_batch_size, 1)
    return loss, error


# ----------------------------------------------------------------------------- vmap backend
class _StatsRecorder:
    """Forward pre-hooks that record each BN layer's batch mean and unbiased variance."""

    def __init__(self, layers: list[tuple[str, nn.modules.batchnorm._BatchNorm]]):
        self.layers = layers
        self.order: list[int] = []
        self.stats: list[Tensor] = []
        self.handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> _StatsRecorder:
        for i, (_, m) in enumerate(self.layers):
            self.handles.append(m.register_forward_pre_hook(self._hook(i)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def _hook(self, i: int):
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0]
            dims = [0] + list(range(2, x.dim()))
            self.order.append(i)
            self.stats.append(x.mean(dims))
            self.stats.append(x.var(dims, correction=1))

        return hook

    def clear(self) -> None:
        self.order.clear()
        self.stats.clear()


def batched_bn_reset(model: nn.Module, state: dict[str, Tensor], batches: Sequence[Tensor]) -> dict[str, Tensor]:
    """Running statistics of every BN layer for a stack of states, as ``update_bn`` would estimate them.

    ``state`` maps state_dict keys to tensors with a leading alpha axis (n, ...). Each batch is
    run through ``model`` in train mode (BN normalises with batch statistics, running buffers
    untouched) under ``vmap``; the per-layer batch mean and unbiased variance are averaged
    cumulatively with weight 1/k for the k-th call, starting from mean 0 and variance 1.

    Returns:
        ``{"<layer>.running_mean": (n, C), "<layer>.running_var": (n, C)}``.
    """
    layers = bn_layers(model)
    if not layers:
        return {}
    if not batches:
        raise ValueError("BN reset got no batches: pass bn_batches >= 1 and a non-empty training split")
    skip = bn_stat_keys(model)
    inner = {k: v for k, v in state.items() if k not in skip}
    n = next(iter(inner.values())).shape[0]
    like = next(iter(inner.values()))
    mean = [torch.zeros(n, m.num_features, dtype=like.dtype, device=like.device) for _, m in layers]
    var = [torch.ones_like(t) for t in mean]
    count = [0] * len(layers)
    tracking = [m.track_running_stats for _, m in layers]
    recorder = _StatsRecorder(layers)

    def stats(params: dict[str, Tensor], x: Tensor) -> tuple[Tensor, ...]:
        recorder.clear()
        functional_call(model, params, (x,))
        return tuple(recorder.stats)

    batched = vmap(stats, in_dims=(0, None), randomness="different")
    for _, m in layers:
        m.track_running_stats = False  # batch statistics, no in-place buffer update under vmap
    try:
        with recorder, torch.inference_mode(), in_mode(model, training=True):
            for x in batches:
                out = batched(inner, x)
                for c, i in enumerate(recorder.order):
                    count[i] += 1
                    f = 1.0 / count[i]
                    mean[i] = out[2 * c] * f + mean[i] * (1.0 - f)
                    var[i] = out[2 * c + 1] * f + var[i] * (1.0 - f)
    finally:
        for (_, m), t in zip(layers, tracking):
            m.track_running_stats = t
    result = {}
    for (name, _), mu, v in zip(layers, mean, var):
        result[_key(name, "running_mean")] = mu
        result[_key(name, "running_var")] = v
    return result


def stacked_state(
    model: nn.Module,
    sa: Mapping[str, Tensor],
    sb: Mapping[str, Tensor],
    alphas: Sequence[float],
    policy: str,
    bn_batches: Sequence[Tensor] = (),
) -> dict[str, Tensor]:
    """Floating-point state of ``model`` at each alpha, stacked on a leading axis (n, ...)."""
    w = torch.tensor([float(a) for a in alphas], dtype=torch.float64)
    stat_keys = bn_stat_keys(model)
    state = {}
    for k, t in sa.items():
        if not t.is_floating_point():
            continue
        if policy == "keep_a" and k in stat_keys:
            state[k] = t.unsqueeze(0).expand(len(w), *t.shape)
        else:
            state[k] = lerp_stack(t, sb[k], w.to(t.device))
    if policy == "reset":
        state.update(batched_bn_reset(model, state, bn_batches))
    return state


@torch.inference_mode()
def run_vmap(
    model: nn.Module,
    sa: Mapping[str, Tensor],
    sb: Mapping[str, Tensor],
    alphas: Sequence[float],
    policy: str,
    inputs: PathInputs,
    eval_batch_size: int,
    alpha_chunk: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Evaluate ``alpha_chunk`` alphas per pass with ``vmap``.

    Each evaluation pass holds ``eval_batch_size`` images in total (``ceil(eval_batch_size /
    alpha_chunk)`` per alpha), like the loop; the BN-reset pass holds ``alpha_chunk`` times
    a BN batch, since each batch's statistics need the whole batch.
    """
    model.eval()
    loss = np.zeros((len(alphas), len(inputs.splits)))
    error = np.zeros_like(loss)

    def forward(params: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(model, params, (x,))

    batched = vmap(forward, in_dims=(0, None))
    starts = range(0, len(alphas), alpha_chunk)
    for start in tqdm(starts, desc="path (vmap)", disable=None, leave=False):
        chunk = list(alphas[start : start + alpha_chunk])
        state = stacked_state(model, sa, sb, chunk, policy, inputs.bn)
        per_alpha = -(-eval_batch_size // len(chunk))
        scores = _scores(lambda x: batched(state, x), inputs, per_alpha, len(chunk))  # noqa: B023 (used at once)
        loss[start : start + len(chunk)], error[start : start + len(chunk)] = scores
    return loss, error


def run_segment(
    model: nn.Module,
    sa: Mapping[str, Tensor],
    sb: Mapping[str, Tensor],
    alphas: list[float],
    policy: str,
    inputs: Any,
    eval_batch_size: int,
    chunk: int,
    backend: str,
    chosen: str,
    compile_backend: str | Callable[..., Any] | None = None,
) -> tuple[Any, Any, str]:
    """Evaluate the segment ``sa -> sb`` at ``alphas`` with the ``chosen`` evaluator; when vmap
    fails and the caller asked for ``auto``, warn and fall back to the loop.

    Returns:
        (loss, error, evaluator used)."""
    if chosen == "vmap":
        try:
            loss, error = run_vmap(model, sa, sb, alphas, policy, inputs, eval_batch_size, chunk)
            return loss, error, chosen
        except RuntimeError as exc:
            if backend != "auto":
                raise
            warnings.warn(f"vmap evaluation failed ({exc}); falling back to the loop backend", stacklevel=3)
    loss, error = run_loop(model, sa, sb, alphas, policy, inputs, eval_batch_size, compile_backend)
    return loss, error, "loop"


def trial_backends(
    model: nn.Module,
    sa: Mapping[str, Tensor],
    sb: Mapping[str, Tensor],
    alphas: list[float],
    policy: str,
    inputs: PathInputs,
    eval_batch_size: int,
    chunk: int,
) -> dict[str, float]:
    """Seconds per alpha of the loop and of vmap on a short trial on the inputs' device.

    The trial is the real work in miniature: the first ``min(chunk, len(alphas))`` alphas, one
    BN-reset batch (when the policy resets) and one evaluation batch of ``eval_batch_size`` images of
    the first split. Each backend runs once untimed (kernel selection, vmap tracing), then once
    timed between device synchronisations. Returns ``{"loop": s, "vmap": s}`` (inf when vmap
    fails on this model). The model's state afterwards is arbitrary (callers pass a work copy).
    """
    name = next(iter(inputs.splits))
    images, labels = inputs.splits[name]
    k = min(eval_batch_size, len(labels))
    trial = PathInputs(
        bn=inputs.bn[:1],
        splits={name: (images[:k], labels[:k])},
        mean=inputs.mean,
        std=inputs.std,
        channels_last=inputs.channels_last,
        counts={name: k},
    )
    few = alphas[: max(1, min(chunk, len(alphas)))]
    dev = inputs.mean.device
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def timed(fn) -> float:
        fn()
        sync()
        start = time.perf_counter()
        fn()
        sync()
        return (time.perf_counter() - start) / len(few)

    out = {"loop": timed(lambda: run_loop(model, sa, sb, few, policy, trial, eval_batch_size))}
    try:
        out["vmap"] = timed(lambda: run_vmap(model, sa, sb, few, policy, trial, eval_batch_size, len(few)))
    except RuntimeError:
        out["vmap"] = float("inf")
    return out
