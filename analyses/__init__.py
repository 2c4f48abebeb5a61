"""Batch scripts, one per experiment: ``python -m analyses.<name> --preset cpu|gpu``."""
