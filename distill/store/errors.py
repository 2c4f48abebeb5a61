"""The store's error type (one line, naming the path and the fix)."""

from __future__ import annotations


class StoreError(Exception):
    """A store is missing, corrupt, foreign, locked, or lacks what was asked of it."""
