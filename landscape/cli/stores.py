"""``rtt info``, ``rtt pack`` and ``rtt verify``: the commands that read, pack and check a store.
``rtt info`` reads with h5py alone (no torch, no xarray)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from landscape.cli import declare


# ---------------------------------------------------------------------------- info
def _info_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("store", help="path of a store (a .rts folder, or a packed .h5 file)")
    p.add_argument("--json", action="store_true", help="print the provenance as JSON (default: a table)")


def _info(_: None, a: argparse.Namespace) -> int:
    from distill.store.info import config_of, describe  # h5py only: answers without importing torch

    d = describe(a.store)
    attrs, names = d["attrs"], d["names"]
    if a.json:
        nested = {k: _json_value(v) for k, v in attrs.items()}
        listed = {"modules": names["modules"], "results": names["results"], "plugins": d["plugins"]}
        print(json.dumps({**nested, **listed}, indent=2, default=str))
        return 0
    print(f"store     {d['path']}")
    for k in ("kind", "format_version", "toolkit_version", "torch_version", "created_at"):
        print(f"{k:<9} {attrs.get(k)}" if len(k) <= 9 else f"{k} {attrs.get(k)}")
    cfg = config_of(attrs, d["path"])
    if cfg:
        short = {k: cfg[k] for k in ("dataset", "subset", "arch", "init", "alpha", "lr", "epochs", "seed") if k in cfg}
        print("config    " + ", ".join(f"{k}={v}" for k, v in short.items()))
    others = [n for n in names["modules"] if not n.startswith("student/")]
    print(f"modules   {', '.join(others) or '-'}")
    print(f"students  epochs {', '.join(map(str, d['epochs'])) or '-'}")
    for line in _plugin_lines(d["plugins"]):
        print(line)
    for r, (data_vars, sizes) in d["results"].items():
        dims = ", ".join(f"{k}={n}" for k, n in sizes.items())
        print(f"result    {r}: {', '.join(data_vars)} over ({dims})")
    return 0


def _plugin_lines(plugins: dict[str, list[str]]) -> list[str]:
    """``rtt info``'s lines on the plugins a store's models need: installed or how to provide them
    (read from package metadata; no plugin is imported)."""
    if not plugins:
        return []
    from distill.plugins import how_to_provide, installed_plugins

    installed = installed_plugins()
    out = []
    for module, users in sorted(plugins.items()):
        state = (
            f"installed (entry point {installed[module]!r})"
            if module in installed
            else f"not installed: {how_to_provide(module)}"
        )
        out.append(f"plugin    {module} for {len(users)} module(s): {state}")
    return out


def _json_value(value: Any) -> Any:
    """A store attribute for ``rtt info --json``: attributes that hold JSON (config, seeds, ...)
    become nested objects; everything else stays as it is."""
    if isinstance(value, str) and value[:1] in ("{", "["):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


declare("info", "print what a store holds: provenance, modules, saved epochs, results", None, _info, _info_args)


# ---------------------------------------------------------------------------- pack, verify
def _pack_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("store", help="store to pack")
    p.add_argument("out", help="HDF5 file to write (must not exist)")


def _pack(_: None, a: argparse.Namespace) -> int:
    from distill.store.pack import pack

    out = pack(a.store, a.out)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0


def _verify_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("store", help="store to check")


def _verify(_: None, a: argparse.Namespace) -> int:
    from distill.store.pack import verify

    count, problems = verify(a.store)
    for line in problems:
        print(f"damaged: {line}")
    print(f"{a.store}: {count} objects read, {len(problems)} problem(s)", file=sys.stderr if problems else sys.stdout)
    return 1 if problems else 0


declare(
    "pack",
    "write a store as one self-contained HDF5 file (for sharing; read by the same Store API)",
    None,
    _pack,
    _pack_args,
)
declare(
    "verify",
    "read every object of a store (checksums, dtypes, architectures); exit 1 on damage",
    None,
    _verify,
    _verify_args,
)
