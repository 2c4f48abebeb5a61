"""The documentation site builds with ``mkdocs build --strict`` (warnings fail), as ``make docs``."""

from __future__ import annotations

import importlib
import inspect
import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def test_docs_build_strict(tmp_path):
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent)) or shutil.which("mkdocs")
    assert mkdocs, "mkdocs is not installed: run 'make venv' (the dev extra installs mkdocs and its plugins)"
    site = tmp_path / "site"
    r = subprocess.run(
        [mkdocs, "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert r.returncode == 0, r.stdout + r.stderr
    # the API reference is generated from the docstrings
    assert "register_probe" in (site / "api" / "distill" / "index.html").read_text()
    assert "Loss and error along" in (site / "api" / "landscape" / "index.html").read_text()  # linear_path's
    for page in ("getting-started", "workflows/connectivity", "data", "schemas", "reference-code", "extending"):
        assert (site / page / "index.html").is_file(), page


def _documented_modules() -> list[str]:
    """The modules the API reference pages render (``::: module`` lines of docs/api/*.md)."""
    names = []
    for page in sorted((ROOT / "docs" / "api").glob("*.md")):
        names += re.findall(r"^:::\s*([\w.]+)\s*$", page.read_text(), re.M)
    return names


def _public(module: types.ModuleType) -> list[tuple[str, Any]]:
    """(qualified name, object) of the module's public functions and classes and their public methods:
    the names of ``__all__``, or those defined in the module without a leading underscore."""
    names = getattr(module, "__all__", None)
    if names is None:
        names = [
            n
            for n, v in vars(module).items()
            if not n.startswith("_") and getattr(v, "__module__", None) == module.__name__
        ]
    out = []
    for n in names:
        obj = getattr(module, n)
        if not (inspect.isfunction(obj) or inspect.isclass(obj)):
            continue
        out.append((f"{module.__name__}.{n}", obj))
        if inspect.isclass(obj):
            for m, member in vars(obj).items():
                fn = member.fget if isinstance(member, property) else getattr(member, "__func__", member)
                if not m.startswith("_") and (inspect.isfunction(fn)):
                    out.append((f"{module.__name__}.{n}.{m}", fn))
    return out


def test_every_public_function_and_class_has_a_docstring():
    modules = _documented_modules()
    assert {"distill", "landscape", "distill.store", "landscape.paths"} <= set(modules)
    seen, missing = 0, []
    for name in modules:
        for qual, obj in _public(importlib.import_module(name)):
            seen += 1
            if not (inspect.getdoc(obj) or "").strip():  # an override may inherit its base's docstring
                missing.append(qual)
    assert seen > 100, seen  # the enumeration found the API
    assert not missing, "public names without a docstring: " + ", ".join(sorted(set(missing)))
