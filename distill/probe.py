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
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from distill.config import ProbeConfig
from distill.features import _check_finite, _check_xy, embed, embed_splits, standardize_features
from distill.linear_probe import fit_linear, linear_probe
from distill.options import with_config
from distill.registry import DEFAULT_PROBES, registering

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
PROBES: tuple[str, ...] = DEFAULT_PROBES  # the probes run by default; see list_probes() for all

# most entries of one k-NN chunk's (queries x training points) score matrix: 64 MiB of float32
_KNN_SCORES = 2**24


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


def _check_knn(
    train_x: Tensor, train_y: Tensor, test_x: Tensor, k: int, chunk: int, num_classes: int | None, **options: Any
) -> tuple[Tensor, int]:
    """Validate `knn_predict`'s arguments; returns ``train_y`` as int64 on ``train_x``'s device and
    the number of classes."""
    _check_xy(train_x, train_y, "train")
    if test_x.dim() != 2 or test_x.shape[1] != train_x.shape[1]:
        raise ValueError(f"test_x must have shape (M, {train_x.shape[1]}) to match train_x, got {tuple(test_x.shape)}")
    if options["metric"] not in ("euclidean", "cosine"):
        raise ValueError(f"unknown metric {options['metric']!r}; use 'euclidean' or 'cosine'")
    n = train_x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k={k} must be between 1 and the number of training points ({n}); lower k")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    if options["temperature"] <= 0:
        raise ValueError(f"temperature must be > 0, got {options['temperature']}")
    if options["gemm"] not in KNN_GEMMS:
        raise ValueError(f"unknown gemm {options['gemm']!r}; use one of {', '.join(KNN_GEMMS)}")
    workers = options["workers"]
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
    return train_y, c


def _score_fn(tx: Tensor, tx_sq: Tensor | None, use_numpy: bool, rows: int) -> Callable[[Tensor], Tensor]:
    """Scores (B, N) of queries (B, D) against the prepared training features ``tx`` (N, D), lowest
    nearest: cosine (``tx_sq`` None) -q.t; euclidean ||t||^2 - 2 q.t, with ``tx_sq`` = ||t||^2 (the
    per-row ||q||^2 does not change the order; it is added back for the k kept). ``use_numpy``:
    numpy's BLAS, into one reused buffer of ``rows`` rows per thread."""
    tx_t = tx.T.numpy() if use_numpy else None  # a view: numpy's BLAS reads torch's memory
    local = threading.local()  # a fresh 64 MiB array per chunk would cost page faults
    n = tx.shape[0]

    def scores_of(q: Tensor) -> Tensor:
        a = -q if tx_sq is None else q * -2.0  # both exact
        if tx_t is None:
            return a @ tx.T if tx_sq is None else torch.addmm(tx_sq, q, tx.T, beta=1.0, alpha=-2.0)
        buf = getattr(local, "buf", None)
        if buf is None or buf.shape[0] < a.shape[0]:
            buf = local.buf = np.empty((rows, n), dtype=np.float32)
        out = buf[: a.shape[0]]
        np.matmul(a.numpy(), tx_t, out=out)
        s = torch.from_numpy(out)
        return s if tx_sq is None else s.add_(tx_sq)

    return scores_of


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
    train_y, c = _check_knn(
        train_x,
        train_y,
        test_x,
        k,
        chunk,
        num_classes,
        metric=metric,
        temperature=temperature,
        gemm=gemm,
        workers=workers,
    )
    dev = train_x.device
    on_cpu = dev.type == "cpu"
    n_workers = (torch.get_num_threads() if workers is None else workers) if on_cpu else 1
    use_numpy = on_cpu and gemm in ("auto", "numpy")
    # Distances do not change under a shift; centring on the train mean reduces the
    # cancellation in the expanded form of the scores when features share a large offset.
    tx = train_x.float()
    centre = None if metric == "cosine" else tx.mean(dim=0)
    tx = F.normalize(tx, dim=1) if centre is None else tx - centre
    tx_sq = None if centre is None else tx.square().sum(dim=1)
    m, n = test_x.shape[0], train_x.shape[0]
    rows = max(1, min(chunk, _KNN_SCORES // (n * n_workers)))
    scores_of = _score_fn(tx, tx_sq, use_numpy, rows)

    def predict(i: int) -> Tensor:
        q = test_x[i : i + rows].to(dev).float()
        q = F.normalize(q, dim=1) if centre is None else q - centre
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


def knn_accuracy(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, *args: Any, **options: Any) -> float:
    """Fraction of ``test_y`` (M,) predicted correctly by `knn_predict`; ``args`` and ``options``
    are its arguments after ``test_x`` (``k``, ``metric``, ...), with its defaults."""
    _check_xy(test_x, test_y, "test")
    if test_x.shape[0] == 0:
        raise ValueError("test_x is empty; pass at least one test point")
    pred = knn_predict(train_x, train_y, test_x, *args, **options)
    return int((pred.cpu() == test_y.cpu().long()).sum()) / test_y.shape[0]


# ----------------------------------------------------------------------------- drivers

ProbeFn = TypeVar("ProbeFn", bound=Callable[..., float])
_REGISTRY: dict[str, Callable[..., float]] = {}


def register_probe(name: str) -> Callable[[ProbeFn], ProbeFn]:
    """Decorator registering a probe under ``name`` (usable in ``DistillConfig.probes``, ``--probes``).

    The probe is called as ``fn(train_x, train_y, test_x, test_y, *, num_classes, seed, device,
    **options)`` with float32 features (N, D) / (M, D) on the CPU and int64 labels, and returns the
    test accuracy as a fraction in [0, 1]. ``options`` holds every probe setting: the fields of
    `distill.config.ProbeConfig` (``knn_k``, ``linear_epochs``, ...) and the other keywords of
    `probe_features` (``knn_weighted``, ``linear_lr``, ...): accept ``**options`` and use what
    you need. Its accuracy appears in ``store.metrics`` under ``probe=name``.
    """

    return registering(_REGISTRY, "probe", name, _check_probe_name)


def _check_probe_name(name: str, fn: Any) -> None:
    if not isinstance(name, str) or not name or "," in name:
        raise ValueError(f"probe name {name!r}: pass a non-empty name without commas")


def list_probes() -> list[str]:
    """Names of the registered probes, built-ins first, then in registration order."""
    return list(_REGISTRY)


@register_probe("knn")
def _knn_probe(
    train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, *, num_classes: int, **options: Any
) -> float:
    dev = torch.device(options["device"])
    return knn_accuracy(
        train_x.to(dev),
        train_y.to(dev),
        test_x.to(dev),
        test_y,
        k=options["knn_k"],
        metric=options["knn_metric"],
        weighted=options["knn_weighted"],
        temperature=options["knn_temperature"],
        num_classes=num_classes,
    )


def _linear(standardize: bool) -> Callable[..., float]:
    def probe(
        train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, *, num_classes: int, **options: Any
    ) -> float:
        return linear_probe(
            train_x,
            train_y,
            test_x,
            test_y,
            standardize=standardize,
            seed=options["seed"],
            num_classes=num_classes,
            device=options["device"],
            epochs=options["linear_epochs"],
            lr=options["linear_lr"],
            weight_decay=options["probe_weight_decay"],
            batch_size=options["linear_batch_size"],
            reshuffle=options["probe_reshuffle"],
            until_convergence=options["probe_converge"],
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


# earlier keyword names of three ProbeConfig fields, still accepted by probe_features
_ALIASES = {
    "linear_weight_decay": "probe_weight_decay",
    "linear_reshuffle": "probe_reshuffle",
    "until_convergence": "probe_converge",
}


@with_config(ProbeConfig)
def probe_features(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    *,
    config: ProbeConfig,
    seed: int = 0,
    knn_weighted: bool = False,
    knn_temperature: float = 0.07,
    linear_lr: float = 1e-3,
    linear_batch_size: int = 256,
    device: str | torch.device = "cpu",
    **aliases: Any,
) -> dict[str, float]:
    """Run the probes ``config.probes`` on precomputed features; returns {probe name: test accuracy}.

    Probe names: any registered with `register_probe`; built in: "knn" and "knn_std"
    (`knn_accuracy` with ``knn_*``), "linear" (raw features) and "linear_std" (standardised
    features), both `linear_probe` (``linear_*``, ``probe_weight_decay``, ``probe_reshuffle``,
    ``probe_converge``). ``knn_weighted``: DINO's temperature-weighted vote (``knn_temperature``);
    ``linear_lr``, ``linear_batch_size``: the linear probe's AdamW step size and batch (images).
    ``linear_weight_decay``, ``linear_reshuffle`` and ``until_convergence`` are accepted as other
    names of ``probe_weight_decay``, ``probe_reshuffle`` and ``probe_converge``.
    """
    unknown = [k for k in aliases if k not in _ALIASES]
    if unknown:
        raise TypeError(f"probe_features() got unexpected keyword argument(s) {', '.join(unknown)}")
    if aliases:
        config = config.replace(**{_ALIASES[k]: v for k, v in aliases.items()})
    options = {
        **config.to_dict(),
        "knn_weighted": knn_weighted,
        "knn_temperature": knn_temperature,
        "linear_lr": linear_lr,
        "linear_batch_size": linear_batch_size,
    }
    probes = tuple(config.probes)  # registered names: ProbeConfig checked them, loading plugins when needed
    num_classes = int(max(int(train_y.max()), int(test_y.max()))) + 1
    out = {}
    for name in probes:
        # built-in probes take the features where they are (on the device after probe_model);
        # registered ones get them on the CPU, as register_probe promises
        xs = (
            (train_x, train_y, test_x, test_y)
            if name in PROBES
            else tuple(t.cpu() for t in (train_x, train_y, test_x, test_y))
        )
        out[name] = float(_REGISTRY[name](*xs, num_classes=num_classes, seed=seed, device=device, **options))
    return out


def probe_model(
    backbone: nn.Module,
    data: Any,
    train_subset: int | None = None,
    *,
    device: str | torch.device = "cpu",
    seed: int = 0,
    batch_size: int = 1024,
    **kw: Any,
) -> dict[str, float]:
    """Embed ``data``'s train and test images with ``backbone`` and probe the embeddings.

    ``data`` is a Dataset (``.train``/``.test`` splits with uint8 ``images`` and int64
    ``labels``, per-channel ``.mean``/``.std``). A Model with a ``.backbone`` attribute is
    probed at its backbone, not at its head. ``train_subset``: probe with that many train
    images drawn uniformly without replacement (seeded by ``seed``); the test split is
    always used whole. The module's train/eval mode is left as the caller set it (see
    `embed`). ``kw`` goes to `probe_features`: ``config=ProbeConfig(...)`` or its fields
    (``probes``, ``knn_k``, ...), and its other keywords.
    """
    tr, tr_lab, te, te_lab = embed_splits(backbone, data, train_subset, seed, device, batch_size)
    return probe_features(tr, tr_lab, te, te_lab, seed=seed, device=device, **kw)


def probe_input(
    data: Any,
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
    return probe_model(nn.Flatten(), data, train_subset, seed=seed, device=device, batch_size=batch_size, **kw)


class _Unnormalised:
    """View of a dataset with mean 0 and std 1, so embed() only scales pixels to [0, 1]."""

    def __init__(self, data: Any, channels: int):
        self.train, self.test = data.train, data.test
        self.mean, self.std = (0.0,) * channels, (1.0,) * channels
