"""Runs identified by their settings, and the stores that record them.

A run (a sweep point, a child, a lottery sequence) writes a store. It is *done* when that store
records a finished result made with the same settings (`finished`, `differing`); a rerun with
other settings on the same store is refused in one line naming the settings that differ
(`refuse`). `open_store` opens a store for writing, creating it when missing.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from distill.store import Store, StoreError

ADVICE = "pass the same settings to resume, or use a new store"


def open_store(
    store: Store | str | Path, config: Mapping[str, Any], kind: str, seeds: Mapping[str, int] | None = None
) -> Store:
    """``store`` open for writing: a Store (reopened in mode "a" when read-only) or a path, created
    with ``config``, ``kind`` and ``seeds`` when nothing is there."""
    if isinstance(store, Store):
        return store if store.mode == "a" else Store(store.path, "a")
    path = Path(store)
    if path.exists():
        return Store(path, "a")
    return Store.create(path, dict(config), kind=kind, seeds=seeds)


def finished(path: str | Path | None, test: Callable[[Store], bool]) -> bool:
    """Whether the store at ``path`` exists, can be read and passes ``test`` (e.g. holds a result
    with the same settings); a missing or unreadable store is not finished."""
    if path is None or not Path(path).exists():
        return False
    try:
        return bool(test(Store(path)))
    except (StoreError, OSError, KeyError, ValueError):
        return False


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def differing(recorded: Mapping[str, Any], wanted: Mapping[str, Any], keys: Iterable[str] | None = None) -> list[str]:
    """Names among ``keys`` (default: every name in either) whose values differ between the
    settings a store ``recorded`` and those ``wanted`` now, compared as JSON; a missing one is None."""
    names = list(dict.fromkeys([*recorded, *wanted])) if keys is None else list(keys)
    return [k for k in names if _plain(recorded.get(k)) != _plain(wanted.get(k))]


def refuse(
    where: str, fields: list[str], recorded: Mapping[str, Any], wanted: Mapping[str, Any], advice: str = ADVICE
) -> None:
    """Raise a one-line ValueError when ``fields`` (from `differing`) is not empty: ``where`` was made
    with other values of those settings than this call asks for."""
    if fields:
        was = ", ".join(f"{k}={recorded.get(k)!r}" for k in fields)
        now = ", ".join(f"{k}={wanted.get(k)!r}" for k in fields)
        raise ValueError(f"{where} was made with {was}, this call asks {now}: {advice}")
