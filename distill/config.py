"""Typed run configurations: the single source of CLI flags, stored provenance and run names.

Each field's docstring-like ``help`` metadata becomes the CLI help. Defaults are the
paper's setup (PAPER.md); behaviours of the reference code that the paper does not state
are options whose defaults follow the paper, as noted per field.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from dataclasses import dataclass, field, fields
from typing import Any, Optional


class RunError(RuntimeError):
    """A run cannot go on (e.g. the loss became NaN); completed checkpoints are kept."""


def _f(default: Any, help: str, choices: tuple | None = None, **kw: Any) -> Any:
    meta = {"help": help, "choices": choices}
    if isinstance(default, (list, dict, tuple)):
        return field(default_factory=lambda: type(default)(default), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


class _Config:
    """Shared behaviour of the run configurations (dataclasses)."""

    def __post_init__(self) -> None:
        validate(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        """Rebuild a config from :meth:`to_dict` output, ignoring unknown keys of newer versions."""
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in d.items() if k in names})

    def replace(self, **changes: Any) -> Any:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


@dataclass
class DistillConfig(_Config):
    """Everything that defines one random-teacher distillation run."""

    # data
    dataset: str = _f("cifar10", "dataset name (distill.list_datasets()); 'gaussian:cifar10' for noise inputs")
    data_root: Optional[str] = _f(None, "folder or file holding the dataset (default: the standard places)")
    subset: Optional[int] = _f(None, "distil on a stratified subset of this many training images")
    probe_subset: Optional[int] = _f(None, "fit probes on a stratified subset of this many training images")
    # model
    arch: str = _f("vgg11", "backbone (distill.list_models())")
    arch_options: dict = _f({}, "extra backbone options as JSON, e.g. '{\"width\": 64, \"depth\": 4}'")
    out_dim: int = _f(65536, "DINO head output dimension")
    hidden_dim: int = _f(2048, "DINO head hidden width")
    bottleneck_dim: int = _f(256, "DINO head bottleneck (L2-normalised) width")
    last_layer: str = _f("plain", "head's last layer: plain linear (what the reference code computes) or a true "
                         "weight-normalised layer", ("plain", "weightnorm"))
    # student initialisation relative to the teacher
    init: str = _f("alpha", "student init: copy, alpha (variance-preserving interpolation), eps, independent",
                   ("copy", "alpha", "eps", "independent"))
    alpha: float = _f(1e-10, "interpolation weight of fresh noise for init=alpha (0 = teacher, 1 = independent)")
    eps: float = _f(0.0, "noise scale for init=eps: theta_s = theta_t + eps * theta_noise")
    teacher_bn: str = _f("eval", "teacher BatchNorm mode: eval = initial running stats (paper's code), "
                         "train = batch statistics", ("eval", "train"))
    # objective
    loss: str = _f("ce", "ce: cross-entropy H(p_t, p_s); kl: KL(p_t || p_s) (same gradient)", ("ce", "kl"))
    teacher_temp: float = _f(1.0, "teacher softmax temperature")
    student_temp: float = _f(1.0, "student softmax temperature")
    center: bool = _f(False, "DINO centering of teacher outputs")
    center_momentum: float = _f(0.9, "EMA momentum of the center")
    ema_teacher: bool = _f(False, "update the teacher as an EMA of the student (full DINO)")
    ema_momentum: float = _f(0.996, "EMA momentum of the teacher")
    augment: str = _f("none", "none: one view, the image itself (paper); multicrop: DINO-style crops",
                      ("none", "multicrop"))
    global_crops: int = _f(2, "multicrop: number of global crops")
    local_crops: int = _f(0, "multicrop: number of local crops")
    # optimisation
    optimizer: str = _f("adamw", "optimiser", ("adamw", "adam", "sgd"))
    lr: float = _f(1e-3, "learning rate (peak when warm-up or cosine schedule is used)")
    weight_decay: float = _f(0.0, "weight decay")
    norm_bias_decay: Optional[float] = _f(None, "weight decay on biases and norm parameters (None: same as "
                                          "weight_decay; 0.01 reproduces the reference code's AdamW default)")
    adam_eps: float = _f(1e-8, "Adam epsilon")
    momentum: float = _f(0.9, "SGD momentum")
    schedule: str = _f("constant", "learning-rate schedule after warm-up", ("constant", "cosine"))
    warmup_epochs: float = _f(0.0, "linear warm-up length in epochs")
    clip_grad: Optional[float] = _f(None, "clip the gradient norm to this value")
    batch_size: int = _f(256, "batch size")
    epochs: int = _f(150, "training epochs")
    save_every: int = _f(10, "save the student every this many epochs (epoch 0 and the last are always saved)")
    save_epochs: list = _f([], "extra epochs at which to save the student")
    # probes
    probe_every: int = _f(10, "probe every this many epochs (0: only at the start and the end)")
    probes: list = _f(["knn", "linear", "linear_std"], "probes to run")
    knn_k: int = _f(20, "k of the k-NN probe")
    knn_metric: str = _f("euclidean", "k-NN distance: euclidean unweighted vote (paper's code) or cosine "
                         "temperature-weighted (DINO)", ("euclidean", "cosine"))
    linear_epochs: int = _f(10, "linear probe epochs (AdamW, lr 1e-3)")
    probe_converge: bool = _f(False, "train the linear probe to convergence instead of a fixed number of epochs")
    # seeds and hardware
    seed: int = _f(0, "teacher initialisation seed")
    noise_seed: int = _f(1, "seed of the noise network used by the student initialisation")
    data_seed: int = _f(0, "data order seed")
    aug_seed: int = _f(0, "augmentation seed")
    probe_seed: int = _f(0, "seed of probe training and probe subsets")
    device: str = _f("auto", "cpu, cuda, cuda:N or auto")
    precision: str = _f("fp32", "training precision (bf16 autocast on CUDA only)", ("fp32", "bf16"))

    @property
    def run_name(self) -> str:
        """A short, readable name for the run."""
        init = {"alpha": f"a{self.alpha:g}", "eps": f"e{self.eps:g}"}.get(self.init, self.init)
        sub = f"-n{self.subset}" if self.subset else ""
        return f"{self.dataset.replace(':', '-')}{sub}-{self.arch}-{init}-lr{self.lr:g}-s{self.seed}"


@dataclass
class SupervisedConfig(_Config):
    """Supervised training with labels (children for instability, lottery-ticket retraining).

    Defaults are the paper's recipe for ResNet18 on CIFAR-10 (``preset="paper"``).
    """

    epochs: int = _f(160, "training epochs")
    lr: float = _f(0.1, "SGD learning rate")
    momentum: float = _f(0.9, "SGD momentum")
    weight_decay: float = _f(1e-4, "weight decay")
    milestones: list = _f([80, 120], "epochs at which the learning rate is multiplied by gamma")
    gamma: float = _f(0.1, "learning-rate decay factor")
    warmup_epochs: float = _f(0.0, "linear warm-up length in epochs")
    batch_size: int = _f(256, "batch size")
    augment: str = _f("flip_crop", "flip_crop: random horizontal flip + 4-pixel padded crop; none",
                      ("flip_crop", "none"))
    data_seed: int = _f(0, "data order seed")
    aug_seed: int = _f(0, "augmentation seed")
    eval_every: int = _f(0, "evaluate test accuracy every this many epochs (0: only at the end)")
    device: str = _f("auto", "cpu, cuda, cuda:N or auto")
    precision: str = _f("fp32", "training precision (bf16 autocast on CUDA only)", ("fp32", "bf16"))

    @classmethod
    def preset(cls, name: str, **changes: Any) -> "SupervisedConfig":
        """``paper``: 160 epochs (80/120 steps); ``cpu``: 8 epochs (4/6); ``tiny``: 2 epochs, for tests."""
        presets = {
            "paper": {},
            "cpu": {"epochs": 8, "milestones": [4, 6], "lr": 0.05},
            "tiny": {"epochs": 2, "milestones": [1], "lr": 0.05},
        }
        if name not in presets:
            raise ValueError(f"unknown supervised preset {name!r}: choose one of {', '.join(presets)}")
        return dataclasses.replace(cls(), **{**presets[name], **changes})


_POSITIVE = {"epochs", "batch_size", "out_dim", "hidden_dim", "bottleneck_dim", "knn_k", "linear_epochs",
             "global_crops"}
_NON_NEGATIVE = {"lr", "weight_decay", "eps", "adam_eps", "momentum", "warmup_epochs", "save_every",
                 "probe_every", "teacher_temp", "student_temp", "local_crops", "gamma", "eval_every"}


def validate(cfg: Any) -> None:
    """Check ranges and choices; raise ValueError with one line naming the field and the fix."""
    for f in fields(cfg):
        v = getattr(cfg, f.name)
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


# ---------------------------------------------------------------------- CLI from dataclasses
def _base_type(tp: Any) -> Any:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if typing.get_origin(tp) is typing.Union and args else tp


def add_arguments(parser: argparse.ArgumentParser, cls: type, prefix: str = "",
                  skip: tuple[str, ...] = ()) -> None:
    """Add one ``--flag`` per dataclass field of ``cls`` (defaults and help from the field)."""
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        if f.name in skip:
            continue
        tp = _base_type(hints[f.name])
        flag = "--" + prefix + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        kw: dict[str, Any] = {"dest": prefix.replace("-", "_") + f.name, "default": default,
                              "help": f"{f.metadata.get('help', '')} (default: {default})"}
        if tp is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif tp in (list, tuple):
            kw["type"] = _parse_list
        elif tp is dict:
            kw["type"] = json.loads
        else:
            kw["type"] = tp
            if f.metadata.get("choices"):
                kw["choices"] = f.metadata["choices"]
        parser.add_argument(flag, **kw)


def from_args(cls: type, ns: argparse.Namespace, prefix: str = "", **overrides: Any) -> Any:
    """Build ``cls`` from parsed arguments made by :func:`add_arguments`."""
    vals = {f.name: getattr(ns, prefix.replace("-", "_") + f.name) for f in fields(cls)
            if hasattr(ns, prefix.replace("-", "_") + f.name)}
    return cls(**{**vals, **overrides})


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
