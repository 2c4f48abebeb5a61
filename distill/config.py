"""The run configurations: `DistillConfig` (one random-teacher distillation) and `SupervisedConfig`
(training with labels), the single source of CLI flags, stored provenance and run names.

Each field's ``help`` becomes the CLI help. Defaults are the paper's setup (PAPER.md); behaviours of
the reference code that the paper does not state are options whose defaults follow the paper, as
noted per field. The machinery (fields, flags, round trips) is `distill.options`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional, TypeVar

from distill.options import (  # noqa: F401 - re-exported: the names user code imports from here
    Config,
    RunError,
    _f,
    add_arguments,
    from_args,
    validate,
)

_G = TypeVar("_G", bound=Config)


@dataclass
class DataConfig(Config):
    """The data a run distils on and how it is normalised and batched."""

    dataset: str = _f(
        "cifar10", "dataset name; 'gaussian:cifar10' for Gaussian-noise inputs shaped like CIFAR-10", names="datasets"
    )
    data_root: Optional[str] = _f(
        None,
        "folder or file holding the dataset (default: $RTT_DATA/<dataset>, and for "
        "Fashion-MNIST /usr/share/datasets/fashion-mnist)",
    )
    subset: Optional[int] = _f(
        None, "distil on a stratified subset of this many training images (default: all)", check="positive"
    )
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


@dataclass
class ModelConfig(Config):
    """The backbone and the DINO head (the teacher and the student share it)."""

    arch: str = _f("vgg11", "backbone architecture", names="models")
    arch_options: dict = _f(
        {}, "extra backbone options as a JSON object, e.g. '{\"width\": 64}' for convnet", check="size"
    )
    out_dim: int = _f(65536, "DINO head output dimension (logits)", check="size")
    hidden_dim: int = _f(2048, "DINO head hidden width (units)", check="size")
    bottleneck_dim: int = _f(256, "DINO head bottleneck (L2-normalised) width (units)", check="size")
    last_layer: str = _f(
        "plain",
        "head's last layer: plain linear (what the reference code computes) or a true weight-normalised layer",
        ("plain", "weightnorm"),
    )


@dataclass
class InitConfig(Config):
    """How the student starts relative to the teacher."""

    init: str = _f(
        "alpha",
        "student init: copy, alpha (variance-preserving interpolation), eps, independent",
        ("copy", "alpha", "eps", "independent"),
    )
    alpha: float = _f(
        1e-10, "interpolation weight of fresh noise for init=alpha (0 = teacher, 1 = independent)", check="fraction"
    )
    eps: float = _f(0.0, "noise scale for init=eps: theta_s = theta_t + eps * theta_noise", check="non_negative")
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


@dataclass
class ObjectiveConfig(Config):
    """The distillation objective."""

    loss: str = _f("ce", "ce: cross-entropy H(p_t, p_s); kl: KL(p_t || p_s) (same gradient)", ("ce", "kl"))
    teacher_temp: float = _f(1.0, "teacher softmax temperature (dimensionless)", check="positive")
    student_temp: float = _f(1.0, "student softmax temperature (dimensionless)", check="positive")
    center: bool = _f(False, "DINO centering of teacher outputs")
    center_momentum: float = _f(0.9, "EMA momentum of the center (fraction kept per step)")
    ema_teacher: bool = _f(False, "update the teacher as an EMA of the student (full DINO)")
    ema_momentum: float = _f(0.996, "EMA momentum of the teacher (fraction kept per step)")
    augment: str = _f(
        "none", "none: one view, the image itself (paper); multicrop: DINO-style crops", ("none", "multicrop")
    )
    global_crops: int = _f(2, "multicrop: number of global crops per image", check="positive")
    local_crops: int = _f(0, "multicrop: number of local crops per image", check="non_negative")


@dataclass
class OptimConfig(Config):
    """The optimiser, its schedule, the batch and the number of epochs."""

    optimizer: str = _f("adamw", "optimiser", ("adamw", "adam", "sgd"))
    lr: float = _f(
        1e-3, "learning rate per step (the peak when a warm-up or cosine schedule is used)", check="non_negative"
    )
    weight_decay: float = _f(0.0, "weight decay (decoupled for AdamW; coefficient per step)", check="non_negative")
    norm_bias_decay: Optional[float] = _f(
        None,
        "weight decay on biases and norm parameters (None: same as "
        "weight_decay; 0.01 reproduces the reference code's AdamW default)",
    )
    adam_eps: float = _f(1e-8, "Adam epsilon", check="non_negative")
    momentum: float = _f(0.9, "SGD momentum", check="non_negative")
    schedule: str = _f("constant", "learning-rate schedule after warm-up", ("constant", "cosine"))
    warmup_epochs: float = _f(0.0, "linear warm-up length (epochs, may be fractional)", check="non_negative")
    clip_grad: Optional[float] = _f(None, "clip the global gradient L2 norm to this value (default: no clipping)")
    batch_size: int = _f(256, "batch size (images per step)", check="positive")
    epochs: int = _f(150, "training epochs (passes over the training images)", check="positive")


@dataclass
class ProbeConfig(Config):
    """The probes fitted on frozen embeddings, and the collapse/escape metrics (``cfg.probe`` goes as
    ``config`` to `distill.probe.probe_features`, whose probes read these fields by name)."""

    probe_every: int = _f(
        10,
        "probe every this many epochs (0: only at the start and the end); a best over epochs is a maximum "
        "over the probed epochs, so it grows with the number of probes (the reference code probes every epoch)",
        check="non_negative",
    )
    probes: list = _f(
        ["knn", "linear", "linear_std"], "probes to run, comma-separated ('none' for none)", names="probes"
    )
    knn_k: int = _f(20, "k of the k-NN probe (neighbours)", check="positive")
    knn_metric: str = _f(
        "euclidean",
        "k-NN distance: euclidean unweighted vote (paper's code) or cosine temperature-weighted (DINO)",
        ("euclidean", "cosine"),
    )
    linear_epochs: int = _f(10, "linear probe training epochs (AdamW, lr 1e-3)", check="positive")
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
    dynamics_examples: int = _f(
        512, "training images (seeded with probe_seed) the dynamics metrics use", check="positive"
    )
    probe_reseed: bool = _f(
        False, "draw a fresh probe seed at every probed epoch (probe_seed + epoch), as the reference code"
    )


@dataclass
class RunConfig(Config):
    """The recipe, seeds, checkpoints and hardware of a run."""

    recipe: str = _f(
        "paper",
        "which protocol the defaults follow: paper (its text) or reference (the authors' code: "
        "DistillConfig.reference(); sets the fields listed in distill.config.REFERENCE). Neither changes "
        "probe_every: the reference code probes every epoch with a fresh probe seed (about 151 fits for "
        "150 epochs, the best of which it reports); with --probe-every N the best is over 150/N + 1 fits",
        ("paper", "reference"),
    )
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
    save_every: int = _f(
        10, "save the student every this many epochs (epoch 0 and the last are always saved)", check="non_negative"
    )
    save_epochs: list = _f([], "extra epochs at which to save the student, comma-separated, e.g. 1,2,5")
    resume_every: int = _f(
        0,
        "also save the training state (full-precision student and optimiser) every this many epochs "
        "between the saved students, so a killed run loses at most this many epochs (0: only at the saved "
        "students; the state replaces the previous one, so the store grows by no checkpoint)",
        check="non_negative",
    )


@dataclass
class DistillConfig(RunConfig, ProbeConfig, OptimConfig, ObjectiveConfig, InitConfig, ModelConfig, DataConfig):
    """Everything that defines one random-teacher distillation run: the fields of its groups (data, model,
    init, objective, optimisation, probes, run), flat, so that every flag keeps its name and every stored
    config its keys. ``cfg.probe`` and the other group properties give one group as its own config."""

    @classmethod
    def reference(cls, **changes: Any) -> DistillConfig:
        """The authors' code's behaviour (``REFERENCE``; ViT options ``REFERENCE_VIT`` on ViTs), then ``changes``."""
        base = dict(REFERENCE)
        arch = changes.get("arch", cls.arch)
        if str(arch).startswith("vit"):
            base["arch_options"] = {**REFERENCE_VIT, **changes.pop("arch_options", {})}
        return cls(**{**base, **changes})

    @classmethod
    def _from_flags(cls, values: dict[str, Any]) -> DistillConfig:
        """--recipe reference: the reference values replace the flags left at their paper defaults."""
        if values.get("recipe") == "reference":
            paper = cls()
            ref = cls.reference(arch=values.get("arch", paper.arch))
            for name in (*REFERENCE, "arch_options"):
                if name in values and values[name] == getattr(paper, name):
                    values[name] = getattr(ref, name)
        return cls(**values)

    def group(self, cls: type[_G]) -> _G:
        """The fields of group ``cls`` (e.g. `ProbeConfig`) as a config of that class."""
        return cls(**{f.name: getattr(self, f.name) for f in dataclasses.fields(cls)})  # type: ignore[arg-type]

    @property
    def probe(self) -> ProbeConfig:
        """The probe settings (`ProbeConfig`)."""
        return self.group(ProbeConfig)

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
class SupervisedConfig(Config):
    """Supervised training with labels (children for instability, lottery-ticket retraining).

    Defaults are the paper's recipe for ResNet18 on CIFAR-10 (``preset="paper"``).
    """

    epochs: int = _f(160, "training epochs (passes over the training images)", check="positive")
    optimizer: str = _f(
        "sgd",
        "sgd (with momentum; the paper's recipe) or adamw (torch's AdamW: the reference code's finetune "
        "default, lr 1e-3 and weight decay 0.01)",
        ("sgd", "adamw"),
    )
    lr: float = _f(0.1, "learning rate per step (before the decays)", check="non_negative")
    momentum: float = _f(0.9, "SGD momentum", check="non_negative")
    weight_decay: float = _f(1e-4, "weight decay", check="non_negative")
    milestones: list = _f([80, 120], "epochs at which the learning rate is multiplied by gamma, comma-separated")
    gamma: float = _f(0.1, "learning-rate decay factor", check="non_negative")
    warmup_epochs: float = _f(0.0, "linear warm-up length (epochs, may be fractional)", check="non_negative")
    batch_size: int = _f(256, "batch size (images per step)", check="positive")
    augment: str = _f(
        "flip_crop", "flip_crop: random horizontal flip + 4-pixel padded crop; none", ("flip_crop", "none")
    )
    data_seed: int = _f(0, "data order seed")
    aug_seed: int = _f(0, "augmentation seed")
    eval_every: int = _f(0, "evaluate test accuracy every this many epochs (0: only at the end)", check="non_negative")
    head_epochs: int = _f(
        0,
        "before training, fit a fresh linear head alone on the frozen backbone's embeddings of the "
        "training split for this many epochs (AdamW lr 1e-3; the reference code's pre_epochs_clf), so "
        "that the run, and a lottery's rewind target, start from a trained head (0: off)",
        check="non_negative",
    )
    device: str = _f("auto", "cpu, cuda, cuda:N or auto (CUDA when present)")
    precision: str = _f("fp32", "training precision (bf16 autocast on CUDA only)", ("fp32", "bf16"))

    @classmethod
    def preset(cls, name: str, **changes: Any) -> SupervisedConfig:
        """``paper``: 160 epochs (80/120 steps); ``cpu``: 8 epochs (4/6); ``tiny``: 2 epochs, for tests."""
        if name not in SUPERVISED_PRESETS:
            raise ValueError(f"unknown supervised preset {name!r}: choose one of {', '.join(SUPERVISED_PRESETS)}")
        return dataclasses.replace(cls(), **{**SUPERVISED_PRESETS[name], **changes})
