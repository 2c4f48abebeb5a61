"""The documentation site builds with ``mkdocs build --strict`` (warnings fail), as ``make docs``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

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
