"""Typed run configurations: the single source of CLI flags, stored provenance and run names.

Each field's docstring-like ``help`` metadata becomes the CLI help. Defaults are the
paper's setup (PAPER.md); behaviours of the reference code that the paper does not state
are options whose defaults follow the paper, as noted per field.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field, fields
from typing import Any, Optional


class RunError(RuntimeError):
    """A run cannot go on (e.g. the loss became NaN); completed checkpoints are kept."""


def _f(default: Any, help: str, choices: tuple | None = None, names: str | None = None, **kw: Any) -> Any:
    """A config field: ``help`` (with units), ``choices``, ``names`` ("models", "datasets" or
    "probes": the field takes registered names, listed in the CLI help)."""
    meta = {"help": help, "choices": choices, "names": names}
    if isinstance(default, (list, dict, tuple)):
        return field(default_factory=lambda: type(default)(default), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


class _Config:
    """Shared behaviour of the run configurations (dataclasses)."""

    def __post_init__(self) -> None:
        from distill.registry import canonical_dataset

        for f in fields(self):  # type: ignore[arg-type]
            # dataset names are stored as spelled canonically, so that an alias resumes the same run
            if f.metadata.get("names") == "datasets" and isinstance(getattr(self, f.name), str):
                setattr(self, f.name, canonical_dataset(getattr(self, f.name)))
        validate(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        """Rebuild a config from `to_dict` output, ignoring unknown keys of newer versions."""
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in d.items() if k in names})

    def replace(self, **changes: Any) -> Any:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


@dataclass
class DistillConfig(_Config):
    """Everything that defines one random-teacher distillation run."""

    # data
    dataset: str = _f(
        "cifar10", "dataset name; 'gaussian:cifar10' for Gaussian-noise inputs shaped like CIFAR-10", names="datasets"
    )
    data_root: Optional[str] = _f(
        None,
        "folder or file holding the dataset (default: $RTT_DATA/<dataset>, and for "
        "Fashion-MNIST /usr/share/datasets/fashion-mnist)",
    )
    subset: Optional[int] = _f(None, "distil on a stratified subset of this many training images (default: all)")
    probe_subset: Optional[int] = _f(
        None,
        "fit probes on a stratified subset of this many training images "
        "(default: the full training split, as the paper, whatever subset is)",
    )
    input_stats: str = _f(
        "measured",
        "per-channel mean and std that normalise the inputs: measured on the training split (exact, "
        "distill.data) or reference (CIFAR-10 only: the authors' code's fixed constants (0.4914, 0.4822, "
        "0.4465) / (0.247, 0.243, 0.261))",
        ("measured", "reference"),
    )
    drop_last: bool = _f(
        False,
        "drop the last partial batch of every epoch (default: keep it, as the reference "
        "code: 196 steps per epoch on 50k images at batch 256)",
    )
    # model
    arch: str = _f("vgg11", "backbone architecture", names="models")
    arch_options: dict = _f({}, "extra backbone options as a JSON object, e.g. '{\"width\": 64}' for convnet")
    out_dim: int = _f(65536, "DINO head output dimension (logits)")
    hidden_dim: int = _f(2048, "DINO head hidden width (units)")
    bottleneck_dim: int = _f(256, "DINO head bottleneck (L2-normalised) width (units)")
    last_layer: str = _f(
        "plain",
        "head's last layer: plain linear (what the reference code computes) or a true weight-normalised layer",
        ("plain", "weightnorm"),
    )
    # student initialisation relative to the teacher
    init: str = _f(
        "alpha",
        "student init: copy, alpha (variance-preserving interpolation), eps, independent",
        ("copy", "alpha", "eps", "independent"),
    )
    alpha: float = _f(1e-10, "interpolation weight of fresh noise for init=alpha (0 = teacher, 1 = independent)")
    eps: float = _f(0.0, "noise scale for init=eps: theta_s = theta_t + eps * theta_noise")
    init_scope: str = _f(
        "all",
        "parameters the init formula mixes: all (the paper's formula, BN/LayerNorm scales "
        "and shifts included) or random (only randomly initialised tensors; BN left at 1 and 0)",
        ("all", "random"),
    )
    eps_rescale: bool = _f(False, "init=eps: divide by sqrt(1 + eps^2) (variance-preserving variant)")
    teacher_bn: str = _f(
        "eval",
        "teacher BatchNorm mode: eval = initial running stats (paper's code), train = batch statistics",
        ("eval", "train"),
    )
    # objective
    loss: str = _f("ce", "ce: cross-entropy H(p_t, p_s); kl: KL(p_t || p_s) (same gradient)", ("ce", "kl"))
    teacher_temp: float = _f(1.0, "teacher softmax temperature (dimensionless)")
    student_temp: float = _f(1.0, "student softmax temperature (dimensionless)")
    center: bool = _f(False, "DINO centering of teacher outputs")
    center_momentum: float = _f(0.9, "EMA momentum of the center (fraction kept per step)")
    ema_teacher: bool = _f(False, "update the teacher as an EMA of the student (full DINO)")
    ema_momentum: float = _f(0.996, "EMA momentum of the teacher (fraction kept per step)")
    augment: str = _f(
        "none", "none: one view, the image itself (paper); multicrop: DINO-style crops", ("none", "multicrop")
    )
    global_crops: int = _f(2, "multicrop: number of global crops per image")
    local_crops: int = _f(0, "multicrop: number of local crops per image")
    # optimisation
    optimizer: str = _f("adamw", "optimiser", ("adamw", "adam", "sgd"))
    lr: float = _f(1e-3, "learning rate per step (the peak when a warm-up or cosine schedule is used)")
    weight_decay: float = _f(0.0, "weight decay (decoupled for AdamW; coefficient per step)")
    norm_bias_decay: Optional[float] = _f(
        None,
        "weight decay on biases and norm parameters (None: same as "
        "weight_decay; 0.01 reproduces the reference code's AdamW default)",
    )
    adam_eps: float = _f(1e-8, "Adam epsilon")
    momentum: float = _f(0.9, "SGD momentum")
    schedule: str = _f("constant", "learning-rate schedule after warm-up", ("constant", "cosine"))
    warmup_epochs: float = _f(0.0, "linear warm-up length (epochs, may be fractional)")
    clip_grad: Optional[float] = _f(None, "clip the global gradient L2 norm to this value (default: no clipping)")
    batch_size: int = _f(256, "batch size (images per step)")
    epochs: int = _f(150, "training epochs (passes over the training images)")
    save_every: int = _f(10, "save the student every this many epochs (epoch 0 and the last are always saved)")
    save_epochs: list = _f([], "extra epochs at which to save the student, comma-separated, e.g. 1,2,5")
    resume_every: int = _f(
        0,
        "also save the training state (full-precision student and optimiser) every this many epochs "
        "between the saved students, so a killed run loses at most this many epochs (0: only at the saved "
        "students; the state replaces the previous one, so the store grows by no checkpoint)",
    )
    # probes
    probe_every: int = _f(
        10,
        "probe every this many epochs (0: only at the start and the end); a best over epochs is a maximum "
        "over the probed epochs, so it grows with the number of probes (the reference code probes every epoch)",
    )
    probes: list = _f(
        ["knn", "linear", "linear_std"], "probes to run, comma-separated ('none' for none)", names="probes"
    )
    knn_k: int = _f(20, "k of the k-NN probe (neighbours)")
    knn_metric: str = _f(
        "euclidean",
        "k-NN distance: euclidean unweighted vote (paper's code) or cosine temperature-weighted (DINO)",
        ("euclidean", "cosine"),
    )
    linear_epochs: int = _f(10, "linear probe training epochs (AdamW, lr 1e-3)")
    probe_converge: bool = _f(False, "train the linear probe to convergence instead of a fixed number of epochs")
    probe_weight_decay: float = _f(0.0, "AdamW weight decay of the linear probe (the reference code: 0.01)")
    probe_reshuffle: bool = _f(
        True,
        "reshuffle the linear probe's batches every epoch; off: one order drawn once and replayed "
        "every epoch, as the reference code",
    )
    dynamics: bool = _f(
        False,
        "record collapse/escape metrics every epoch for teacher and student: effective rank, "
        "dead units, cosine similarity between inputs per layer (distill.dynamics)",
    )
    dynamics_examples: int = _f(512, "training images (seeded with probe_seed) the dynamics metrics use")
    probe_reseed: bool = _f(
        False, "draw a fresh probe seed at every probed epoch (probe_seed + epoch), as the reference code"
    )
    recipe: str = _f(
        "paper",
        "which protocol the defaults follow: paper (its text) or reference (the authors' code: "
        "DistillConfig.reference(); sets the fields listed in distill.config.REFERENCE). Neither changes "
        "probe_every: the reference code probes every epoch with a fresh probe seed (about 151 fits for "
        "150 epochs, the best of which it reports); with --probe-every N the best is over 150/N + 1 fits",
        ("paper", "reference"),
    )
    # seeds and hardware
    seed: int = _f(0, "teacher initialisation seed")
    noise_seed: int = _f(1, "seed of the noise network used by the student initialisation")
    data_seed: int = _f(0, "data order seed")
    aug_seed: int = _f(0, "augmentation seed")
    probe_seed: int = _f(0, "seed of probe training and probe subsets")
    device: str = _f("auto", "cpu, cuda, cuda:N or auto (CUDA when present)")
    precision: str = _f("fp32", "training precision (bf16 autocast on CUDA only)", ("fp32", "bf16"))
    compile: bool = _f(
        False,
        "torch.compile the training step (worth it on CUDA; the first epoch pays the compilation; off by default)",
    )
    store_dtype: str = _f(
        "fp32",
        "dtype of the checkpoints on disk (bf16/fp16 halve the store; loading casts back, "
        "the training state stays full precision so resuming is exact)",
        ("fp32", "bf16", "fp16"),
    )

    @classmethod
    def reference(cls, **changes: Any) -> DistillConfig:
        """The authors' code's behaviour (``REFERENCE``; ViT options ``REFERENCE_VIT`` on ViTs), then ``changes``."""
        base = dict(REFERENCE)
        arch = changes.get("arch", cls.arch)
        if str(arch).startswith("vit"):
            base["arch_options"] = {**REFERENCE_VIT, **changes.pop("arch_options", {})}
        return cls(**{**base, **changes})

    @property
    def run_name(self) -> str:
        """A short, readable name for the run."""
        init = {"alpha": f"a{self.alpha:g}", "eps": f"e{self.eps:g}"}.get(self.init, self.init)
        sub = f"-n{self.subset}" if self.subset else ""
        return f"{self.dataset.replace(':', '-')}{sub}-{self.arch}-{init}-lr{self.lr:g}-s{self.seed}"


# changes to SupervisedConfig's defaults (the paper's recipe) made by each preset
SUPERVISED_PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "cpu": {"epochs": 8, "milestones": [4, 6], "lr": 0.05},
    "tiny": {"epochs": 2, "milestones": [1], "lr": 0.05},
}
# What ``--recipe reference`` / DistillConfig.reference() changes, and nothing else (tested):
# the behaviours of the authors' code (safelix/dinopl) that its paper does not state. The rest of its
# behaviour is already the default of both recipes: teacher BN in eval mode (teacher_bn="eval"), a plain
# last layer (last_layer="plain"), the last partial batch kept (drop_last=False), Euclidean unweighted
# k-NN, the init formula on every parameter (init_scope="all"), best probe over epochs as the reported
# number (analyses). For a BN-free network, init="copy" gives exactly zero gradient (student = teacher,
# H(p_t, p_s) is minimal) and the 0.01 decay acts only on biases, which start at zero: nothing breaks
# the symmetry on a CPU, the student stays the teacher (tests/distill/test_recipe.py); see README.
REFERENCE: dict[str, Any] = {
    "recipe": "reference",
    "init": "copy",  # Figure 1's student starts as an exact copy of the teacher
    "norm_bias_decay": 0.01,  # AdamW's default decay still applied to biases and norm parameters
    "probe_reseed": True,  # a fresh probe seed at every probed epoch
    "probe_weight_decay": 0.01,  # the linear probe's AdamW() with its default decay
    "probe_reshuffle": False,  # the probe's batches are drawn once and replayed every epoch
    "input_stats": "reference",  # fixed CIFAR-10 normalisation constants (other datasets: measured)
}
# the authors' code normalises CIFAR-10 with these constants (mean, std per channel, [0, 1] pixel units)
REFERENCE_INPUT_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)),
}
# on ViT backbones also: all blocks tied to one module, PyTorch's default init (cls/pos embeddings N(0, 1)),
# the code's block (attention across heads, GELU after the MLP, LayerNorm eps 1e-5; distill.vit)
REFERENCE_VIT: dict[str, Any] = {"tie_blocks": True, "weight_init": "torch", "block": "reference"}


@dataclass
class SupervisedConfig(_Config):
    """Supervised training with labels (children for instability, lottery-ticket retraining).

    Defaults are the paper's recipe for ResNet18 on CIFAR-10 (``preset="paper"``).
    """

    epochs: int = _f(160, "training epochs (passes over the training images)")
    optimizer: str = _f(
        "sgd",
        "sgd (with momentum; the paper's recipe) or adamw (torch's AdamW: the reference code's finetune "
        "default, lr 1e-3 and weight decay 0.01)",
        ("sgd", "adamw"),
    )
    lr: float = _f(0.1, "learning rate per step (before the decays)")
    momentum: float = _f(0.9, "SGD momentum")
    weight_decay: float = _f(1e-4, "weight decay")
    milestones: list = _f([80, 120], "epochs at which the learning rate is multiplied by gamma, comma-separated")
    gamma: float = _f(0.1, "learning-rate decay factor")
    warmup_epochs: float = _f(0.0, "linear warm-up length (epochs, may be fractional)")
    batch_size: int = _f(256, "batch size (images per step)")
    augment: str = _f(
        "flip_crop", "flip_crop: random horizontal flip + 4-pixel padded crop; none", ("flip_crop", "none")
    )
    data_seed: int = _f(0, "data order seed")
    aug_seed: int = _f(0, "augmentation seed")
    eval_every: int = _f(0, "evaluate test accuracy every this many epochs (0: only at the end)")
    head_epochs: int = _f(
        0,
        "before training, fit a fresh linear head alone on the frozen backbone's embeddings of the "
        "training split for this many epochs (AdamW lr 1e-3; the reference code's pre_epochs_clf), so "
        "that the run, and a lottery's rewind target, start from a trained head (0: off)",
    )
    device: str = _f("auto", "cpu, cuda, cuda:N or auto (CUDA when present)")
    precision: str = _f("fp32", "training precision (bf16 autocast on CUDA only)", ("fp32", "bf16"))

    @classmethod
    def preset(cls, name: str, **changes: Any) -> SupervisedConfig:
        """``paper``: 160 epochs (80/120 steps); ``cpu``: 8 epochs (4/6); ``tiny``: 2 epochs, for tests."""
        if name not in SUPERVISED_PRESETS:
            raise ValueError(f"unknown supervised preset {name!r}: choose one of {', '.join(SUPERVISED_PRESETS)}")
        return dataclasses.replace(cls(), **{**SUPERVISED_PRESETS[name], **changes})


_POSITIVE = {
    "epochs",
    "batch_size",
    "out_dim",
    "hidden_dim",
    "bottleneck_dim",
    "knn_k",
    "linear_epochs",
    "global_crops",
    "dynamics_examples",
}
_NON_NEGATIVE = {
    "lr",
    "weight_decay",
    "eps",
    "adam_eps",
    "momentum",
    "warmup_epochs",
    "save_every",
    "resume_every",
    "probe_every",
    "teacher_temp",
    "student_temp",
    "local_crops",
    "gamma",
    "eval_every",
    "head_epochs",
}


MAX_SIZE = 1 << 24  # no layer size (out_dim, widths in arch_options, ...) is larger; the store bounds specs alike
_SIZES = ("out_dim", "hidden_dim", "bottleneck_dim")


def _check_sizes(name: str, v: Any, depth: int = 0) -> None:
    """A one-line ValueError when a size in ``v`` (a number, or one nested in lists and dicts) exceeds
    `MAX_SIZE`: a layer that large would need absurd memory, and is refused before any is allocated."""
    if depth > 6:
        raise ValueError(f"{name} nests too deeply: pass a flat JSON object of options")
    if isinstance(v, bool):
        return
    if isinstance(v, (int, float)) and abs(v) > MAX_SIZE:
        raise ValueError(
            f"{name}={v!r} is too large (at most {MAX_SIZE}): a layer of that size would need absurd memory; "
            "choose a smaller value"
        )
    if isinstance(v, (list, tuple)):
        for i, x in enumerate(v):
            _check_sizes(f"{name}[{i}]", x, depth + 1)
    elif isinstance(v, dict):
        for k, x in v.items():
            _check_sizes(f"{name}.{k}", x, depth + 1)


def validate(cfg: Any) -> None:
    """Check ranges and choices; raise ValueError with one line naming the field and the fix."""
    for name in _SIZES:
        if isinstance(getattr(cfg, name, None), (int, float)):
            _check_sizes(name, getattr(cfg, name))
    if isinstance(getattr(cfg, "arch_options", None), dict):
        _check_sizes("arch_options", cfg.arch_options)
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"{f.name}={v!r} must be a finite number")
        choices = f.metadata.get("choices")
        if choices and v not in choices:
            raise ValueError(f"{f.name}={v!r} is not valid: choose one of {', '.join(map(str, choices))}")
        if f.name in _POSITIVE and (v is None or v <= 0):
            raise ValueError(f"{f.name}={v!r} must be a positive number")
        if f.name in _NON_NEGATIVE and v is not None and v < 0:
            raise ValueError(f"{f.name}={v!r} must be >= 0")
    for name in ("alpha",):
        if hasattr(cfg, name) and not 0.0 <= getattr(cfg, name) <= 1.0:
            raise ValueError(f"{name}={getattr(cfg, name)!r} must lie in [0, 1]")
    if getattr(cfg, "subset", None) is not None and cfg.subset <= 0:
        raise ValueError(f"subset={cfg.subset!r} must be a positive number of images")
    if hasattr(cfg, "teacher_temp") and (cfg.teacher_temp == 0 or cfg.student_temp == 0):
        raise ValueError("temperatures must be > 0")
    if isinstance(getattr(cfg, "probes", None), (list, tuple)):
        _check_probes(cfg.probes)


def _unknown_probes(probes: Any) -> tuple[list, list[str]]:
    """(the names in ``probes`` no probe is registered under, the registered names), after loading
    installed plugins when a name is not found at first."""
    from distill import registry

    known = registry.probe_names()
    if any(p not in known for p in probes):
        from distill.plugins import load_entry_points

        load_entry_points()  # an installed plugin may register them
        known = registry.probe_names()
    return [p for p in probes if p not in known], known


def _check_probes(probes: Any) -> None:
    unknown, known = _unknown_probes(probes)
    if unknown:
        raise ValueError(
            f"probes: unknown probe(s) {', '.join(map(str, unknown))}; choose from {', '.join(known)} "
            "(register more with distill.register_probe, or load a plugin with --plugin MODULE)"
        )


# ---------------------------------------------------------------------- CLI from dataclasses
def _base_type(tp: Any) -> Any:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if typing.get_origin(tp) is typing.Union and args else tp


class _Switch(argparse.BooleanOptionalAction):
    """``--flag`` / ``--no-flag``, with the help exactly as given (Python < 3.13 appends its own
    "(default: ...)", which would repeat ours)."""

    def __init__(self, *args: Any, help: str | None = None, **kw: Any) -> None:
        super().__init__(*args, help=help, **kw)
        self.help = help


def _named(name: str, fn: Any) -> Any:
    fn.__name__ = name  # argparse names the converter in its messages
    return fn


def _int_value(text: str) -> int:
    try:
        return int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number (write e.g. 10000, not 10k)") from None


def _float_value(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (write e.g. 0.001 or 1e-3)") from None


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not valid JSON ({e.msg} at character {e.pos}); write an "
            "object in single quotes, e.g. '{\"width\": 64}'"
        ) from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{text!r} is not a JSON object: write e.g. '{{\"width\": 64}}'")
    return value


def _list_value(text: str) -> list:
    """A comma-separated list; ``none`` is the empty list. An empty text is refused: it is what a
    shell leaves of an unset variable, so it more often hides a mistake than means "nothing"."""
    if text.strip().lower() == "none":
        return []
    out = _parse_list(text)
    if not out:
        raise argparse.ArgumentTypeError(f"{text!r} lists nothing: write 'none' for an empty list, or e.g. A,B")
    return out


_CONVERTERS = {int: _named("int", _int_value), float: _named("float", _float_value)}


def registered_name(kind: str) -> Any:
    """An argparse ``type`` for a flag naming a registered model or dataset (``kind``: "models" or
    "datasets"): an unknown name is a usage error with the closest registered name suggested;
    dataset aliases come back in their canonical spelling."""
    noun = {"models": "architecture", "datasets": "dataset"}[kind]

    def convert(text: str) -> str:
        from distill import registry

        value = registry.canonical_dataset(text) if kind == "datasets" else text.strip()
        known = _registered(kind)
        if value not in known:
            raise argparse.ArgumentTypeError(
                f"unknown {noun} {text!r}{registry.suggest(value, known)}; registered: {', '.join(known)}"
            )
        return value

    return _named(noun, convert)


def _probe_list(text: str) -> list:
    """``--probes``: a comma-separated list of registered probe names (``none``: no probes); an unknown
    name is a usage error with the closest registered name suggested."""
    from distill import registry

    out = _list_value(text)
    unknown, known = _unknown_probes(out)
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown probe {unknown[0]!r}{registry.suggest(str(unknown[0]), known)}; registered: {', '.join(known)}"
        )
    return out


def _registered(kind: str) -> list[str]:
    from distill import registry

    return {"models": registry.model_names, "datasets": registry.dataset_names, "probes": registry.probe_names}[kind]()


def _show(value: Any) -> str:
    """A default as it is written on the command line."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) if value else "none"
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


def add_arguments(
    parser: argparse.ArgumentParser,
    cls: type,
    prefix: str = "",
    skip: tuple[str, ...] = (),
    defaults_text: dict[str, str] | None = None,
) -> None:
    """Add one ``--flag`` per dataclass field of ``cls`` (defaults and help from the field).

    The help names the default as written on the command line (lists comma-separated, dicts as
    JSON, booleans on/off; no default shown for None, whose meaning the field's help states), the
    choices, and the registered names for fields that take a model, dataset or probe name.
    ``defaults_text`` replaces the shown default of some fields (e.g. one value per preset).
    """
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        if f.name in skip:
            continue
        tp = _base_type(hints[f.name])
        flag = "--" + prefix + f.name.replace("_", "-")
        factory: Any = f.default_factory
        default = f.default if f.default is not dataclasses.MISSING else factory()
        help = f.metadata.get("help", "")
        names = f.metadata.get("names")
        if names:
            help += f" (registered: {', '.join(_registered(names))})"
        shown = (defaults_text or {}).get(f.name)
        if shown is None and default is not None:
            shown = _show(default)
        if shown is not None:
            help += f" (default: {shown})"
        kw: dict[str, Any] = {
            "dest": prefix.replace("-", "_") + f.name,
            "default": default,
            "help": help.replace("%", "%%"),
        }
        if tp is bool:
            kw["action"] = _Switch
        elif tp in (list, tuple):
            kw["type"] = _named("probes", _probe_list) if names == "probes" else _named("list", _list_value)
            kw["metavar"] = "A,B,..."
        elif tp is dict:
            kw["type"] = _named("JSON", _json_object)
            kw["metavar"] = "JSON"
        elif names in ("models", "datasets") and tp is str:
            kw["type"] = registered_name(names)
            kw["metavar"] = "NAME"
        else:
            kw["type"] = _CONVERTERS.get(tp, tp)
            if f.metadata.get("choices"):
                kw["choices"] = f.metadata["choices"]
            else:
                kw["metavar"] = {int: "N", float: "X"}.get(
                    tp, "NAME" if names else "PATH" if f.name.endswith(("root", "dir", "path")) else "TEXT"
                )
        parser.add_argument(flag, **kw)


def from_args(cls: type, ns: argparse.Namespace, prefix: str = "", **overrides: Any) -> Any:
    """Build ``cls`` from parsed arguments made by `add_arguments`."""
    vals = {
        f.name: getattr(ns, prefix.replace("-", "_") + f.name)
        for f in fields(cls)
        if hasattr(ns, prefix.replace("-", "_") + f.name)
    }
    vals = {**vals, **overrides}
    if cls is DistillConfig and vals.get("recipe") == "reference":
        # --recipe reference: the reference values replace the flags left at their paper defaults
        paper = DistillConfig()
        ref = DistillConfig.reference(arch=vals.get("arch", paper.arch))
        for name in (*REFERENCE, "arch_options"):
            if name in vals and vals[name] == getattr(paper, name):
                vals[name] = getattr(ref, name)
    return cls(**vals)


def _parse_list(s: str) -> list:
    out: list = []
    for item in s.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            out.append(int(item))
        except ValueError:
            try:
                out.append(float(item))
            except ValueError:
                out.append(item)
    return out
