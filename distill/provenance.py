"""Provenance of a run: which code, command, machine and recipe produced a store or a result file.

One helper, `provenance`, returns one set of keys (`KEYS`), written as root attrs of
every store and as attrs of every result Dataset (and so of every ``.nc`` file):

```python
toolkit_version   distill.__version__
git_commit        HEAD of the checkout the toolkit was imported from ("" outside a checkout)
git_dirty         1 when tracked files differ from HEAD, 0 when clean, -1 outside a checkout
command_line      the process's command line (sys.argv joined, shell-quoted)
host              socket.gethostname()
started_at        when the run (or analysis) started, UTC ISO 8601
torch_version     torch.__version__
cuda_version      torch.version.cuda ("" for a CPU-only build)
device            the device the numbers were computed on ("cpu", "cuda:0", ...)
precision         fp32 or bf16
numerics          the settings that decide float rounding: torch's intra-op thread count (a CPU run is
                  bit-reproducible at the same count, not across counts), TF32 for cuDNN convolutions
                  and CUDA matmuls, float32_matmul_precision, deterministic algorithms
world_size        processes that trained together (1 unless data-parallel)
recipe            the configuration as canonical JSON (sorted keys)
config_hash       first 10 hex digits of the SHA-256 of ``recipe``
run_name          "<kind>_<config_hash>": the run's name (open_lth style)
```

Values are strings or ints only (netCDF and HDF5 attrs accept both).
"""

from __future__ import annotations

import functools
import hashlib
import json
import shlex
import socket
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import is_dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

KEYS = (
    "toolkit_version",
    "git_commit",
    "git_dirty",
    "command_line",
    "host",
    "started_at",
    "torch_version",
    "cuda_version",
    "device",
    "precision",
    "numerics",
    "world_size",
    "recipe",
    "config_hash",
    "run_name",
)


def now() -> str:
    """The current time, UTC, ISO 8601 with seconds."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def recipe_json(recipe: Any) -> str:
    """Canonical JSON of a config dataclass (``to_dict``), a mapping, or None (``{}``)."""
    if recipe is None:
        recipe = {}
    elif hasattr(recipe, "to_dict"):
        recipe = recipe.to_dict()
    elif is_dataclass(recipe):
        import dataclasses

        recipe = dataclasses.asdict(recipe)  # type: ignore[arg-type]
    elif isinstance(recipe, str):
        recipe = json.loads(recipe)
    return json.dumps(recipe, sort_keys=True, default=str)


def config_hash(recipe: Any) -> str:
    """Short (10 hex digits) SHA-256 of the canonical JSON of ``recipe``: equal recipes, equal hash."""
    return hashlib.sha256(recipe_json(recipe).encode()).hexdigest()[:10]


@functools.lru_cache(maxsize=1)
def git_state() -> tuple[str, int]:
    """(commit, dirty) of the git checkout holding this toolkit; ("", -1) outside one or without git."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if commit.returncode != 0:
            return "", -1
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "", -1
    dirty = int(bool(status.stdout.strip())) if status.returncode == 0 else -1
    return commit.stdout.strip(), dirty


def numerics() -> str:
    """The settings that decide a run's float rounding, as one line: torch's intra-op thread count (on a
    CPU, oneDNN and the reductions split their work by it, so a run repeats bit for bit at the same count
    and differs in the last bits across counts) and PyTorch's float32 settings (a fp32 run on CUDA computes
    its convolutions in TF32 when ``cudnn.allow_tf32`` is on, PyTorch's default)."""
    import torch

    return (
        f"intra_op_threads={torch.get_num_threads()} "
        f"cudnn.allow_tf32={int(torch.backends.cudnn.allow_tf32)} "
        f"cuda.matmul.allow_tf32={int(torch.backends.cuda.matmul.allow_tf32)} "
        f"float32_matmul_precision={torch.get_float32_matmul_precision()} "
        f"deterministic_algorithms={int(torch.are_deterministic_algorithms_enabled())}"
    )


def provenance(
    recipe: Any = None,
    *,
    kind: str = "run",
    device: Any = "cpu",
    precision: str = "fp32",
    started_at: str | None = None,
    world_size: int | None = None,
) -> dict[str, str | int]:
    """The provenance keys (`KEYS`) of a run of ``kind`` with configuration ``recipe``.

    Args:
        recipe: a config dataclass, a JSON-able mapping or None. device: where the numbers were

    computed. started_at: default now. world_size: default the initialised process group's size,
    else 1.
    """
    import torch

    import distill

    if world_size is None:
        dist = torch.distributed
        world_size = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    commit, dirty = git_state()
    text = recipe_json(recipe)
    digest = config_hash(text)
    return {
        "toolkit_version": str(distill.__version__),
        "git_commit": commit,
        "git_dirty": int(dirty),
        "command_line": shlex.join(sys.argv),
        "host": socket.gethostname(),
        "started_at": started_at or now(),
        "torch_version": str(torch.__version__),
        "cuda_version": str(torch.version.cuda or ""),
        "device": str(device),
        "precision": str(precision),
        "numerics": numerics(),
        "world_size": int(world_size),
        "recipe": text,
        "config_hash": digest,
        "run_name": f"{kind}_{digest}",
    }


def stamp(attrs: dict[str, Any], recipe: Any = None, **kw: Any) -> dict[str, Any]:
    """``attrs`` updated in place with `provenance` (keys already in ``attrs`` are replaced)."""
    attrs.update(provenance(recipe, **kw))
    return attrs


def missing(attrs: Mapping[str, Any]) -> list[str]:
    """The provenance keys absent from ``attrs`` (empty when complete)."""
    return [k for k in KEYS if k not in attrs]
