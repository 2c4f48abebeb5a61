"""The settings of every landscape analysis as config dataclasses (`distill.options.Config`).

Each public analysis (`landscape.paths.linear_path`, `landscape.planes.plane`, ...) takes its settings
as keyword arguments or as ``config=XConfig(...)`` (`distill.options.with_config`); the classes here
are the one source of their defaults, of the ``rtt`` flags and of the settings recorded with a result.
Fields that several analyses share come from small base classes. Not part of any config: the data,
the checkpoints, output stores and files, executors and progress bars.

This module stays light (no torch, no xarray): ``rtt -h`` builds its flags from it.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, fields
from typing import Any, Optional, Union

from distill.config import SupervisedConfig
from distill.options import Config, option
from landscape import flag_values
from landscape.flag_values import SPLITS, path_alphas, split_names

# BatchNorm running statistics at each evaluated point (landscape.evaluate.POLICIES)
BN_POLICIES = ("reset", "interpolate", "keep_a")


# ----------------------------------------------------------------------------- the base class
_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    """The evaluated type hints of ``cls`` (computed once per class)."""
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _takes_tuple(tp: Any) -> bool:
    return tp is tuple or tuple in typing.get_args(tp)


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


class AnalysisConfig(Config):
    """A `Config` that may hold a nested config (a `SupervisedConfig`: stored as its dict, written on
    the command line as JSON) and tuples (read back from JSON lists as tuples)."""

    def __post_init__(self) -> None:
        for f in fields(self):  # type: ignore[arg-type]
            value, tp = getattr(self, f.name), _hints(type(self))[f.name]
            if isinstance(tp, type) and issubclass(tp, Config) and (value is None or isinstance(value, dict)):
                setattr(self, f.name, tp() if value is None else tp.from_dict(value))
            elif isinstance(value, list) and _takes_tuple(tp):
                setattr(self, f.name, _as_tuple(value))
        super().__post_init__()


def redefault(cls: type, name: str, default: Any) -> Any:
    """Field ``name`` of ``cls`` declared again with another default (help and checks kept)."""
    f = next(f for f in fields(cls) if f.name == name)
    keys = ("choices", "names", "check", "parse", "metavar")
    return option(default, f.metadata["help"], **{k: f.metadata.get(k) for k in keys})


def with_defaults(cls: type, **defaults: Any) -> type:
    """A subclass of ``cls`` whose fields named in ``defaults`` default to those values (e.g. a
    command's own defaults, where they differ from the function's)."""
    new = [(name, _hints(cls)[name], redefault(cls, name, value)) for name, value in defaults.items()]
    return dataclasses.make_dataclass(cls.__name__, new, bases=(cls,))


def _recipe_field() -> Any:
    return dataclasses.field(
        default_factory=SupervisedConfig,
        metadata={
            "help": "the supervised training recipe (distill.SupervisedConfig; default: the paper's, 160 epochs; "
            "SupervisedConfig.preset('cpu') trains 8)",
            "parse": flag_values.recipe,
            "metavar": "JSON",
        },
    )


# ----------------------------------------------------------------------------- shared fields
@dataclass
class _OnDevice(AnalysisConfig):
    device: str = option("auto", "cpu, cuda, cuda:N or auto (CUDA when present)")


@dataclass
class _BatchNorm(AnalysisConfig):
    bn: str = option(
        "reset",
        "BatchNorm running statistics at each evaluated point: reset (re-estimated there as "
        "torch.optim.swa_utils.update_bn does, on bn_batches training batches drawn once with bn_seed and shared "
        "by every point), interpolate (like the weights) or keep_a (the first network's); recorded as none for a "
        "network without BatchNorm",
        BN_POLICIES,
    )


@dataclass
class _Evaluation(_BatchNorm, _OnDevice):
    """How the networks are evaluated: BatchNorm statistics, examples, batches, memory layout."""

    max_examples: Optional[int] = option(
        None, "evaluate a subset of this many images per split, drawn with eval_seed (default: all)", check="positive"
    )
    bn_batches: int = option(
        8, "training batches that re-estimate the BatchNorm statistics (bn=reset)", check="positive"
    )
    bn_batch_size: int = option(256, "images per BatchNorm batch", check="positive")
    bn_seed: int = option(0, "seed of the BatchNorm batches (drawn once, shared by every point)")
    eval_batch_size: int = option(1000, "images per evaluation pass", check="positive")
    eval_seed: int = option(0, "seed of the max_examples subset")
    channels_last: Optional[bool] = option(
        None,
        "channels-last memory layout of the loop evaluator (default: on for conv nets on a CPU; results then "
        "equal a plain evaluation's to float rounding, ~1e-6, rather than bit for bit)",
    )


@dataclass
class _Backend(AnalysisConfig):
    backend: str = option(
        "auto",
        "evaluator: loop (reference), vmap (several points per pass) or auto (vmap on CUDA, else loop)",
        ("auto", "loop", "vmap"),
    )


@dataclass
class _Line(_BatchNorm):
    """The points of a straight line between two networks, and the splits evaluated on them."""

    alphas: Union[int, list] = option(
        30,
        "points on the path: N evenly spaced on [0, 1], ends included, or comma-separated values in [0, 1] "
        "(e.g. 0,0.5,1); 30 is Frankle et al.'s barrier grid, the paper's Figure 9 uses 50",
        parse=path_alphas,
        metavar="N|A,B,...",
    )
    splits: tuple = option(
        ("train", "test"), "splits to evaluate: train, test or train,test", parse=split_names, metavar="SPLIT[,SPLIT]"
    )


@dataclass
class _Grid(AnalysisConfig):
    resolution: Union[int, list] = option(
        21, "grid points per axis (N, or from Python (nx, ny))", parse=flag_values.resolution, metavar="N"
    )
    split: str = option("test", "split to evaluate", SPLITS)


@dataclass
class _Trains(AnalysisConfig):
    cfg: SupervisedConfig = _recipe_field()


# ----------------------------------------------------------------------------- the analyses
@dataclass
class PathConfig(_Line, _Backend, _Evaluation):
    """`landscape.paths.linear_path`: loss and error on the straight line between two networks."""

    alpha_chunk: Optional[int] = option(
        None,
        "alphas per vmap pass (default: 8); an evaluation pass holds eval_batch_size images in all, a BN-reset "
        "pass alpha_chunk x bn_batch_size",
        check="positive",
    )
    align: Optional[str] = option(
        None,
        "permute b's hidden units onto a's before interpolating: weights (weight matching, Ainsworth et al.) "
        "or activations (activation matching on training images); landscape.align.align, recorded in attrs align_*",
        (None, "weights", "activations"),
    )
    align_options: Optional[dict] = option(None, "settings of the alignment (AlignConfig's fields) as JSON")
    repair: bool = option(
        False,
        "REPAIR: rescale the interpolated channels not followed by BatchNorm to the interpolated endpoint "
        "statistics at each point (landscape.align.repair_state, on the BN-reset batches; evaluated by the loop)",
    )


@dataclass
class AlignConfig(AnalysisConfig):
    """`landscape.align.align` (the method is its third argument): how b's units are matched to a's."""

    max_iter: int = option(100, "weight matching: most sweeps over the layers", check="positive")
    seed: int = option(0, "weight matching: seed of the sweep order")
    batches: int = option(8, "activation matching: training batches", check="positive")
    batch_size: int = option(256, "activation matching: images per batch", check="positive")
    data_seed: int = option(0, "activation matching: seed of the batches")


@dataclass
class PlaneConfig(_Grid, _Backend, _Evaluation):
    """`landscape.planes.plane`: loss and error on the plane through three networks."""

    span: Optional[tuple] = option(
        None,
        "LOW,HIGH range of both coordinates in units of |B - A| (from Python also ((x_low, x_high), "
        "(y_low, y_high))) (default: the three points plus margin)",
        parse=flag_values.numbers,
        metavar="LOW,HIGH",
    )
    margin: float = option(0.5, "margin around the three points in units of |B - A|", check="non_negative")


@dataclass
class SurfaceConfig(_Grid, _Evaluation):
    """`landscape.surface.surface`: a 1-D or 2-D loss surface around one network."""

    dims: int = option(2, "1-D line or 2-D surface", (1, 2))
    span: tuple = option((-1.0, 1.0), "LOW,HIGH of the coordinates", parse=flag_values.numbers, metavar="LOW,HIGH")
    yspan: Optional[tuple] = option(
        None, "LOW,HIGH of the second coordinate (default: span)", parse=flag_values.numbers, metavar="LOW,HIGH"
    )
    seed: int = option(0, "seed of the random directions")
    bias: str = option(
        "ignore", "biases in random directions: zero, or rescaled to the bias norm", ("ignore", "normalize")
    )
    bn_params: str = option("ignore", "BatchNorm weight/bias in random directions", ("ignore", "normalize"))
    hessian_batches: int = option(4, "training batches of the Hessian directions", check="positive")

    def __post_init__(self) -> None:
        for name in ("span", "yspan"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, str) or len(value) != 2):
                raise ValueError(f"{name}={value!r}: pass two numbers LOW,HIGH, e.g. span=(-1, 1) or --{name}=-1,1")
        super().__post_init__()


@dataclass
class _Curvature(_OnDevice):
    """The loss whose Hessian is measured, and the estimators."""

    k: int = option(5, "number of top eigenvalues (Lanczos)", check="non_negative")
    loss: str = option(
        "supervised",
        "cross-entropy on labels, or against the teacher (distillation)",
        ("supervised", "distillation"),
    )
    split: str = option("train", "split the loss is measured on", SPLITS)
    batches: Optional[int] = option(
        4,
        "mini-batches of batch_size images to average over, drawn once with data_seed (0 or none: the whole split)",
        parse=flag_values.batches,
        metavar="N",
    )
    batch_size: int = option(256, "mini-batch size (images)", check="positive")
    data_seed: int = option(0, "seed of the mini-batches")
    trace_probes: int = option(100, "Hessian-vector products for the trace (0: skip)", check="non_negative")
    trace_method: str = option("hutch++", "trace estimator", ("hutch++", "hutchinson"))
    seed: int = option(0, "seed of the Lanczos start vector and probes")
    tol: float = option(1e-6, "Lanczos convergence tolerance (relative)", check="positive")


@dataclass
class HessianConfig(_Curvature):
    """`landscape.hessian.hessian`: top eigenvalues, trace and spectral density at one network."""

    slq_runs: int = option(0, "stochastic Lanczos quadrature runs for the spectral density", check="non_negative")
    slq_steps: int = option(50, "Lanczos steps per SLQ run", check="positive")
    density_points: int = option(201, "points of the smoothed spectral density", check="positive")
    vectors: bool = option(False, "also return the unit eigenvectors")


@dataclass
class HessianPathConfig(_Curvature):
    """`landscape.hessian.hessian_along_path`: eigenvalues and trace along the straight line."""

    k: int = redefault(_Curvature, "k", 3)
    trace_probes: int = redefault(_Curvature, "trace_probes", 51)
    tol: float = redefault(_Curvature, "tol", 1e-4)
    alphas: Union[int, list] = option(
        5,
        "points on the line: N evenly spaced on [0, 1], ends included, or comma-separated values in [0, 1]",
        parse=path_alphas,
        metavar="N|A,B,...",
    )
    bn: str = option(
        "interpolate",
        "BatchNorm running statistics on the line: interpolate, or reset (re-estimated on 8 seeded training batches)",
        ("interpolate", "reset"),
    )


@dataclass
class InstabilityConfig(_Line, _Trains, _OnDevice):
    """`landscape.instability.instability`: children of one start trained with labels, and the
    barriers between them (alphas, bn and splits as `PathConfig`)."""

    splits: tuple = redefault(_Line, "splits", ("test",))
    children: int = option(2, "number of children")
    seeds: Optional[list] = option(
        None, "seeds, one per child: child i trains with data_seed = aug_seed = seeds[i] (default: 0..children-1)"
    )
    head_seed: int = option(0, "seed of a fresh classifier head for a start that has none")
    path_options: Optional[dict] = option(None, "more PathConfig settings of the paths, as JSON")


@dataclass
class _Pruning(_Trains, _OnDevice):
    """Iterative magnitude pruning: levels, what is pruned, what the levels rewind to."""

    levels: int = option(5, "trained levels, level 0 dense")
    prune_fraction: float = option(
        0.2, "fraction of the remaining prunable weights pruned per level (0.2: 100, 80, 64, 51.2, ... % remain)"
    )
    prunable: Union[str, list] = option(
        "weights",
        "weights: conv and linear weights, classifier included (Frankle et al.); all: every floating-point "
        "parameter (the paper's code); from Python also a list of state_dict names",
        parse=flag_values.prunable,
        metavar="{weights,all}",
    )
    rewind_step: Optional[int] = option(
        None,
        "k of rewind step: the optimiser step of level 0 rewound to (at most the recipe's steps); levels after "
        "the rewind continue the recipe from step k (schedule, data order, augmentation), as Frankle et al.",
    )
    rewind_optimizer: bool = option(
        False,
        "levels after a step rewind start from level 0's optimiser state at step k (SGD momentum buffers, entries "
        "of pruned weights zeroed; off: a fresh optimiser, as Frankle et al.); no effect on start and init, "
        "which rewind to before any step",
    )
    baselines: tuple = option(
        (),
        "comma-separated: random_prune, random_reinit (each adds a training run per level: the cost of one more "
        "IMP run)",
        parse=flag_values.name_tuple,
        metavar="A,B,...",
    )
    rewind_rng: bool = option(
        True,
        "every level replays the same data order and augmentation (the recipe's seeds; off: level l uses "
        "data_seed + l and aug_seed + l)",
    )


@dataclass
class LotteryConfig(_Pruning):
    """`landscape.lottery.lottery`: lottery tickets by iterative magnitude pruning with rewinding."""

    rewind: Union[str, list] = option(
        "start",
        "rewind target(s), comma-separated: start, init, step (one IMP run each)",
        parse=flag_values.names,
        metavar="A,B,...",
    )
    seed: int = option(
        0,
        "seed of the classifier head and of init; seed + 1 draws random_reinit's init, 1000 x seed + l "
        "random_prune's level l",
    )


@dataclass
class LotterySweepConfig(_Trains):
    """`landscape.lottery_sweep.lottery_sweep`: one IMP run per (rewind target, seed); the lottery
    settings (`LotteryConfig`'s other fields) are passed on as keywords."""

    rewinds: tuple = option(
        ("start",),
        "rewind targets, comma-separated: start, init, step",
        parse=flag_values.name_tuple,
        metavar="A,B,...",
    )
    seeds: tuple = option((0,), "replicate seeds, comma-separated: one run of each rewind target per seed")


@dataclass
class LocalityConfig(AnalysisConfig):
    """`landscape.locality.locality`: one distillation per student-teacher distance (the rest of each
    run is its `distill.DistillConfig`)."""

    alphas: Optional[list] = option(
        None,
        "the sweep: comma-separated student-teacher interpolation weights in [0, 1] (0: the teacher, "
        "1: independent), e.g. 0,0.25,0.5,1; one distillation each",
    )
    eps: Optional[list] = option(
        None, "or the sweep over noise scales: comma-separated eps >= 0 (student = teacher + eps x noise)"
    )
    seeds: tuple = option((0,), "replicate seeds, comma-separated")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.eps is not None and any(not isinstance(v, (int, float)) or v < 0 for v in self.eps):
            raise ValueError(f"eps={self.eps!r}: pass noise scales >= 0")
