"""The light name lists of distill.registry agree with the real registries."""

from __future__ import annotations

import distill
from distill import registry
from distill.models import _REGISTRY


def test_builtin_names_match_the_registries():
    builtin = sorted(n for n, fn in _REGISTRY.items() if fn.__module__.startswith("distill."))
    assert builtin == sorted(registry.BUILTIN_MODELS)
    assert list(registry.BUILTIN_DATASETS) == distill.list_datasets()
    assert distill.list_probes()[:4] == list(registry.BUILTIN_PROBES) == ["knn", "linear", "linear_std", "knn_std"]
    # once the real registries are imported, the lists come from them (plugins included)
    assert registry.model_names() == distill.list_models()
    assert registry.probe_names() == distill.list_probes()
