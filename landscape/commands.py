"""``rtt`` subcommands beyond ``info``; each registers itself with :func:`landscape.cli.command`."""
from __future__ import annotations

import argparse
from pathlib import Path

from distill.config import DistillConfig, add_arguments, from_args
from landscape.cli import command


@command("distill", "distil a student from a random teacher into an HDF5 store")
class _Distill:
    @staticmethod
    def add_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--out", required=True, help="store to write (resumed when it exists)")
        p.add_argument("--no-resume", action="store_true", help="refuse to touch an existing store")
        add_arguments(p, DistillConfig)

    @staticmethod
    def run(a: argparse.Namespace) -> int:
        from distill.train import distill, summary_table

        cfg = from_args(DistillConfig, a)
        store = distill(cfg, Path(a.out), resume=not a.no_resume)
        print(summary_table(store.metrics))
        print(f"wrote {store.path}")
        return 0
