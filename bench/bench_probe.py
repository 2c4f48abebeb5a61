"""Probes: our k-NN against an exact faiss search, our linear probe against a plain training loop.

k-NN (k = 20, Euclidean, unweighted vote) on random 512-d features at 10,000 and 50,000 training
points with 10,000 queries: :func:`distill.probe.knn_predict` vs ``faiss.IndexFlatL2`` (exact
search) followed by the same vote in numpy; faiss (``pip install faiss-cpu``, the ``bench`` extra)
is optional: without it the k-NN record says so. Target: ours at least 0.7x faiss's speed.
Linear probe (10 epochs AdamW, batch 256) on 50,000 x 512 features: :func:`distill.probe.linear_probe`
vs the loop a researcher writes (``randperm`` indexing per batch, autograd, AdamW).
Embedding: :func:`distill.probe.embed` of CIFAR-sized images by a random ResNet-18 teacher (BN in eval
mode; channels-last batches, its default for conv nets) vs the plain ``no_grad`` loop over NCHW batches;
also the largest relative difference of the two embeddings.

    python -m bench.bench_probe [--size tiny|full] [--device cpu]
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bench.common import interleaved, record, reset_gpu_peak, show, sync_for
from distill.probe import knn_predict, linear_probe

SIZES = {
    "tiny": dict(knn_train=(500, 1000), queries=200, dim=32, linear_train=512, embed=(64, "resnet20"), rounds=1),
    "full": dict(
        knn_train=(10_000, 50_000), queries=10_000, dim=512, linear_train=50_000, embed=(2048, "resnet18"), rounds=3
    ),
}


def _features(n: int, dim: int, seed: int, classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Clustered features: class means 1 apart in random directions plus unit noise."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return centres[y] + torch.randn(n, dim, generator=g) * 2.0, y


def faiss_knn(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, k: int, classes: int) -> np.ndarray:
    """Exact L2 search with faiss, then the unweighted vote (ties to the smallest class)."""
    import faiss

    index = faiss.IndexFlatL2(train_x.shape[1])
    index.add(train_x)
    _, nn_idx = index.search(test_x, k)
    votes = np.zeros((len(test_x), classes), dtype=np.int64)
    np.add.at(votes, (np.arange(len(test_x))[:, None], train_y[nn_idx]), 1)
    return votes.argmax(1)


def plain_linear(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    epochs: int = 10,
    batch_size: int = 256,
) -> float:
    layer = torch.nn.Linear(train_x.shape[1], 10).to(train_x.device)
    opt = torch.optim.AdamW(layer.parameters(), lr=1e-3, weight_decay=0.0)
    for _ in range(epochs):
        perm = torch.randperm(len(train_x), device=train_x.device)
        for i in range(0, len(train_x), batch_size):
            j = perm[i : i + batch_size]
            loss = F.cross_entropy(layer(train_x[j]), train_y[j])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        return float((layer(test_x).argmax(1) == test_y).float().mean())


@torch.no_grad()
def plain_embed(backbone: torch.nn.Module, images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """The loop a researcher writes: NCHW float batches of 1024 through the network."""
    out = []
    for i in range(0, len(images), 1024):
        x = (images[i : i + 1024].to(mean.device).float() / 255 - mean) / std
        out.append(backbone(x).flatten(1))
    return torch.cat(out)


def _embed_record(p: dict[str, Any], device: str, r: int, size: str) -> dict:
    from distill.config import DistillConfig
    from distill.probe import embed
    from distill.train import build_teacher, set_teacher_mode

    n, arch = p["embed"]
    cfg = DistillConfig(arch=arch, seed=0)
    net = set_teacher_mode(build_teacher(cfg, (3, 32, 32)).to(device), cfg.teacher_bn).backbone
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    m, s = (torch.tensor(v, device=device).view(1, 3, 1, 1) for v in (mean, std))
    got: dict[str, torch.Tensor] = {}
    reset_gpu_peak()
    times = interleaved(
        {
            "distill.probe.embed": lambda: got.__setitem__("ours", embed(net, images, mean, std, device=device)),
            "plain NCHW loop": lambda: got.__setitem__("plain", plain_embed(net, images, m, s).cpu()),
        },
        r,
        sync=sync_for(device),
        warmup=torch.device(device).type == "cuda",
    )
    diff = float((got["ours"] - got["plain"]).norm(dim=1).max() / got["plain"].norm(dim=1).min())
    return record(
        "embed",
        f"embedding, random {arch} teacher (BN eval), {n} images 32x32, batch 1024",
        times,
        ours="distill.probe.embed",
        baseline="plain NCHW loop",
        target=">= 1.0",
        goal=lambda x: x >= 1.0,
        device=str(device),
        size=size,
        max_relative_difference=diff,
    )


def run_bench(size: str = "full", device: str = "cpu", rounds: int | None = None, **over: Any) -> list[dict]:
    p = {**SIZES[size], **over}
    sync = sync_for(device)
    r = rounds or p["rounds"]
    recs = []
    test_x, test_y = _features(p["queries"], p["dim"], seed=1)
    for n in p["knn_train"]:
        train_x, train_y = _features(n, p["dim"], seed=0)
        tx, ty, qx = train_x.to(device), train_y.to(device), test_x.to(device)
        got: dict[str, np.ndarray] = {}
        variants = {
            "distill.probe.knn_predict": lambda: got.__setitem__("ours", knn_predict(tx, ty, qx, k=20).cpu().numpy())
        }
        if torch.device(device).type == "cpu":  # the same call with its CPU options changed, for comparison
            variants["knn_predict gemm=torch"] = lambda: knn_predict(tx, ty, qx, k=20, gemm="torch")
            variants["knn_predict workers=1"] = lambda: knn_predict(tx, ty, qx, k=20, workers=1)
        try:
            import faiss  # noqa: F401

            xn, yn, qn = train_x.numpy(), train_y.numpy(), test_x.numpy()
            variants["faiss IndexFlatL2 + vote"] = lambda: got.__setitem__("faiss", faiss_knn(xn, yn, qn, 20, 10))
            baseline, note = "faiss IndexFlatL2 + vote", []
        except ImportError:
            baseline, note = None, ["faiss not installed (pip install faiss-cpu): no baseline"]
        reset_gpu_peak()
        times = interleaved(variants, r, sync=sync, warmup=torch.device(device).type == "cuda")
        agree = float((got["ours"] == got["faiss"]).mean()) if "faiss" in got else None
        recs.append(
            record(
                f"knn_{n}",
                f"k-NN k=20 Euclidean, {n} training points, {p['queries']} queries, {p['dim']}-d",
                times,
                ours="distill.probe.knn_predict",
                baseline=baseline,
                target=">= 0.7",
                goal=lambda x: x >= 0.7,
                device=str(device),
                size=size,
                prediction_agreement=agree,
                notes=note,
            )
        )
    train_x, train_y = _features(p["linear_train"], p["dim"], seed=2)
    tx, ty, qx, qy = train_x.to(device), train_y.to(device), test_x.to(device), test_y.to(device)
    reset_gpu_peak()
    times = interleaved(
        {
            "distill.probe.linear_probe": lambda: linear_probe(tx, ty, qx, qy, epochs=10, device=device),
            "plain loop": lambda: plain_linear(tx, ty, qx, qy),
        },
        r,
        sync=sync,
        warmup=torch.device(device).type == "cuda",
    )
    recs.append(
        record(
            "linear_probe",
            f"linear probe, 10 epochs AdamW batch 256, {p['linear_train']} x {p['dim']} features",
            times,
            ours="distill.probe.linear_probe",
            baseline="plain loop",
            target=">= 0.95",
            goal=lambda x: x >= 0.95,
            device=str(device),
            size=size,
        )
    )
    recs.append(_embed_record(p, device, r, size))
    return recs


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=list(SIZES), default="full")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args(argv)
    recs = run_bench(a.size, a.device, a.rounds)
    for rec in recs:
        print(show(rec))
    return recs


if __name__ == "__main__":
    main()
