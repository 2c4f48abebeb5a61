"""What every analysis script shares, in one namespace: ``from analyses import common``.

The pieces live in modules by what they are: :mod:`analyses.runner` (the command line, :func:`script`),
:mod:`analyses.context` (:class:`Context`, provenance), :mod:`analyses.presets` (shared preset settings),
:mod:`analyses.data` (datasets), :mod:`analyses.runs` (distillations, work units, children, probes),
:mod:`analyses.results` (result files and their reductions), :mod:`analyses.figures` and
:mod:`analyses.captions` (figures and their titles). Accuracy is a fraction (0-1) in every file and in
percent in every figure and table (``pct``).
"""

from __future__ import annotations

# isort: off
# fmt: off
from analyses.captions import DATASET_NAME, NUM_CLASSES, TRAIN_IMAGES, arch_name, dataset_name, describe, title
from analyses.context import Context, UsageError, commit, provenance
from analyses.data import keep_classes, load, tiny_test
from analyses.figures import (
    LABEL, PROBE_LABEL, PROBE_SHORT, STYLE, band, figure, finish, legend, log_ticks, pct, shared_levels)
from analyses.presets import CIFAR10, QUICK_CHILDREN, SMOKE, SMOKE_HEAD, SMOKE_NET, Scale, sgd, small_net, variant
from analyses.results import (
    COMMITTED_PRESETS, REPO, STATISTIC_HELP, STATISTICS, along, best_over_epochs, committed, open_result,
    percents, pm, result_stem, save, stack_seeds)
from analyses.runner import PRESET_HELP, PRESET_NAMES, Compute, Plot, parser, script
from analyses.runs import (
    MODELS, child_settings, distil_all, last_probes, probe_backbone, probe_run, probes_array, run_config,
    student_and_init_children, sweep)

__all__ = [
    "CIFAR10", "COMMITTED_PRESETS", "Compute", "Context", "DATASET_NAME", "LABEL", "MODELS", "NUM_CLASSES",
    "PRESET_HELP", "PRESET_NAMES", "PROBE_LABEL", "PROBE_SHORT", "Plot", "QUICK_CHILDREN", "REPO", "SMOKE",
    "SMOKE_HEAD", "SMOKE_NET", "STATISTICS", "STATISTIC_HELP", "STYLE", "Scale", "TRAIN_IMAGES", "UsageError", "along",
    "arch_name", "band", "best_over_epochs", "child_settings", "commit", "committed", "dataset_name", "describe",
    "distil_all", "figure", "finish", "keep_classes", "last_probes", "legend", "load", "log_ticks", "open_result",
    "parser", "pct", "percents", "pm", "probe_backbone", "probe_run", "probes_array", "provenance", "result_stem",
    "run_config", "save", "script", "sgd", "shared_levels", "small_net", "stack_seeds", "student_and_init_children",
    "sweep", "tiny_test", "title", "variant",
]
# fmt: on
# isort: on
