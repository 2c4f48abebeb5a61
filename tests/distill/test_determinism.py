"""A CPU distillation repeats bit for bit in a fresh process at the same torch thread count; the count
is recorded in the store's provenance (``numerics``), since runs at different counts differ in the last
bits (oneDNN and the reductions split their work by it) and so, after many steps, in the probes."""

from __future__ import annotations

import subprocess
import sys
import textwrap

RUN = textwrap.dedent(
    """
    import hashlib, sys, torch
    torch.set_num_threads(int(sys.argv[1]))
    import distill
    from distill.config import DistillConfig
    from tests.distill.test_train import synthetic
    cfg = DistillConfig(dataset="synthetic", arch="convnet", arch_options={"width": 16, "depth": 2, "bn": True},
                        out_dim=256, hidden_dim=64, bottleneck_dim=32, batch_size=32, epochs=2, probes=[],
                        save_every=1, device="cpu")
    s = distill.distill(cfg, sys.argv[2], data=synthetic(n_train=256), progress=False)
    sd = s.student(2).state_dict()
    print(hashlib.sha256(b"".join(v.contiguous().numpy().tobytes() for v in sd.values())).hexdigest())
    print(s.attrs["numerics"])
    """
)


def _run(threads: int, out) -> tuple[str, str]:
    r = subprocess.run(
        [sys.executable, "-c", RUN, str(threads), str(out)], capture_output=True, text=True, check=True, timeout=600
    )
    digest, numerics = r.stdout.strip().splitlines()[-2:]
    return digest, numerics


def test_same_thread_count_same_bits_in_fresh_processes(tmp_path):
    for threads in (1, 2):
        a = _run(threads, tmp_path / f"a{threads}.h5")
        b = _run(threads, tmp_path / f"b{threads}.h5")
        assert a[0] == b[0], f"two fresh runs at {threads} thread(s) trained different students"
        assert f"intra_op_threads={threads} " in a[1]
