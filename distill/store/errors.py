"""The store's error types (one line, naming the path and the fix)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class StoreError(Exception):
    """A store is missing, corrupt, foreign, locked, or lacks what was asked of it."""


class StoreBusy(StoreError):
    """Another live process holds the store's writer lock: ``store`` is its folder, ``holder`` the
    lock's note naming that process (``pid N on host H since T``, or ``another process``)."""

    def __init__(self, store: str, holder: str) -> None:
        self.store, self.holder = str(store), holder
        super().__init__(
            f"{self.store} is being written by {holder}: wait for it to finish or stop it; readers need no lock"
        )

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across executors (default pickling passes the message)
        return type(self), (self.store, self.holder)


def first_line(e: BaseException) -> str:
    """The first line of ``e``'s message, or its type's name when the message is empty."""
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


def link_error(path: Path | str, what: str = "entry") -> StoreError:
    """The one-line StoreError for a symbolic link found where the store keeps a file or folder."""
    return StoreError(
        f"{path}: this {what} of the store is a symbolic link, which the store never follows: "
        "remove the link (and restore the real file from a copy)"
    )
