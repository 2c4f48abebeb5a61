"""Every Python and shell block of README.md runs as written, in order, in one temporary folder.

A block is skipped only when the line right above it is ``<!-- not-run: REASON -->`` (the reason
is required). Blocks run with the interpreter of the test session (its ``bin`` folder first on
PATH, so ``rtt`` is the project's) and fail the test with the block's output. The wall time of
each block is printed (``pytest -s`` shows it); nothing is asserted about it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
NOT_RUN = re.compile(r"<!--\s*not-run:\s*(.*?)\s*-->\s*$")
LANGS = {"python": "python", "py": "python", "bash": "bash", "sh": "bash", "shell": "bash"}


def readme_blocks(text: str) -> list[tuple[int, str, str, str | None]]:
    """(line number, language, code, not-run reason or None) of every Python and shell block."""
    out = []
    for m in FENCE.finditer(text):
        lang = LANGS.get(m.group(1).lower())
        if lang is None:
            continue
        before = text[: m.start()].rstrip("\n").splitlines()
        marker = NOT_RUN.search(before[-1]) if before else None
        out.append((text.count("\n", 0, m.start()) + 1, lang, m.group(2), marker.group(1) if marker else None))
    return out


def test_the_extractor_finds_blocks_and_markers():
    text = "x\n```python\nprint(1)\n```\n<!-- not-run: needs a cluster -->\n```bash\nsbatch x\n```\n```text\nno\n```\n"
    assert readme_blocks(text) == [(2, "python", "print(1)\n", None), (6, "bash", "sbatch x\n", "needs a cluster")]


def test_readme_blocks_run_as_written(fmnist_root, tmp_path):
    blocks = readme_blocks((ROOT / "README.md").read_text())
    assert any(lang == "python" and reason is None for _, lang, _, reason in blocks)
    assert any(lang == "bash" and reason is None for _, lang, _, reason in blocks)
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        "PYTHONPATH": str(ROOT),
        "TQDM_DISABLE": "1",
        "RTT_DATA": str(fmnist_root.parent),
        "MPLBACKEND": "Agg",
    }
    timings = []
    for line, lang, code, reason in blocks:
        if reason is not None:
            assert reason, f"README.md:{line}: a not-run marker needs its reason"
            continue
        cmd = [sys.executable, "-c", code] if lang == "python" else ["bash", "-euo", "pipefail", "-c", code]
        t0 = time.perf_counter()
        r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        timings.append((line, lang, time.perf_counter() - t0))
        assert r.returncode == 0, f"README.md:{line} ({lang} block) failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    print("\nREADME blocks: " + ", ".join(f"line {n} ({lang}) {s:.1f} s" for n, lang, s in timings))
    print(f"README total: {sum(s for *_, s in timings):.1f} s")
