"""Every kind of result the toolkit returns or writes: what makes it, its dims, variables and
coordinates. The names' meanings are in `distill.schema.fields`."""

from __future__ import annotations

from typing import NamedTuple


class Kind(NamedTuple):
    """A kind of result. ``like``: the kind whose meanings a name takes when this kind gives it none."""

    made_by: str
    dims: tuple[str, ...]
    variables: tuple[str, ...]
    coords: tuple[str, ...] = ()
    like: str = ""


_METRICS = ("accuracy", "loss", "kl", "student_norm", "teacher_norm", "distance", "seconds")
_DYNAMICS = (
    "effective_rank",
    "dead_fraction",
    "embedding_cosine",
    "layer_cosine",
    "layer_effective_rank",
    "layer_dead_fraction",
)
_CURVES = ("loss", "error")
_BARRIERS = ("barrier_error", "barrier_loss")
_CHILDREN = ("pair", "child_i", "child_j", "child", "child_seed")
_HESSIAN = ("loss", "hvps", "eig_seconds", "eigenvalue", "trace", "trace_stderr", "slq_node", "slq_weight", "density")
_LOTTERY = ("best_accuracy", "final_accuracy", "final_loss", "remaining_weights")
_PROBED = ("model", "probe")

KINDS: dict[str, Kind] = {
    "metrics": Kind(
        "`Store.metrics` (`distill.distill`); the dynamics variables with `dynamics=True`",
        ("epoch", "model", "probe", "layer"),
        _METRICS + _DYNAMICS,
        ("epoch", *_PROBED, "layer"),
    ),
    "linear_path": Kind("`landscape.linear_path`", ("alpha", "split"), _CURVES, ("alpha", "split")),
    "barrier": Kind(
        "`landscape.barrier`, `landscape.with_barriers` (the coordinates of the curves but alpha)",
        ("split", "any other dim of the curves but alpha"),
        _BARRIERS,
        ("split",),
    ),
    "instability": Kind(
        "`landscape.instability`",
        ("pair", "alpha", "split", "child"),
        _CURVES + _BARRIERS + ("child_test_accuracy",),
        ("alpha", "split", *_CHILDREN),
    ),
    "lottery": Kind(
        "`landscape.lottery` (``method`` with baselines)",
        ("rewind", "method", "level"),
        _LOTTERY,
        ("rewind", "method", "level", "sparsity"),
    ),
    "lottery_sweep": Kind(
        "`landscape.lottery_sweep` (``seed`` with several seeds)",
        ("seed", "rewind", "method", "level"),
        _LOTTERY,
        ("seed", "rewind", "method", "level", "sparsity"),
        like="lottery",
    ),
    "locality": Kind(
        "`landscape.locality`",
        ("alpha or eps", "seed", "epoch", *_PROBED),
        ("accuracy", "kl", "distance_teacher", "final_kl", "distance_init", "distance_teacher_init"),
        ("alpha", "eps", "seed", "epoch", *_PROBED, "store"),
    ),
    "plane": Kind("`landscape.plane`", ("x", "y", "point"), _CURVES + ("point_x", "point_y"), ("x", "y", "point")),
    "surface": Kind("`landscape.surface` (a line has no y)", ("x", "y"), _CURVES + ("done",), ("x", "y")),
    "hessian": Kind(
        "`landscape.hessian` (eigenvector with `vectors=True`, SLQ with `slq_runs`)",
        ("eigen", "parameter", "run", "node", "lambda"),
        _HESSIAN + ("eigenvector",),
        ("eigen", "run", "lambda"),
    ),
    "hessian_path": Kind(
        "`landscape.hessian_along_path`",
        ("alpha", "eigen", "run", "node", "lambda"),
        _HESSIAN,
        ("alpha", "eigen", "run", "lambda"),
        like="hessian",
    ),
    "hessian_levels": Kind(
        "`landscape.hessian_over_levels`",
        ("level", "eigen"),
        _HESSIAN + ("remaining",),
        ("level", "eigen", "run", "lambda"),
        like="hessian",
    ),
    "analyses.table1": Kind(
        "`python -m analyses.table1`: every run's metrics side by side",
        ("run", "epoch", "statistic", "reference", "paper_arch", *_PROBED, "layer"),
        _METRICS + _DYNAMICS + ("summary", "first_pass", "epochs_done", "paper"),
        ("run", "epoch", *_PROBED, "layer", "arch", "recipe", "seed", "run_commit", "statistic", "reference")
        + ("paper_arch",),
        like="metrics",
    ),
    "analyses.tables": Kind(
        "`python -m analyses.tables` (Tables 1, 3 and 5)",
        ("arch", "seed", "input_seed", "probe"),
        ("teacher", "teacher_bn", "student", "input")
        + tuple(f"paper_{m}_{p}" for m in ("teacher", "student") for p in ("linear", "knn"))
        + ("paper_input",),
        ("arch", "seed", "input_seed", *_PROBED),
    ),
    "analyses.tables.teacher": Kind(
        "a teacher's probes, one file per teacher of `analyses.tables`", _PROBED, ("accuracy",), _PROBED
    ),
    "analyses.tables.input": Kind(
        "raw-pixel probes, one file per seed of `analyses.tables`", ("probe",), ("accuracy",), ("probe",)
    ),
    "analyses.probes": Kind("`analyses.common.probes_array`: the probes of one run", _PROBED, ("accuracy",), _PROBED),
    "analyses.probe_spread": Kind(
        "`python -m analyses.probe_spread`",
        ("arch", "seed", "recipe", "probe_seed"),
        ("accuracy", "best", "paper_teacher_linear"),
        ("arch", "seed", "recipe", "probe_seed"),
    ),
    "analyses.probe_spread.teacher": Kind(
        "one teacher's probes of `analyses.probe_spread`",
        ("recipe", "probe_seed"),
        ("accuracy",),
        ("recipe", "probe_seed"),
        like="analyses.probe_spread",
    ),
    "analyses.probing_curves": Kind(
        "`python -m analyses.probing_curves`",
        ("seed", "epoch", *_PROBED),
        ("accuracy", "loss", "kl"),
        ("seed", "epoch", *_PROBED),
        like="metrics",
    ),
    "analyses.dynamics": Kind(
        "`python -m analyses.dynamics`: one run's metrics",
        ("epoch", *_PROBED, "layer"),
        _METRICS + _DYNAMICS,
        ("epoch", *_PROBED, "layer"),
        like="metrics",
    ),
    "analyses.head_dim": Kind(
        "`python -m analyses.head_dim`",
        ("out_dim", "bottleneck_dim", "seed", *_PROBED),
        ("accuracy_out_dim", "accuracy_bottleneck"),
        ("out_dim", "bottleneck_dim", "seed", *_PROBED),
    ),
    "analyses.data_dependence": Kind(
        "`python -m analyses.data_dependence`",
        ("data", "regime", "n", "seed", *_PROBED, "paper_n", "paper_n_noise"),
        ("accuracy", "steps", "paper_real", "paper_gaussian"),
        ("data", "regime", "n", "seed", *_PROBED, "paper_n", "paper_n_noise"),
    ),
    "analyses.transfer": Kind(
        "`python -m analyses.transfer`", ("pair", "seed", *_PROBED), ("accuracy",), ("pair", "seed", *_PROBED)
    ),
    "analyses.locality": Kind(
        "`python -m analyses.locality`",
        ("net", "alpha", "seed", "epoch", *_PROBED),
        ("accuracy", "accuracy_by_epoch", "final_kl", "distance_teacher_init"),
        ("net", "alpha", "seed", "epoch", *_PROBED),
        like="locality",
    ),
    "analyses.instability": Kind(
        "`python -m analyses.instability`",
        ("seed", "start", "pair", "alpha", "child", "model", "probe"),
        _CURVES + _BARRIERS + ("child_test_accuracy", "student_probe_accuracy"),
        ("seed", "start", "alpha", *_CHILDREN, "model", "probe"),
        like="instability",
    ),
    "analyses.planes": Kind(
        "`python -m analyses.planes`",
        ("view", "x", "y", "point"),
        ("loss", "accuracy", "point_x", "point_y", "norm_u", "norm_v"),
        ("view", "x", "y", "point", "x_value", "y_value", "point_name"),
    ),
    "analyses.surface": Kind(
        "`python -m analyses.surface`",
        ("centre", "seed", "t", "x", "y", "u", "v", "child"),
        tuple(f"{s}_{v}" for s in ("line", "plane", "through") for v in ("loss", "error")) + ("child_test_accuracy",),
        ("centre", "seed", "t", "x", "y", "u", "v"),
    ),
    "analyses.hessian": Kind(
        "`python -m analyses.hessian`",
        ("start", "pair", "alpha", "eigen", "run", "node", "lambda", "level", "child"),
        tuple(f"path_{v}" for v in ("eigenvalue", "trace", "trace_stderr", "loss", "hvps", "eig_seconds"))
        + ("slq_node", "slq_weight", "density", "level_eigenvalue", "level_trace", "level_loss", "remaining")
        + ("child_test_accuracy",),
        ("start", "pair", "alpha", "eigen", "run", "lambda", "level"),
        like="hessian",
    ),
    "analyses.lottery": Kind(
        "`python -m analyses.lottery`",
        ("curve", "seed", "level", "model", "probe"),
        ("best_accuracy", "student_probe_accuracy"),
        ("curve", "seed", "level", "sparsity", "model", "probe"),
    ),
    "analyses.align_barriers": Kind(
        "`python -m analyses.align_barriers`",
        ("width", "seed", "alignment", "alpha", "end"),
        ("error", "loss", "end_accuracy", "seconds") + _BARRIERS,
        ("width", "seed", "alignment", "alpha", "end"),
    ),
    "analyses.claims": Kind(
        "`python -m analyses.claims`",
        ("row_id",),
        ("claim", "paper", "file", "row", "setting", "verdict", "commit")
        + ("effect", "low", "high", "margin", "n", "direction"),
        ("row_id",),
    ),
}
