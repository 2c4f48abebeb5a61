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

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The documentation site, built once with ``mkdocs build --strict``."""
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent)) or shutil.which("mkdocs")
    assert mkdocs, "mkdocs is not installed: run 'make venv' (the dev extra installs mkdocs and its plugins)"
    site = tmp_path_factory.mktemp("docs") / "site"
    r = subprocess.run(
        [mkdocs, "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return site


def test_docs_build_strict(site):
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


# modules that are not API: the command line's implementation (documented command by command in
# docs/cli.md, checked below against ``rtt -h``) and the store's internal modules (its API is
# ``distill.store`` itself)
_NOT_API = {"landscape.cli"}


def test_every_public_module_has_an_api_page():
    modules = sorted(
        ".".join(p.relative_to(ROOT).with_suffix("").parts)
        for pkg in ("distill", "landscape")
        for p in (ROOT / pkg).glob("*.py")
        if not p.name.startswith("_")
    )
    documented = set(_documented_modules())
    missing = [m for m in modules if m not in documented and m not in _NOT_API]
    assert not missing, "modules without an API page: " + ", ".join(missing)
    assert {"distill.heads", "distill.vit", "distill.dynamics", "landscape.align", "landscape.surface"} <= documented
    assert {"landscape.hessian", "landscape.plotting"} <= documented


def test_every_exported_name_has_an_entry_in_the_api_reference(site):
    html = "".join((site / "api" / pkg / "index.html").read_text() for pkg in ("distill", "landscape"))
    anchors = set(re.findall(r'id="([\w.]+)"', html))
    exported = [
        (pkg, n)
        for pkg in ("distill", "landscape")
        for n in importlib.import_module(pkg).__all__
        if not n.startswith("__")
    ]
    missing = [f"{pkg}.{n}" for pkg, n in exported if not any(a.endswith(f".{n}") for a in anchors)]
    print(f"\nAPI reference: {len(exported) - len(missing)} of {len(exported)} exported names documented")
    assert not missing, "exported but not in the API reference: " + ", ".join(missing)
    assert len(exported) >= 30


def test_internals_stay_out_of_the_api_reference(site):
    html = (site / "api" / "landscape" / "index.html").read_text()
    for internal in ("landscape.evaluate.lerp_stack", "landscape.evaluate.run_vmap", "landscape.evaluate.run_loop"):
        assert f'id="{internal}"' not in html, internal
    assert 'id="landscape.evaluate.run_segment"' in html  # the public part of the module stays


def test_the_cli_page_lists_every_command_of_rtt_help(capsys):
    from landscape.cli import main

    assert main(["-h"]) == 0
    commands = set(re.findall(r"^    ([a-z][\w-]*)  ", capsys.readouterr().out, re.M))  # the COMMAND list
    page = (ROOT / "docs" / "cli.md").read_text()
    in_table = set(re.findall(r"^\| `rtt ([\w-]+)", page, re.M))
    print(f"\ndocs/cli.md: {len(commands & in_table)} of {len(commands)} commands of rtt -h")
    assert commands == in_table, f"rtt -h: {sorted(commands)}; docs/cli.md: {sorted(in_table)}"
    assert len(commands) >= 13


def test_docstrings_are_markdown_not_rest():
    """The API pages render docstrings as Markdown (Google-style sections): no reST roles or '::' blocks."""
    role = re.compile(r":(func|class|mod|meth|data|attr|exc):`")
    offenders = []
    for pkg in ("distill", "landscape"):
        for p in sorted((ROOT / pkg).glob("*.py")):
            for n, line in enumerate(p.read_text().splitlines(), 1):
                if role.search(line) or (line.rstrip().endswith("::") and not line.lstrip().startswith("#")):
                    offenders.append(f"{p.relative_to(ROOT)}:{n}")
    assert not offenders, "reST markup in docstrings: " + ", ".join(offenders)
