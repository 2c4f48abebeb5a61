"""Benchmark: the top Hessian eigenvalue of ResNet20 in one run by

- ``lanczos-value``: ``landscape.hessian.top_eigenpairs(stop="value")``, Lanczos with full
  reorthogonalisation stopped by power iteration's rule (relative change of the top value < tol),
- ``lanczos``: the same stopped when the Ritz residual is below tol |theta| (ARPACK's test, default),
- ``eigsh``: ``scipy.sparse.linalg.eigsh`` alone (implicitly restarted Lanczos, default ncv = 20),
- ``power``: plain power iteration (PyHessian's method and stopping rule: relative change of the
  Rayleigh quotient < tol).

All use the same Hessian-vector products (jvp of grad; one fixed mini-batch, BN in eval mode, fp32) and
the same relative tolerance; an eigsh run at ``--reference-tol`` (1e-6) gives the reference value
against which each result's relative error is reported. Data: Fashion-MNIST when installed, else
synthetic images.

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
    print(f"{'method':<14}{'eigenvalue':>14}{'HVPs':>7}{'seconds':>10}", flush=True)
    for name in ("lanczos-value", "power", "lanczos", "eigsh"):
        op.hvps = 0
        t0 = time.perf_counter()
        if name == "power":
            value = power_iteration(op, tol=a.tol, max_iter=1000, seed=a.seed)[0]
        else:
            method, _, stop = name.partition("-")
            value = float(top_eigenpairs(op, k=1, tol=a.tol, seed=a.seed, method=method, stop=stop or "residual")[0][0])
        rows.append((name, value, op.hvps, time.perf_counter() - t0))
        print(f"{name:<14}{value:14.6f}{op.hvps:7d}{rows[-1][3]:10.1f}", flush=True)
    by = {r[0]: r for r in rows}
    for ours, other in (("lanczos-value", "power"), ("lanczos", "eigsh")):
        print(
            f"{ours} vs {other} at tol {a.tol:g}: {by[other][3] / by[ours][3]:.2f}x faster in time, "
            f"{by[other][2] / max(by[ours][2], 1):.2f}x fewer Hessian-vector products",
            flush=True,
        )
    op.hvps = 0
    t0 = time.perf_counter()
    ref = float(top_eigenpairs(op, k=1, tol=a.reference_tol, seed=a.seed + 1, method="eigsh")[0][0])
    print(
        f"reference (eigsh, tol {a.reference_tol:g}): {ref:.6f} ({op.hvps} HVPs, {time.perf_counter() - t0:.1f} s); "
        "relative error: " + ", ".join(f"{name} {abs(value - ref) / abs(ref):.2e}" for name, value, _, _ in rows)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
