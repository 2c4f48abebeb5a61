"""What every variable and coordinate of a result holds: its ``long_name`` and ``units``.

`FIELDS` gives each name its default; `KIND_FIELDS` gives the meaning a name takes in one kind of
result (``accuracy`` of the transfer analysis is measured on the target classes only). A
``long_name`` with ``{...}`` fields names a setting of the run, filled in when the result is built.
"""

from __future__ import annotations

from typing import NamedTuple


class Field(NamedTuple):
    """One variable or coordinate: ``units`` None for a label (names or indices, no units attr);
    ``stored`` False where the result holds it without attrs (its values label themselves)."""

    long_name: str
    units: str | None = None
    note: str = ""
    stored: bool = True


def _label(long_name: str, note: str = "") -> Field:
    """A coordinate of names or indices, held without attrs."""
    return Field(long_name, None, note, stored=False)


_PAPER = "the paper's number, beside ours"
_CHILD_ACC = Field("test accuracy of each child after training", "fraction")
_TEST_LOSS = Field("test cross-entropy", "nats")
_TEST_ERROR = Field("test error", "fraction")
_STUDENT_PROBES = Field(
    "probe accuracy of the student the children start from (and of its teacher), at its last epoch", "fraction"
)
_BEST_PROBE = "probe accuracy (best over the probed epochs after epoch 0)"

FIELDS: dict[str, Field] = {
    # shared coordinates
    "alpha": Field("interpolation coefficient", "1", "0 is the first end point, 1 the second"),
    "split": _label("evaluated split", "train or test"),
    "model": _label("network probed", "teacher, teacher_bn (BN statistics re-estimated), student, input (pixels)"),
    "probe": _label("probe", "knn, linear, linear_std, or a registered probe"),
    "epoch": _label("distillation epoch", "0 is before any training"),
    "layer": _label("probed layer", "the backbone's layers, the embedding last"),
    "seed": _label("seed of the run or unit"),
    "pair": _label("pair of runs compared"),
    "point": _label("checkpoint placed in the plane", "a, b, c"),
    "eigen": Field("eigenvalue rank (0 = largest)", "1"),
    "run": _label("index of the run"),
    "arch": _label("architecture"),
    "start": _label("where the children start from"),
    "centre": _label("centre of the surface"),
    "x": Field("coordinate along u = b - a", "|b - a|"),
    "y": Field("coordinate along v (c orthogonalised against u)", "|b - a|"),
    "level": Field("pruning level", "1", "0 is the dense network"),
    "sparsity": Field("fraction of prunable weights remaining", "fraction"),
    # shared variables
    "loss": Field("cross-entropy loss", "nats", "mean over the evaluated examples"),
    "error": Field("classification error", "fraction"),
    "accuracy": Field("probe accuracy", "fraction"),
    "barrier_error": Field("error barrier", "fraction", "max_alpha err - mean of the two ends"),
    "barrier_loss": Field("loss barrier", "nats", "max_alpha of the loss above the chord of its ends"),
    "child_test_accuracy": _CHILD_ACC,
    # the store's metrics
    "kl": Field("KL(teacher || student) (mean over the epoch)", "nats"),
    "student_norm": Field("student embedding L2 norm (mean)", "1"),
    "teacher_norm": Field("teacher embedding L2 norm (mean)", "1"),
    "distance": Field("parameter distance student - teacher (L2)", "1"),
    "seconds": Field("wall time of the epoch (epoch 0: its probes)", "s"),
    "effective_rank": Field("effective rank of the embeddings (centred, Roy & Vetterli)", "1"),
    "dead_fraction": Field("fraction of embedding units <= 0 on every input", "fraction"),
    "embedding_cosine": Field("mean cosine similarity of embeddings of different inputs", "1"),
    "layer_cosine": Field("mean cosine similarity between different inputs, per layer", "1"),
    "layer_effective_rank": Field("effective rank of the layer's channel means / units", "1"),
    "layer_dead_fraction": Field("fraction of units <= 0 on every input, per layer", "fraction"),
    # Hessian
    "hvps": Field("Hessian-vector products used", "1"),
    "eig_seconds": Field("wall time of the eigenvalue computation", "s"),
    "eigenvalue": Field("Hessian eigenvalue (largest first)", "nats"),
    "eigenvector": Field("unit Hessian eigenvector (parameters in named_parameters order)", "1"),
    "trace": Field("Hessian trace ({trace_method}, {trace_probes} probes)", "nats"),
    "trace_stderr": Field("standard error of the trace estimate", "nats"),
    "slq_node": Field("SLQ quadrature node (Ritz value)", "nats"),
    "slq_weight": Field("SLQ quadrature weight", "1"),
    "density": Field("Hessian spectral density (Gaussian-smoothed SLQ)", "1/nats"),
    "lambda": Field("eigenvalue", "nats"),
    "remaining": Field("fraction of prunable weights kept", "fraction"),
}

KIND_FIELDS: dict[tuple[str, str], Field] = {
    # the store's metrics
    ("metrics", "loss"): Field("distillation loss (mean over the epoch)", "nats"),
    # surface
    ("surface", "x"): Field("coordinate along d1", "|d1|"),
    ("surface", "y"): Field("coordinate along d2", "|d2|"),
    ("surface", "done"): Field("{row} evaluated", "1", "per row (y) of a plane, one value for a line"),
    # plane
    ("plane", "point_x"): Field("x of the checkpoint in the plane", "|b - a|"),
    ("plane", "point_y"): Field("y of the checkpoint in the plane", "|b - a|"),
    # instability
    ("instability", "pair"): Field("pair of children i-j", None),
    ("instability", "child"): Field("child index", None),
    ("instability", "child_i"): _label("first child of the pair"),
    ("instability", "child_j"): _label("second child of the pair"),
    ("instability", "child_seed"): _label("seed of the child's supervised training"),
    # lottery
    ("lottery", "best_accuracy"): Field("best test accuracy over the evaluations of the level's training", "fraction"),
    ("lottery", "final_accuracy"): Field("test accuracy at the end of the level's training", "fraction"),
    ("lottery", "final_loss"): Field("test cross-entropy at the end of the level's training", "nats"),
    ("lottery", "remaining_weights"): Field("unpruned prunable weights", "count"),
    ("lottery", "rewind"): Field("rewind target", None, "start, init, step, or a stored checkpoint"),
    ("lottery", "method"): Field("pruning method", None, "imp, random_prune, random_reinit"),
    # Hessian
    ("hessian", "loss"): Field("{loss} loss at the point", "nats"),
    ("hessian_levels", "level"): Field("IMP level (0 = dense)", "1"),
    ("hessian", "run"): _label("SLQ run"),
    # locality
    ("locality", "alpha"): Field("interpolation weight of noise at init", "1"),
    ("locality", "eps"): Field("noise scale at init", "1"),
    ("locality", "kl"): Field("KL(teacher || student), epoch mean", "nats"),
    ("locality", "distance_teacher"): Field("parameter distance student - teacher (L2)", "1"),
    ("locality", "final_kl"): Field("KL(teacher || student) in the last epoch", "nats"),
    ("locality", "distance_init"): Field("parameter distance final student - initial student (L2)", "1"),
    ("locality", "distance_teacher_init"): Field("parameter distance initial student - teacher (L2)", "1"),
    ("locality", "store"): _label("store of the point"),
    # analyses: probes of single networks
    ("analyses.probe_spread", "recipe"): _label("probe recipe", "paper or reference"),
    ("analyses.probe_spread", "probe_seed"): _label("probe seed"),
    ("analyses.probe_spread", "accuracy"): Field("raw linear probe test accuracy", "fraction"),
    ("analyses.probe_spread", "best"): Field(
        "best raw linear probe over the probe seeds (the reference code's reported number)", "fraction"
    ),
    ("analyses.probe_spread", "paper_teacher_linear"): Field("paper: teacher linear probe (Table 5)", "fraction"),
    # analyses.tables
    ("analyses.tables", "teacher"): Field("random teacher probe accuracy", "fraction"),
    ("analyses.tables", "teacher_bn"): Field("BN-recalibrated random teacher probe accuracy", "fraction"),
    ("analyses.tables", "student"): Field(
        "student probe accuracy (best over the probed epochs after epoch 0)", "fraction"
    ),
    ("analyses.tables", "input"): Field("raw-pixel probe accuracy", "fraction"),
    ("analyses.tables", "input_seed"): _label("probe seed of the raw-pixel probes"),
    ("analyses.tables", "paper_teacher_linear"): Field("paper: teacher linear probe", "fraction", _PAPER),
    ("analyses.tables", "paper_student_linear"): Field("paper: student linear probe", "fraction", _PAPER),
    ("analyses.tables", "paper_teacher_knn"): Field("paper: teacher k-NN", "fraction", _PAPER),
    ("analyses.tables", "paper_student_knn"): Field("paper: student k-NN", "fraction", _PAPER),
    ("analyses.tables", "paper_input"): Field("paper: raw-pixel probe", "fraction", _PAPER),
    # analyses.table1
    ("analyses.table1", "run"): _label("run tag", "<arch>-<recipe>-s<seed>"),
    ("analyses.table1", "recipe"): _label("recipe of the run"),
    ("analyses.table1", "run_commit"): Field("git commit of the code that trained the run (its store's provenance)"),
    ("analyses.table1", "statistic"): _label("reduction over the probed epochs", "best_after_epoch0, best, last"),
    ("analyses.table1", "summary"): Field("probe accuracy, reduced over the probed epochs", "fraction"),
    ("analyses.table1", "reference"): _label("model the student is compared with", "teacher, teacher_bn"),
    ("analyses.table1", "first_pass"): Field(
        "first probed epoch at which the student's accuracy exceeds the reference's", "epoch", "NaN: never"
    ),
    ("analyses.table1", "epochs_done"): Field("epochs trained so far", "epoch"),
    ("analyses.table1", "paper"): Field("the paper's Table 1 (linear) and Table 3 (k-NN), CIFAR-10", "fraction"),
    ("analyses.table1", "paper_arch"): _label("architecture of the paper's row"),
    # analyses.head_dim
    ("analyses.head_dim", "accuracy_out_dim"): Field(_BEST_PROBE, "fraction"),
    ("analyses.head_dim", "accuracy_bottleneck"): Field(_BEST_PROBE, "fraction"),
    ("analyses.head_dim", "out_dim"): Field("head output dimension", "1"),
    ("analyses.head_dim", "bottleneck_dim"): Field("bottleneck width (output {bottleneck_out})", "1"),
    # analyses.data_dependence
    ("analyses.data_dependence", "accuracy"): Field("probe accuracy on CIFAR-10 (full training split)", "fraction"),
    ("analyses.data_dependence", "steps"): Field("optimiser steps of the distillation", "1"),
    ("analyses.data_dependence", "paper_real"): Field(
        "paper: VGG11 student linear probe, CIFAR-5M images", "percent", _PAPER
    ),
    ("analyses.data_dependence", "paper_gaussian"): Field(
        "paper: VGG11 student linear probe, Gaussian noise", "percent", _PAPER
    ),
    ("analyses.data_dependence", "data"): _label("distillation data", "real or gaussian"),
    ("analyses.data_dependence", "regime"): _label("training length", "epochs or steps (see attrs regimes)"),
    ("analyses.data_dependence", "n"): Field("distillation-set size", "images"),
    ("analyses.data_dependence", "paper_n"): _label("distillation-set size of the paper's real-image points"),
    ("analyses.data_dependence", "paper_n_noise"): _label("distillation-set size of the paper's noise points"),
    # analyses.transfer
    ("analyses.transfer", "accuracy"): Field("probe accuracy on the target classes", "fraction"),
    ("analyses.transfer", "pair"): _label("source -> target class split"),
    ("analyses.transfer", "model"): _label("network probed", "student_transfer, student_in_domain, teacher, ..."),
    # analyses.planes
    ("analyses.planes", "loss"): Field("distillation loss H(p_teacher, p_theta)", "nats"),
    ("analyses.planes", "accuracy"): Field("k-NN (k=20) probe accuracy", "fraction"),
    ("analyses.planes", "point_x"): Field("x of the three networks", "|b - a|"),
    ("analyses.planes", "point_y"): Field("y of the three networks", "|b - a|"),
    ("analyses.planes", "norm_u"): Field("L2 norm of the plane's first direction, b - a (parameters)", "1"),
    ("analyses.planes", "norm_v"): Field(
        "L2 norm of the plane's second direction, c - a orthogonalised (parameters)", "1"
    ),
    ("analyses.planes", "x"): _label("grid column"),
    ("analyses.planes", "y"): _label("grid row"),
    ("analyses.planes", "x_value"): Field("x of the grid column", "|b - a|"),
    ("analyses.planes", "y_value"): Field("y of the grid row", "|b - a|"),
    ("analyses.planes", "point_name"): _label("network at the point"),
    ("analyses.planes", "view"): _label("which three networks span the plane"),
    # analyses.surface
    ("analyses.surface", "t"): Field("coordinate along d", "filter norms"),
    ("analyses.surface", "x"): Field("coordinate along d1", "filter norms"),
    ("analyses.surface", "y"): Field("coordinate along d2", "filter norms"),
    ("analyses.surface", "u"): Field("along child 1 - child 0 (siblings)", "|d1|"),
    ("analyses.surface", "v"): Field("along init child 0 - child 0", "|d2|"),
    **{("analyses.surface", f"{s}_loss"): _TEST_LOSS for s in ("line", "plane", "through")},
    **{("analyses.surface", f"{s}_error"): _TEST_ERROR for s in ("line", "plane", "through")},
    # analyses.hessian
    ("analyses.hessian", "path_eigenvalue"): Field(
        "Hessian eigenvalue along the path (Lanczos, largest first)", "nats"
    ),
    ("analyses.hessian", "path_trace"): Field("Hessian trace along the path (Hutch++)", "nats"),
    ("analyses.hessian", "path_trace_stderr"): Field("standard error of the trace estimate", "nats"),
    ("analyses.hessian", "path_loss"): Field("training loss along the path", "nats"),
    ("analyses.hessian", "path_hvps"): Field("Hessian-vector products spent at the point", "1"),
    ("analyses.hessian", "path_eig_seconds"): Field("wall time of the eigenvalue computation", "s"),
    ("analyses.hessian", "density"): Field("spectral density (SLQ, Gaussian-smoothed)", "1/nats", "attr sigma: width"),
    ("analyses.hessian", "lambda"): Field("Hessian eigenvalue", "nats"),
    ("analyses.hessian", "level"): Field("IMP level (0 = dense)", "1"),
    ("analyses.hessian", "level_eigenvalue"): Field("Hessian eigenvalue (largest first)", "nats"),
    ("analyses.hessian", "level_trace"): Field("Hessian trace ({trace_method}, {trace_probes} probes)", "nats"),
    ("analyses.hessian", "level_loss"): Field("{loss} loss at the point", "nats"),
    ("analyses.hessian", "run"): _label("SLQ run"),
    # analyses.lottery
    ("analyses.lottery", "best_accuracy"): Field("best test accuracy of the level's retraining", "fraction"),
    ("analyses.lottery", "curve"): _label("IMP variant", "student, random_prune, random_reinit, init, early steps"),
    ("analyses.lottery", "level"): _label("pruning level", "0 is the dense network"),
    # analyses.align_barriers
    ("analyses.align_barriers", "error"): _TEST_ERROR,
    ("analyses.align_barriers", "loss"): _TEST_LOSS,
    ("analyses.align_barriers", "end_accuracy"): Field("test accuracy of the trained end point", "fraction"),
    ("analyses.align_barriers", "seconds"): Field("wall time of the pair", "s"),
    ("analyses.align_barriers", "width"): Field("hidden width", "units"),
    ("analyses.align_barriers", "seed"): Field("pair seed", "1"),
    ("analyses.align_barriers", "alignment"): _label("alignment method", "none, weights, activations, weights+repair"),
    ("analyses.align_barriers", "end"): _label("end point of the path", "a, b"),
    # analyses.claims
    ("analyses.claims", "row_id"): _label("row"),
    ("analyses.claims", "claim"): _label("claim"),
    ("analyses.claims", "paper"): _label("where the paper makes the claim"),
    ("analyses.claims", "file"): _label("result file the row is read from"),
    ("analyses.claims", "row"): _label("row of the claim"),
    ("analyses.claims", "setting"): _label("setting of the row"),
    ("analyses.claims", "commit"): _label("commit of the result file"),
    ("analyses.claims", "effect"): Field("mean over seeds of the same-seed difference", "fraction"),
    ("analyses.claims", "low"): Field("95 % t interval of the effect, lower end", "fraction"),
    ("analyses.claims", "high"): Field("95 % t interval of the effect, upper end", "fraction"),
    ("analyses.claims", "n"): Field("seeds (or pairs) in the difference", "1"),
    ("analyses.claims", "direction"): Field(
        "the paper's direction: +1 positive, -1 negative, 0 no difference within margin", "1"
    ),
    ("analyses.claims", "verdict"): Field("supported / contradicted / open by the rule in attrs", "1"),
    ("analyses.claims", "margin"): Field(
        "half-width of the band of a no-difference claim (0 for directional claims)", "fraction"
    ),
    # analyses.locality and analyses.instability
    ("analyses.locality", "net"): _label("network family", "bn or no_bn"),
    ("analyses.locality", "accuracy_by_epoch"): Field(
        "probe accuracy at each probed epoch (NaN where a net was not probed)", "fraction"
    ),
    ("analyses.instability", "student_probe_accuracy"): _STUDENT_PROBES,
    ("analyses.lottery", "student_probe_accuracy"): _STUDENT_PROBES,
}
