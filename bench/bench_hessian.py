"""Benchmark: the top Hessian eigenvalue of ResNet20, Lanczos (``landscape.hessian.top_eigenpairs``,
``scipy.sparse.linalg.eigsh`` on jvp-of-grad products) vs plain power iteration (PyHessian's
method and stopping rule: relative change of the Rayleigh quotient < tol), in one run.

Both use the same Hessian-vector products (one fixed mini-batch, BN in eval mode, fp32) and the
same relative tolerance; a tighter Lanczos run (``--reference-tol``, 1e-6) gives the reference value against which
each result's error is reported. Data: Fashion-MNIST when installed, else synthetic images.

    python -m bench.bench_hessian                  # ~10-20 minutes on 2 busy CPU cores
    python -m bench.bench_hessian --batch-size 32 --tol 1e-2
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def _batch(n: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    try:
        from distill.data import load_dataset

        data = load_dataset("fashion-mnist", subset=max(n, 100), seed=0)
        x = (data.train.images[:n].float() / 255 - data.mean[0]) / data.std[0]
        return x, data.train.labels[:n], "fashion-mnist"
    except Exception:  # no dataset installed: the timing does not depend on the pixel values
        g = torch.Generator().manual_seed(0)
        return torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g), "synthetic"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--tol", type=float, default=1e-3, help="relative tolerance of both methods (default: 1e-3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reference-tol", type=float, default=1e-6, help="tolerance of the reference Lanczos run")
    a = p.parse_args(argv)
    from distill.models import build_model, seeded
    from landscape.hessian import HessianOperator, power_iteration, top_eigenpairs

    torch.set_num_threads(min(2, torch.get_num_threads()))
    with seeded(0):
        model = build_model("resnet20", (1, 28, 28), head="linear", num_classes=10).eval()
    x, y, source = _batch(a.batch_size)
    op = HessianOperator(model, [(x, y)])
    op.matvec(np.ones(op.n))  # warm-up: the first torch.func call pays one-time set-up costs
    print(
        f"ResNet20 ({op.n:,} parameters), one batch of {len(x)} {source} images, fp32, CPU threads "
        f"{torch.get_num_threads()}"
    )

    rows = []
    print(f"{'method':<32}{'eigenvalue':>14}{'HVPs':>7}{'seconds':>10}", flush=True)
    for name in ("lanczos", "power"):
        op.hvps = 0
        t0 = time.perf_counter()
        if name == "lanczos":
            value = float(top_eigenpairs(op, k=1, tol=a.tol, seed=a.seed)[0][0])
        else:
            value = power_iteration(op, tol=a.tol, max_iter=1000, seed=a.seed)[0]
        rows.append((name, value, op.hvps, time.perf_counter() - t0))
        print(f"{name:<32}{value:14.6f}{op.hvps:7d}{rows[-1][3]:10.1f}", flush=True)
    (_, _, h_l, t_l), (_, _, h_p, t_p) = rows
    print(
        f"speed-up of Lanczos over power iteration at tol {a.tol:g}: {t_p / t_l:.2f}x in time, "
        f"{h_p / max(h_l, 1):.2f}x in Hessian-vector products",
        flush=True,
    )
    op.hvps = 0
    t0 = time.perf_counter()
    ref = float(top_eigenpairs(op, k=1, tol=a.reference_tol, seed=a.seed + 1)[0][0])
    print(
        f"reference (lanczos, tol {a.reference_tol:g}): {ref:.6f} ({op.hvps} HVPs, {time.perf_counter() - t0:.1f} s); "
        "relative error: " + ", ".join(f"{name} {abs(value - ref) / abs(ref):.2e}" for name, value, _, _ in rows)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
