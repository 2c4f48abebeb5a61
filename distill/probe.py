"""Probe frozen representations: k-NN and linear classifiers on embeddings.

Defaults follow the paper: k-NN with k=20, Euclidean distance and an unweighted
majority vote; a single linear layer trained for 10 epochs with AdamW (lr 1e-3)
on the frozen embedding, both on the raw features ("linear") and on features
standardised with the training set's per-feature mean and std ("linear_std").
"knn_std" is the k-NN probe on the same standardised features (the reference code reports it too).
DINO's cosine, temperature-weighted k-NN vote is available as an option.

All accuracies are fractions in [0, 1].
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from distill.device import has_conv2d
from distill.optim import AdamW

__all__ = [
    "PROBES",
    "register_probe",
    "list_probes",
    "embed",
    "knn_predict",
    "knn_accuracy",
    "fit_linear",
    "linear_probe",
    "standardize_features",
    "probe_features",
    "embed_splits",
    "probe_model",
    "probe_input",
]

PROBES: tuple[str, ...] = ("knn", "linear", "linear_std")  # the built-in probes; see list_probes()

# Number of images above which embed() shows a progress bar.
_BAR_MIN_ITEMS = 8192
# Features whose train std is below this are left unscaled by standardisation
# (std replaced by 1), as scikit-learn's StandardScaler does for constant features.
_STD_FLOOR = 1e-6
# Rows per batch when evaluating a linear layer on a whole feature set.
_EVAL_BATCH = 8192
# most entries of one k-NN chunk's (queries x training points) score matrix: 64 MiB of float32
_KNN_SCORES = 2**24


# ----------------------------------------------------------------------------- embedding


def _module_device(module: nn.Module) -> torch.device | None:
    for t in module.parameters():
        return t.device
    for b in module.buffers():
        return b.device
    return None


def _channel_stats(values: Sequence[float] | Tensor | float, channels: int, name: str, device: torch.device) -> Tensor:
    t = torch.as_tensor(values, dtype=torch.float32, device=device).flatten()
    if t.numel() == 1:
        t = t.expand(channels)
    if t.numel() != channels:
        raise ValueError(
            f"{name} has {t.numel()} entries but the images have {channels} channels; pass one value per channel"
        )
    return t.view(1, channels, 1, 1)


@torch.no_grad()
def embed(
    backbone: nn.Module,
    images: Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 1024,
    device: str | torch.device | None = "cpu",
    out_device: str | torch.device | None = "cpu",
    channels_last: bool | None = None,
) -> Tensor:
    """Embed uint8 images (N, C, H, W) with ``backbone``; returns float32 (N, D) on ``out_device``
    (the CPU by default; None: where the forward passes ran, so probes can stay on the device).

    Pixels are normalised as ``(x / 255 - mean) / std`` per channel (mean/std in units of
    [0, 1] intensity). The module runs in whatever train/eval mode it is in: the caller
    decides (a teacher's BN may deliberately be in eval mode, a student's in train mode).
    Nothing is switched, so the mode is the same afterwards; note that BN layers in train
    mode still update their running statistics, as they would in any forward pass.
    Outputs with more than two dimensions are flattened to (N, D).

    ``device`` is where the forward passes run; the backbone must already live there
    (it is not moved). ``device=None`` uses the backbone's own device.

    ``channels_last``: feed each batch in channels-last memory format (same values; the module's
    weights are not touched). None: when the backbone has a 2-d convolution, whose CPU and cuDNN
    kernels run faster on it (``bench_probe`` measures the ratio); outputs agree with the default
    format to float32 rounding.
    """
    if images.dim() != 4:
        raise ValueError(
            f"images must have shape (N, C, H, W), got {tuple(images.shape)}; "
            f"add a channel dimension with images.unsqueeze(1)"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    own = _module_device(backbone)
    dev = torch.device(device) if device is not None else (own or torch.device("cpu"))
    if own is not None and own != dev and not (own.type == dev.type and dev.index is None):
        raise ValueError(
            f"backbone is on {own} but device={str(dev)!r}; "
            f"move it with backbone.to({str(dev)!r}) or pass device={str(own)!r}"
        )
    n, c = images.shape[0], images.shape[1]
    m = _channel_stats(mean, c, "mean", dev)
    s = _channel_stats(std, c, "std", dev)
    target = dev if out_device is None else torch.device(out_device)
    if channels_last is None:
        channels_last = has_conv2d(backbone)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    was_training = [(mod, mod.training) for mod in backbone.modules()]
    out: list[Tensor] = []
    starts = range(0, n, batch_size)
    for i in tqdm(starts, desc="embed", leave=False, disable=True if n < _BAR_MIN_ITEMS else None):
        x = images[i : i + batch_size].to(dev, non_blocking=True).float().div_(255).sub_(m).div_(s)
        x = x.contiguous(memory_format=fmt)
        out.append(backbone(x).flatten(1).float().to(target))
    # Defensive: a module whose forward flips modes must not leak that to the caller.
    for mod, flag in was_training:
        mod.training = flag
    if not out:
        return torch.zeros(0, 0)
    return torch.cat(out)


# ----------------------------------------------------------------------------- k-NN


def _check_xy(x: Tensor, y: Tensor, name: str) -> None:
    if x.dim() != 2:
        raise ValueError(f"{name}_x must have shape (N, D), got {tuple(x.shape)}; flatten it with x.flatten(1)")
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"{name}_y must have shape ({x.shape[0]},) to match {name}_x, got {tuple(y.shape)}")


def _check_finite(x: Tensor, name: str) -> None:
    # A sum containing a NaN or an infinity is never finite, so a finite sum clears the whole
    # tensor in one read pass; isfinite() builds four temporaries of x's size (one a float
    # copy), which took longer than an epoch of the linear probe at 50,000 x 512. Only a sum
    # that overflowed (or a genuinely bad tensor) gets the element-wise check.
    if x.is_floating_point() and bool(torch.isfinite(x.sum())):
        return
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or infinite values; probe a model whose embeddings are finite")


KNN_GEMMS = ("auto", "torch", "numpy")


def _blas_threads(n: int) -> Any:
    """A context in which numpy's BLAS uses at most ``n`` threads."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=n, user_api="blas")


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op thread count set to ``n`` for the duration (process-wide), then restored."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _nearest(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k smallest scores per row and their columns, ties broken by the lower column.

    torch.topk does not promise which of several equal values it keeps. The chosen set is
    ambiguous only when more than k entries are <= the k-th value, i.e. when the (k+1)-th smallest
    equals the k-th; one topk of k + 1 finds those rows (no extra pass over ``scores``), and only
    they are redone with a stable sort.
    """
    n = scores.shape[1]
    vals, idx = torch.topk(scores, min(k + 1, n), dim=1, largest=False, sorted=True)
    if k < n:
        redo = vals[:, k] <= vals[:, k - 1]
        vals, idx = vals[:, :k], idx[:, :k]
        if bool(redo.any()):
            rows = redo.nonzero().squeeze(1)
            v, j = torch.sort(scores[rows], dim=1, stable=True)
            vals[rows], idx[rows] = v[:, :k], j[:, :k]
    return vals, idx


def knn_predict(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    k: int = 20,
    metric: str = "euclidean",
    weighted: bool = False,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk: int = 1024,
    gemm: str = "auto",
    workers: int | None = None,
) -> Tensor:
    """k-NN class predictions (M,) int64 for ``test_x`` (M, D) from ``train_x`` (N, D), ``train_y`` (N,).

    metric="euclidean": L2 distance between raw features. metric="cosine": features are
    L2-normalised and neighbours ranked by cosine similarity.
    weighted=False: each of the k neighbours casts one vote (the paper's code).
    weighted=True: a neighbour votes with weight exp(sim / temperature) (DINO's rule) for
    cosine, and exp(-distance / temperature) for euclidean; weights are rescaled per test
    point by a common factor (subtracting the largest exponent) which leaves the vote
    unchanged but avoids overflow.

    Tie rules (deterministic): neighbours at equal distance are taken in order of their
    row in ``train_x``; classes with equal votes go to the smallest class index (the
    behaviour of ``torch.mode`` used in the authors' code).

    Computed on ``train_x``'s device in chunks of at most ``chunk`` test points, fewer when N is
    large: the score matrices in flight hold at most 2**24 floats (64 MiB) together, or one row each.

    On a CPU, ``workers`` chunks (default: ``torch.get_num_threads()``) are processed at once, each
    on one thread with torch and the BLAS single-threaded for the duration of the call
    (``torch.set_num_threads`` is process-wide; it is restored on return). One multi-threaded
    product at a time lost about a fifth of two cores to the idle waits of two thread pools
    (bench/README.md). ``workers=1``: one chunk at a time with torch's thread count. On CUDA,
    one chunk at a time.

    ``gemm``: which BLAS computes the scores on a CPU. "numpy": numpy's (zero-copy views of torch's
    memory; an OpenBLAS in PyPI's wheels, the BLAS faiss uses too); "torch": torch's (MKL in PyPI's
    x86 wheels); "auto" (default): numpy's on a CPU, torch's on CUDA. On an AMD EPYC, numpy's sgemm
    was 1.2-1.3x faster than torch's MKL at one thread. The choice can change distances in the last
    bits, hence a neighbour at an exact tie, never the rule.
    """
    _check_xy(train_x, train_y, "train")
    if test_x.dim() != 2 or test_x.shape[1] != train_x.shape[1]:
        raise ValueError(f"test_x must have shape (M, {train_x.shape[1]}) to match train_x, got {tuple(test_x.shape)}")
    if metric not in ("euclidean", "cosine"):
        raise ValueError(f"unknown metric {metric!r}; use 'euclidean' or 'cosine'")
    n = train_x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k={k} must be between 1 and the number of training points ({n}); lower k")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if gemm not in KNN_GEMMS:
        raise ValueError(f"unknown gemm {gemm!r}; use one of {', '.join(KNN_GEMMS)}")
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    dev = train_x.device
    train_y = train_y.to(dev).long()
    if train_y.min() < 0:
        raise ValueError("train_y contains negative labels; labels must be 0..num_classes-1")
    c = int(train_y.max()) + 1 if num_classes is None else int(num_classes)
    if int(train_y.max()) >= c:
        raise ValueError(f"train_y has label {int(train_y.max())} but num_classes={c}; raise num_classes")

    _check_finite(train_x, "train_x")
    _check_finite(test_x, "test_x")
    on_cpu = dev.type == "cpu"
    n_workers = (torch.get_num_threads() if workers is None else workers) if on_cpu else 1
    use_numpy = on_cpu and gemm in ("auto", "numpy")
    tx = train_x.float()
    if metric == "cosine":
        tx = F.normalize(tx, dim=1)
    else:
        # Distances do not change under a shift; centring on the train mean reduces the
        # cancellation in the expanded form below when features share a large offset.
        centre = tx.mean(dim=0)
        tx = tx - centre
        tx_sq = tx.square().sum(dim=1)
    tx_t = tx.T.numpy() if use_numpy else None  # a view: numpy's BLAS reads torch's memory
    m = test_x.shape[0]
    rows = max(1, min(chunk, _KNN_SCORES // (n * n_workers)))
    local = threading.local()  # one reused score buffer per thread: a fresh 64 MiB array costs page faults

    def scores_of(q: Tensor) -> Tensor:
        # cosine: rank by -q.t; euclidean: ||q - t||^2 = ||q||^2 - 2 q.t + ||t||^2, ranked by
        # ||t||^2 - 2 q.t (the per-row ||q||^2 does not change the order; it is added back for the k kept).
        a = -q if metric == "cosine" else q * -2.0  # both exact
        if tx_t is None:
            return a @ tx.T if metric == "cosine" else torch.addmm(tx_sq, q, tx.T, beta=1.0, alpha=-2.0)
        buf = getattr(local, "buf", None)
        if buf is None or buf.shape[0] < a.shape[0]:
            buf = local.buf = np.empty((rows, n), dtype=np.float32)
        out = buf[: a.shape[0]]
        np.matmul(a.numpy(), tx_t, out=out)
        s = torch.from_numpy(out)
        return s if metric == "cosine" else s.add_(tx_sq)

    def predict(i: int) -> Tensor:
        q = test_x[i : i + rows].to(dev).float()
        q = F.normalize(q, dim=1) if metric == "cosine" else q - centre
        vals, idx = _nearest(scores_of(q), k)
        if metric != "cosine":
            vals = (vals + q.square().sum(dim=1, keepdim=True)).clamp_min_(0)
        labels = train_y[idx]  # (B, k)
        if weighted:
            logits = -vals / temperature if metric == "cosine" else -vals.sqrt() / temperature
            w = torch.exp(logits - logits.max(dim=1, keepdim=True).values)
        else:
            w = torch.ones_like(vals)
        votes = torch.zeros(labels.shape[0], c, device=dev, dtype=w.dtype)
        votes.scatter_add_(1, labels, w)
        return votes.argmax(dim=1)  # argmax returns the first (smallest) maximal class

    starts = range(0, m, rows)
    bar = dict(desc="k-NN", total=len(starts), leave=False, disable=True if m * n < 10**8 else None)
    if n_workers > 1:
        with _torch_threads(1), _blas_threads(1), ThreadPoolExecutor(n_workers) as pool:
            preds = list(tqdm(pool.map(predict, starts), **bar))
    else:
        with _blas_threads(torch.get_num_threads()) if use_numpy else contextlib.nullcontext():
            preds = [predict(i) for i in tqdm(starts, **bar)]
    if not preds:
        return torch.zeros(0, dtype=torch.long, device=dev)
    return torch.cat(preds)


def knn_accuracy(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    k: int = 20,
    metric: str = "euclidean",
    weighted: bool = False,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk: int = 1024,
    gemm: str = "auto",
    workers: int | None = None,
) -> float:
    """Fraction of ``test_y`` (M,) predicted correctly by `knn_predict` (same options)."""
    _check_xy(test_x, test_y, "test")
    if test_x.shape[0] == 0:
        raise ValueError("test_x is empty; pass at least one test point")
    pred = knn_predict(
        train_x,
        train_y,
        test_x,
        k=k,
        metric=metric,
        weighted=weighted,
        temperature=temperature,
        num_classes=num_classes,
        chunk=chunk,
        gemm=gemm,
        workers=workers,
    )
    return int((pred.cpu() == test_y.cpu().long()).sum()) / test_y.shape[0]


# ----------------------------------------------------------------------------- linear probe


def standardize_features(train_x: Tensor, *others: Tensor) -> tuple[Tensor, ...]:
    """Standardise features with the per-feature mean and std (unbiased) of ``train_x`` (N, D).

    The same transform is applied to every tensor in ``others``. Features whose train
    std is below 1e-6 are only centred (std treated as 1). Returns float32 tensors.
    """
    t64 = train_x.double()
    mean = t64.mean(dim=0)
    std = t64.std(dim=0, correction=1) if t64.shape[0] > 1 else torch.ones_like(mean)
    std = torch.where(std < _STD_FLOOR, torch.ones_like(std), std)
    return tuple(((x.double() - mean) / std).float() for x in (train_x, *others))


def _init_linear(layer: nn.Linear, gen: torch.Generator) -> None:
    # Same distribution as nn.Linear's default init, drawn from a private generator.
    bound = 1.0 / math.sqrt(layer.in_features) if layer.in_features > 0 else 0.0
    with torch.no_grad():
        layer.weight.uniform_(-bound, bound, generator=gen)
        layer.bias.uniform_(-bound, bound, generator=gen)


@torch.no_grad()
def _full_loss(layer: nn.Linear, x: Tensor, y: Tensor) -> float:
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for i in range(0, x.shape[0], _EVAL_BATCH):
        total += F.cross_entropy(layer(x[i : i + _EVAL_BATCH]), y[i : i + _EVAL_BATCH], reduction="sum").double()
    return float(total) / x.shape[0]


@torch.no_grad()
def _accuracy(layer: nn.Linear, x: Tensor, y: Tensor) -> float:
    correct = torch.zeros((), dtype=torch.long, device=x.device)
    for i in range(0, x.shape[0], _EVAL_BATCH):
        correct += (layer(x[i : i + _EVAL_BATCH]).argmax(dim=1) == y[i : i + _EVAL_BATCH]).sum()
    return int(correct) / x.shape[0]


def fit_linear(
    train_x: Tensor,
    train_y: Tensor,
    *,
    epochs: int = 10,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    batch_size: int = 256,
    seed: int = 0,
    until_convergence: bool = False,
    max_epochs: int = 200,
    tol: float = 1e-4,
    num_classes: int | None = None,
    device: str | torch.device = "cpu",
    reshuffle: bool = True,
) -> tuple[nn.Linear, list[float]]:
    """Train one ``nn.Linear`` on features ``train_x`` (N, D) and labels ``train_y`` (N,).

    AdamW (``lr``, ``weight_decay``) on the mean cross-entropy over shuffled mini-batches of
    ``batch_size`` (the last one may be smaller). Initialisation (nn.Linear's default
    uniform(+-1/sqrt(D))) and shuffling use a ``torch.Generator`` seeded with ``seed``; the
    global RNG is untouched, so results are deterministic for a seed on a given device.
    ``reshuffle=False``: one order is drawn before the first epoch and its batches are replayed in
    every epoch (the authors' probe, which trains on a list of batches embedded once).

    ``until_convergence=False`` trains exactly ``epochs`` epochs. ``until_convergence=True``
    ignores ``epochs``: the mean cross-entropy on the full training set is evaluated before
    training and after every epoch, and training stops after the first epoch whose loss L
    satisfies |L_prev - L| <= tol * L_prev, or after ``max_epochs`` epochs.

    Returns:
        The layer (on ``device``, eval mode) and the full-train losses [L_0, L_1, ...]
        (L_0 before training; one per epoch run), which are recorded only when
        ``until_convergence=True`` (empty list otherwise).
    """
    _check_xy(train_x, train_y, "train")
    if train_x.shape[0] == 0:
        raise ValueError("train_x is empty; pass at least one training point")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n_epochs = max_epochs if until_convergence else epochs
    if n_epochs < 0:
        raise ValueError(f"{'max_epochs' if until_convergence else 'epochs'} must be >= 0, got {n_epochs}")
    _check_finite(train_x, "train_x")
    dev = torch.device(device)
    x, y = train_x.to(dev).float(), train_y.to(dev).long()
    c = int(y.max()) + 1 if num_classes is None else int(num_classes)
    if int(y.min()) < 0 or int(y.max()) >= c:
        raise ValueError(f"train_y must hold labels in 0..{c - 1}; pass a larger num_classes")

    gen = torch.Generator(device="cpu").manual_seed(seed)
    layer = torch.nn.utils.skip_init(nn.Linear, x.shape[1], c)  # keeps the global RNG untouched
    _init_linear(layer, gen)
    layer.to(dev)
    opt = AdamW(layer.parameters(), lr=lr, weight_decay=weight_decay)  # torch's update, no torch._dynamo import
    n = x.shape[0]
    losses = [_full_loss(layer, x, y)] if until_convergence else []
    order: Tensor | None = None
    for _ in tqdm(range(n_epochs), desc="linear probe", leave=False, disable=True if n * n_epochs < 10**7 else None):
        if reshuffle or order is None:
            order = torch.randperm(n, generator=gen).to(dev)
        for i in range(0, n, batch_size):
            # a gather per batch: a whole-epoch gather of (N, D) costs a fresh N x D buffer every epoch
            j = order[i : i + batch_size]
            loss = F.cross_entropy(layer(x[j]), y[j])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if until_convergence:
            losses.append(_full_loss(layer, x, y))
            if abs(losses[-2] - losses[-1]) <= tol * abs(losses[-2]):
                break
    return layer.eval(), losses


def linear_probe(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    *,
    epochs: int = 10,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    batch_size: int = 256,
    standardize: bool = False,
    seed: int = 0,
    until_convergence: bool = False,
    max_epochs: int = 200,
    tol: float = 1e-4,
    num_classes: int | None = None,
    device: str | torch.device = "cpu",
    reshuffle: bool = True,
) -> float:
    """Test accuracy of a linear classifier trained on frozen features (see `fit_linear`).

    ``standardize=True`` first applies `standardize_features` (per-feature mean and
    std of the TRAIN features) to both splits. ``num_classes`` defaults to one more than
    the largest label in either split. Other options as in `fit_linear`.
    """
    _check_xy(train_x, train_y, "train")
    _check_xy(test_x, test_y, "test")
    if test_x.shape[1] != train_x.shape[1]:
        raise ValueError(
            f"test_x has {test_x.shape[1]} features but train_x has {train_x.shape[1]}; embed both with the same model"
        )
    if test_x.shape[0] == 0:
        raise ValueError("test_x is empty; pass at least one test point")
    _check_finite(test_x, "test_x")
    if standardize:
        train_x, test_x = standardize_features(train_x, test_x)
    if num_classes is None and train_y.numel():
        num_classes = int(max(int(train_y.max()), int(test_y.max()))) + 1
    layer, _ = fit_linear(
        train_x,
        train_y,
        epochs=epochs,
        lr=lr,
        weight_decay=weight_decay,
        batch_size=batch_size,
        seed=seed,
        until_convergence=until_convergence,
        max_epochs=max_epochs,
        tol=tol,
        num_classes=num_classes,
        device=device,
        reshuffle=reshuffle,
    )
    dev = torch.device(device)
    return _accuracy(layer, test_x.to(dev).float(), test_y.to(dev).long())


# ----------------------------------------------------------------------------- drivers

ProbeFn = TypeVar("ProbeFn", bound=Callable[..., float])
_REGISTRY: dict[str, Callable[..., float]] = {}


def register_probe(name: str) -> Callable[[ProbeFn], ProbeFn]:
    """Decorator registering a probe under ``name`` (usable in ``DistillConfig.probes``, ``--probes``).

    The probe is called as ``fn(train_x, train_y, test_x, test_y, *, num_classes, seed, device,
    **options)`` with float32 features (N, D) / (M, D) on the CPU and int64 labels, and returns the
    test accuracy as a fraction in [0, 1]. ``options`` holds every keyword of
    `probe_features` (``knn_k``, ``linear_epochs``, ...): accept ``**options`` and use what
    you need. Its accuracy appears in ``store.metrics`` under ``probe=name``.
    """

    def decorate(fn: ProbeFn) -> ProbeFn:
        if not isinstance(name, str) or not name or "," in name:
            raise ValueError(f"probe name {name!r}: pass a non-empty name without commas")
        if name in _REGISTRY:
            raise ValueError(f"probe name {name!r} is already registered; choose another name")
        _REGISTRY[name] = fn
        return fn

    return decorate


def list_probes() -> list[str]:
    """Names of the registered probes, built-ins first, then in registration order."""
    return list(_REGISTRY)


def _lookup(names: Sequence[str]) -> list[Callable[..., float]]:
    unknown = [p for p in names if p not in _REGISTRY]
    if unknown:
        from distill.plugins import load_entry_points

        load_entry_points()  # an installed plugin may provide them
        unknown = [p for p in names if p not in _REGISTRY]
    if unknown:
        raise ValueError(
            f"unknown probe(s) {unknown}; choose from {list_probes()} (or register one with distill.register_probe)"
        )
    return [_REGISTRY[p] for p in names]


@register_probe("knn")
def _knn_probe(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    *,
    num_classes: int,
    device: str | torch.device,
    knn_k: int = 20,
    knn_metric: str = "euclidean",
    knn_weighted: bool = False,
    knn_temperature: float = 0.07,
    **_: Any,
) -> float:
    dev = torch.device(device)
    return knn_accuracy(
        train_x.to(dev),
        train_y.to(dev),
        test_x.to(dev),
        test_y,
        k=knn_k,
        metric=knn_metric,
        weighted=knn_weighted,
        temperature=knn_temperature,
        num_classes=num_classes,
    )


def _linear(standardize: bool) -> Callable[..., float]:
    def probe(
        train_x: Tensor,
        train_y: Tensor,
        test_x: Tensor,
        test_y: Tensor,
        *,
        num_classes: int,
        seed: int,
        device: str | torch.device,
        linear_epochs: int = 10,
        linear_lr: float = 1e-3,
        linear_weight_decay: float = 0.0,
        linear_batch_size: int = 256,
        linear_reshuffle: bool = True,
        until_convergence: bool = False,
        **_: Any,
    ) -> float:
        return linear_probe(
            train_x,
            train_y,
            test_x,
            test_y,
            epochs=linear_epochs,
            lr=linear_lr,
            weight_decay=linear_weight_decay,
            batch_size=linear_batch_size,
            standardize=standardize,
            seed=seed,
            until_convergence=until_convergence,
            num_classes=num_classes,
            device=device,
            reshuffle=linear_reshuffle,
        )

    return probe


register_probe("linear")(_linear(False))
register_probe("linear_std")(_linear(True))


@register_probe("knn_std")
def _knn_std_probe(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, **options: Any) -> float:
    """The k-NN probe on features standardised with the training split's per-feature mean and std
    (`standardize_features`), as the reference code also reports."""
    train_s, test_s = standardize_features(train_x, test_x)
    return _knn_probe(train_s, train_y, test_s, test_y, **options)


def probe_features(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    probes: Iterable[str] = PROBES,
    knn_k: int = 20,
    knn_metric: str = "euclidean",
    knn_weighted: bool = False,
    linear_epochs: int = 10,
    linear_lr: float = 1e-3,
    until_convergence: bool = False,
    seed: int = 0,
    *,
    knn_temperature: float = 0.07,
    linear_weight_decay: float = 0.0,
    linear_batch_size: int = 256,
    linear_reshuffle: bool = True,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """Run the named probes on precomputed features; returns {probe name: test accuracy}.

    Probe names: any registered with `register_probe`; built in: "knn"
    (`knn_accuracy` with ``knn_*``), "linear" (raw features) and "linear_std"
    (standardised features), both `linear_probe` with ``linear_*``.
    """
    probes = tuple(probes)
    fns = _lookup(probes)
    num_classes = int(max(int(train_y.max()), int(test_y.max()))) + 1
    options: dict[str, Any] = dict(
        knn_k=knn_k,
        knn_metric=knn_metric,
        knn_weighted=knn_weighted,
        knn_temperature=knn_temperature,
        linear_epochs=linear_epochs,
        linear_lr=linear_lr,
        linear_weight_decay=linear_weight_decay,
        linear_batch_size=linear_batch_size,
        linear_reshuffle=linear_reshuffle,
        until_convergence=until_convergence,
    )
    out = {}
    for name, fn in zip(probes, fns):
        # built-in probes take the features where they are (on the device after probe_model);
        # registered ones get them on the CPU, as register_probe promises
        xs = (
            (train_x, train_y, test_x, test_y)
            if name in PROBES
            else tuple(t.cpu() for t in (train_x, train_y, test_x, test_y))
        )
        out[name] = float(fn(*xs, num_classes=num_classes, seed=seed, device=device, **options))
    return out


def _train_indices(n: int, train_subset: int | None, seed: int) -> Tensor | None:
    if train_subset is None or train_subset >= n:
        return None
    if train_subset < 1:
        raise ValueError(f"train_subset must be >= 1, got {train_subset}")
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=gen)[:train_subset].sort().values


def _split_arrays(data: Any, train_subset: int | None, seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    for attr in ("train", "test", "mean", "std"):
        if not hasattr(data, attr):
            raise ValueError(f"data has no .{attr}; pass a distill.data.Dataset (see load_dataset)")
    tr_img, tr_lab = data.train.images, data.train.labels
    idx = _train_indices(tr_img.shape[0], train_subset, seed)
    if idx is not None:
        tr_img, tr_lab = tr_img[idx.to(tr_img.device)], tr_lab[idx.to(tr_lab.device)]
    return tr_img, tr_lab.cpu(), data.test.images, data.test.labels.cpu()


def embed_splits(
    backbone: nn.Module,
    data: Any,
    train_subset: int | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    batch_size: int = 1024,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(train features (N, D), train labels (N,), test features (M, D), test labels (M,)) of ``data``
    embedded by ``backbone`` (its ``.backbone`` when it has one), features where the forward passes
    ran, labels on the CPU; ``train_subset`` and ``seed`` as in `probe_model`."""
    inner = getattr(backbone, "backbone", None)
    if isinstance(inner, nn.Module):
        backbone = inner
    tr_img, tr_lab, te_img, te_lab = _split_arrays(data, train_subset, seed)
    tr = embed(backbone, tr_img, data.mean, data.std, batch_size=batch_size, device=device, out_device=None)
    te = embed(backbone, te_img, data.mean, data.std, batch_size=batch_size, device=device, out_device=None)
    return tr, tr_lab, te, te_lab


def probe_model(
    backbone: nn.Module,
    data: Any,
    probes: Iterable[str] = PROBES,
    train_subset: int | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    batch_size: int = 1024,
    **kw: Any,
) -> dict[str, float]:
    """Embed ``data``'s train and test images with ``backbone`` and probe the embeddings.

    ``data`` is a Dataset (``.train``/``.test`` splits with uint8 ``images`` and int64
    ``labels``, per-channel ``.mean``/``.std``). A Model with a ``.backbone`` attribute is
    probed at its backbone, not at its head. ``train_subset``: probe with that many train
    images drawn uniformly without replacement (seeded by ``seed``); the test split is
    always used whole. The module's train/eval mode is left as the caller set it (see
    `embed`). ``kw`` goes to `probe_features`.
    """
    tr, tr_lab, te, te_lab = embed_splits(backbone, data, train_subset, seed, device, batch_size)
    return probe_features(tr, tr_lab, te, te_lab, probes=probes, seed=seed, device=device, **kw)


def probe_input(
    data: Any,
    probes: Iterable[str] = PROBES,
    train_subset: int | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    normalized: bool = True,
    batch_size: int = 4096,
    **kw: Any,
) -> dict[str, float]:
    """The raw-pixel baseline: probe flattened input images (C*H*W features).

    ``normalized=True`` (default) uses the pixels exactly as a backbone sees them,
    ``(x/255 - mean)/std`` per channel; ``normalized=False`` uses ``x/255`` in [0, 1].
    Other arguments as in `probe_model`.
    """
    if not normalized:
        c = data.train.images.shape[1]
        data = _Unnormalised(data, c)
    return probe_model(
        nn.Flatten(),
        data,
        probes=probes,
        train_subset=train_subset,
        seed=seed,
        device=device,
        batch_size=batch_size,
        **kw,
    )


class _Unnormalised:
    """View of a dataset with mean 0 and std 1, so embed() only scales pixels to [0, 1]."""

    def __init__(self, data: Any, channels: int):
        self.train, self.test = data.train, data.test
        self.mean, self.std = (0.0,) * channels, (1.0,) * channels
