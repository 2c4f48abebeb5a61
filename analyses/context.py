"""Where an analysis script reads and writes (:class:`Context`) and the provenance its result records."""

from __future__ import annotations

import datetime as _dt
import json
import shlex
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distill.store import store_name


class UsageError(ValueError):
    """A script argument that names nothing the preset has (``--only`` with no match): a one-line error."""


@dataclass
class Context:
    """Where a script reads and writes, and its preset's name."""

    name: str
    preset: str
    runs: Path
    results: Path
    root: str | None
    device: str
    only: tuple[str, ...] = ()
    code: str = ""  # the commit when the script started
    executor: Executor | None = None  # where independent runs go (None: one after the other here)
    snapshot: bool = False  # --snapshot: read what the stores hold so far, train nothing
    options: dict[str, Any] = field(default_factory=dict)  # the script's own flags (script(options=...))
    argv: tuple[str, ...] = ()  # the script's own arguments (also when analyses.all calls it)

    def keep(self, items: Sequence[str]) -> list[str]:
        """``items`` restricted to ``--only`` (all of them without it)."""
        return [i for i in items if not self.only or i in self.only]

    def store(self, *parts: str) -> Path:
        """A store path under ``runs/<name>/<preset>/`` (folders created); a ``.rts`` name whose old
        ``.h5`` folder is there (an interrupted run's) comes back as that one, to resume it
        (`distill.store.store_name`)."""
        p = store_name(self.runs.joinpath(self.name, self.preset, *parts))
        p.parent.mkdir(parents=True, exist_ok=True)
        return p


def commit() -> str:
    """The git commit of the code that ran (``+dirty`` when the tree has uncommitted changes)."""
    from distill.provenance import git_state

    head, dirty = git_state()
    return (head or "unknown") + ("+dirty" if dirty == 1 else "")


def provenance(ctx: Context, configs: dict[str, Any], seeds: Sequence[int], recipe: str) -> dict[str, Any]:
    """netCDF-safe attrs: commit, command line, preset, recipe, configs (JSON), seeds, versions."""
    import torch

    import distill

    return {
        "script": f"analyses.{ctx.name}",
        "preset": ctx.preset,
        "commit": ctx.code or commit(),
        "command_line": shlex.join(["python", "-m", f"analyses.{ctx.name}", *ctx.argv]),
        "recipe": recipe,
        "seeds": json.dumps([int(s) for s in seeds]),
        "config": json.dumps(
            {k: (v.to_dict() if hasattr(v, "to_dict") else v) for k, v in configs.items()}, sort_keys=True, default=str
        ),
        "toolkit_version": distill.__version__,
        "torch_version": str(torch.__version__),
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "accuracy_units": "fraction (figures and tables show percent)",
        "only": ",".join(ctx.only) or "all",
    }
