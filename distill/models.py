"""Backbones, the `Model` wrapper and a registry: ``build_model("vgg11", in_shape=(3, 32, 32))``.

A registered backbone factory is ``fn(in_shape, *, option=default, ...) -> nn.Module``; the module
maps a normalised float image (B, C, H, W) to an embedding (B, D) and has ``embed_dim = D``.
Every backbone accepts any channel count and 28x28 or 32x32 inputs.

Initialisation (as the reference implementation of each family):
- ``mlp``: PyTorch's default Linear init.
- ``convnet``, ``resnet*``, ``vgg*``: torchvision's, i.e. Conv2d weights Kaiming-normal
  (fan_out, ReLU gain), conv biases zero, BatchNorm (1, 0).
- ``vit_*``: see `distill.vit.VisionTransformer` (option ``weight_init``).
The DINO head is described in `distill.heads.DINOHead`.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from distill.heads import (
    HEAD_DEFAULTS,
    HEAD_OPTION_NAMES,
    HEADS,
    build_head,
    check_bool,
    check_choice,
    check_int,
    check_ints,
)
from distill.registry import registering
from distill.vit import vit_small, vit_tiny

_RNG_LOCK = threading.RLock()


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with torch's global CPU generator seeded to ``seed``, restoring its state
    afterwards. Module constructors draw from that global generator, so seeded builds in
    concurrent threads (e.g. a thread-pool locality sweep) are serialised by a lock."""
    with _RNG_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


__all__ = ["Model", "build_model", "list_models", "model_plugin", "register_model"]

Factory = TypeVar("Factory", bound=Callable[..., nn.Module])
_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_ORIGIN: dict[str, str] = {}  # name -> module of the factory (where it was registered)
# modules of the toolkit itself: models they register need no plugin to be rebuilt
TOOLKIT_PACKAGES: tuple[str, ...] = ("distill", "landscape", "analyses")
_RESERVED = {"arch", "in_shape", "num_classes", "head"} | set(HEAD_OPTION_NAMES)


# ----------------------------------------------------------------------------- registry
def register_model(name: str) -> Callable[[Factory], Factory]:
    """Decorator registering a backbone factory ``fn(in_shape, *, opt=default, ...)`` under ``name``.

    Options must be keyword-only with defaults, so that a spec can list all of them.
    """

    return registering(_REGISTRY, "model", name, _admit_factory)


def _admit_factory(name: str, fn: Callable[..., nn.Module]) -> None:
    params = list(inspect.signature(fn).parameters.values())
    for p in params[1:]:
        if p.kind is not p.KEYWORD_ONLY or p.default is p.empty:
            raise ValueError(f"factory {fn.__name__}: option {p.name!r} must be keyword-only with a default")
        if p.name in _RESERVED:
            raise ValueError(f"factory {fn.__name__}: option name {p.name!r} is reserved; rename it")
    _ORIGIN[name] = str(getattr(fn, "__module__", "") or "")


def list_models() -> list[str]:
    """Names of all registered architectures, sorted."""
    return sorted(_REGISTRY)


def model_plugin(arch: str) -> str | None:
    """The module that registered ``arch`` when it is not the toolkit's own (a plugin), else None.

    Stores record it beside every saved module, so that loading can say which plugin it needs."""
    module = _ORIGIN.get(arch, "")
    if not module or module.split(".", 1)[0] in TOOLKIT_PACKAGES:
        return None
    return module


def _backbone_defaults(arch: str) -> dict[str, Any]:
    params = list(inspect.signature(_REGISTRY[arch]).parameters.values())[1:]
    return {p.name: p.default for p in params}


def _jsonable(value: Any) -> Any:
    """Tuples -> lists, numpy / torch scalars -> Python numbers, so that the spec is JSON."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if not isinstance(value, (str, bytes)) and hasattr(value, "item") and hasattr(value, "dtype"):
        return value.item()
    return value


class Model(nn.Module):
    """Backbone + head. ``forward(x) = head(backbone(x))``; x: normalised float image (B, C, H, W).

    ``embed_dim`` is the backbone's output width D. ``spec`` is a JSON-serialisable dict with every
    argument and option of `build_model` (defaults filled in); ``build_model(**model.spec)``
    rebuilds the same architecture (same state_dict keys and shapes, fresh random weights).
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, embed_dim: int, spec: dict[str, Any]) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.embed_dim = embed_dim
        self._spec = spec

    @property
    def spec(self) -> dict[str, Any]:
        """A copy of the build arguments (safe to mutate)."""
        return copy.deepcopy(self._spec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def extra_repr(self) -> str:
        return f"arch={self._spec['arch']!r}, head={self._spec['head']!r}, embed_dim={self.embed_dim}"


def build_model(
    arch: str,
    in_shape: Sequence[int] = (3, 32, 32),
    num_classes: int | None = None,
    head: str | None = "dino",
    **options: Any,
) -> Model:
    """Build backbone ``arch`` for inputs of shape ``in_shape`` = (C, H, W) with ``head`` on top.

    ``head``: "dino" (projection head, options out_dim, hidden_dim, bottleneck_dim, nlayers, use_bn,
    l2_normalize, last_layer, norm_last_layer), "linear" (nn.Linear(D, num_classes)) or None
    (identity: the model returns the embedding). Other ``options`` go to the backbone.
    """
    if arch not in _REGISTRY:
        from distill.plugins import load_entry_points

        load_entry_points()  # an installed plugin may register it
    if arch not in _REGISTRY:
        raise ValueError(
            f"unknown arch {arch!r}: registered models are {', '.join(list_models())} (register "
            "more with distill.register_model, or load a plugin with --plugin MODULE)"
        )
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}: choose one of {', '.join(map(repr, HEADS))}")
    if isinstance(in_shape, (str, bytes)) or not isinstance(in_shape, Sequence) or len(in_shape) != 3:
        raise ValueError(f"in_shape={in_shape!r} must be (C, H, W), e.g. (3, 32, 32)")
    shape = tuple(check_ints("in_shape", in_shape))
    if num_classes is not None:
        num_classes = check_int("num_classes", num_classes)

    bb_opts = _backbone_defaults(arch)
    head_opts = dict(HEAD_DEFAULTS[head])
    unknown = sorted(set(options) - set(bb_opts) - set(head_opts))
    if unknown:
        accepted = sorted(bb_opts) + sorted(head_opts)
        raise ValueError(
            f"{arch} with head={head!r} does not accept option(s) {', '.join(unknown)}; "
            f"accepted: {', '.join(accepted) or 'none'}"
        )
    for k, v in options.items():
        (bb_opts if k in bb_opts else head_opts)[k] = v

    backbone = _REGISTRY[arch](shape, **bb_opts)
    embed_dim = getattr(backbone, "embed_dim", None)
    if isinstance(embed_dim, bool) or not isinstance(embed_dim, int):
        raise TypeError(f"the {arch} backbone has no integer .embed_dim (its output width): set it in the builder")
    head_module = build_head(head, embed_dim, num_classes, head_opts)
    spec = {
        "arch": arch,
        "in_shape": list(shape),
        "num_classes": num_classes,
        "head": head,
        **_jsonable(bb_opts),
        **_jsonable(head_opts),
    }
    try:
        json.dumps(spec)
    except TypeError as e:
        raise ValueError(f"options of {arch} must be JSON values (numbers, strings, bools, lists): {e}") from None
    return Model(backbone, head_module, embed_dim, spec)


# ----------------------------------------------------------------------------- helpers
def _pool_or_identity(h: int, w: int) -> tuple[nn.Module, int, int]:
    """A 2x2 max-pool, or the identity when the map is already 1 pixel high or wide."""
    if min(h, w) < 2:
        return nn.Identity(), h, w
    return nn.MaxPool2d(2), h // 2, w // 2


def _torchvision_init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _conv3x3(cin: int, cout: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=bias)


# ----------------------------------------------------------------------------- MLP
class MLP(nn.Module):
    """Flatten, then Linear-ReLU layers of the given widths; embedding = last width."""

    def __init__(self, in_shape: tuple[int, int, int], widths: Sequence[int]) -> None:
        super().__init__()
        dims = [in_shape[0] * in_shape[1] * in_shape[2], *widths]
        layers: list[nn.Module] = [nn.Flatten()]
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.ReLU(inplace=True)]
        self.layers = nn.Sequential(*layers)
        self.embed_dim = dims[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


@register_model("mlp")
def mlp(in_shape: tuple[int, int, int], *, widths: Sequence[int] = (512, 512)) -> nn.Module:
    """Fully connected ReLU network on the flattened image."""
    return MLP(in_shape, check_ints("widths", widths))


# ----------------------------------------------------------------------------- ConvNet
class ConvNet(nn.Module):
    """``depth`` blocks Conv3x3(pad 1)-[BN]-ReLU-MaxPool2 of constant ``width``, global average pool."""

    def __init__(self, in_shape: tuple[int, int, int], width: int, depth: int, bn: bool) -> None:
        super().__init__()
        c, h, w = in_shape
        blocks = []
        for i in range(depth):
            layers: list[nn.Module] = [_conv3x3(c if i == 0 else width, width, bias=not bn)]
            if bn:
                layers.append(nn.BatchNorm2d(width))
            pool, h, w = _pool_or_identity(h, w)
            blocks.append(nn.Sequential(*layers, nn.ReLU(inplace=True), pool))
        self.features = nn.Sequential(*blocks)
        self.embed_dim = width
        _torchvision_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean(dim=(2, 3))


@register_model("convnet")
def convnet(in_shape: tuple[int, int, int], *, width: int = 64, depth: int = 4, bn: bool = True) -> nn.Module:
    """Plain ConvNet (4 x 64 with BN by default); embedding = width."""
    return ConvNet(in_shape, check_int("width", width), check_int("depth", depth), check_bool("bn", bn))


# ----------------------------------------------------------------------------- ResNets
class ZeroPadShortcut(nn.Module):
    """Parameter-free shortcut ("option A"): subsample by ``stride``, zero-pad the new channels."""

    def __init__(self, extra_channels: int, stride: int) -> None:
        super().__init__()
        self.extra, self.stride = extra_channels, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus shortcut, then ReLU. Module names follow torchvision."""

    def __init__(self, cin: int, cout: int, stride: int, shortcut: str) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = _conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            if shortcut == "A":
                self.downsample = ZeroPadShortcut(cout - cin, stride)
            else:
                self.downsample = nn.Sequential(
                    nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
                )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity, inplace=True)


STEMS = ("cifar", "imagenet")


class ResNet(nn.Module):
    """ResNet with a CIFAR stem (3x3 stride-1 conv, BN, ReLU, no max-pool), BasicBlock stages
    (the first at stride 1, the others at stride 2), global average pool -> widths[-1].

    ``shortcut`` where a block changes shape: "B" (1x1 conv + BN projection, as torchvision) or
    "A" (parameter-free: subsample by the stride and zero-pad the new channels).
    ``stem="imagenet"``: torchvision's ImageNet stem instead (7x7 conv at stride 2, BN, ReLU, 3x3
    max-pool at stride 2), which the authors' code builds unless run with ``--tiny_input``; on
    32x32 images the last stage then works on 1x1 maps.
    """

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        widths: Sequence[int],
        blocks: Sequence[int],
        shortcut: str,
        stem: str = "cifar",
    ) -> None:
        super().__init__()
        if stem == "imagenet":
            self.conv1: nn.Conv2d = nn.Conv2d(in_shape[0], widths[0], 7, stride=2, padding=3, bias=False)
        else:
            self.conv1 = _conv3x3(in_shape[0], widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.pool: nn.Module = nn.MaxPool2d(3, stride=2, padding=1) if stem == "imagenet" else nn.Identity()
        cin = widths[0]
        for i, (cout, n) in enumerate(zip(widths, blocks)):
            stage = [
                BasicBlock(cin if j == 0 else cout, cout, (1 if i == 0 else 2) if j == 0 else 1, shortcut)
                for j in range(n)
            ]
            self.add_module(f"layer{i + 1}", nn.Sequential(*stage))
            cin = cout
        self.num_stages = len(widths)
        self.embed_dim = widths[-1]
        _torchvision_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.bn1(self.conv1(x)), inplace=True))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return x.mean(dim=(2, 3))


def _imagenet_width_resnet(
    in_shape: tuple[int, int, int], blocks: Sequence[int], shortcut: str, stem: str
) -> nn.Module:
    return ResNet(
        in_shape,
        (64, 128, 256, 512),
        blocks,
        check_choice("shortcut", shortcut, ("A", "B")),
        check_choice("stem", stem, STEMS),
    )


@register_model("resnet18")
def resnet18(in_shape: tuple[int, int, int], *, shortcut: str = "B", stem: str = "cifar") -> nn.Module:
    """ResNet-18 with CIFAR stem, 64-128-256-512, [2, 2, 2, 2] BasicBlocks; embedding 512.
    ``stem="imagenet"``: torchvision's 7x7 / max-pool stem (`ResNet`)."""
    return _imagenet_width_resnet(in_shape, (2, 2, 2, 2), shortcut, stem)


@register_model("resnet34")
def resnet34(in_shape: tuple[int, int, int], *, shortcut: str = "B", stem: str = "cifar") -> nn.Module:
    """ResNet-34 with CIFAR stem, 64-128-256-512, [3, 4, 6, 3] BasicBlocks; embedding 512.
    ``stem="imagenet"``: torchvision's 7x7 / max-pool stem (`ResNet`)."""
    return _imagenet_width_resnet(in_shape, (3, 4, 6, 3), shortcut, stem)


@register_model("resnet20")
def resnet20(in_shape: tuple[int, int, int], *, shortcut: str = "B") -> nn.Module:
    """CIFAR ResNet-20 of He et al.: 16-32-64 channels, 3 x 3 BasicBlocks; embedding 64.

    The default "B" (projection) shortcut gives 271,824 backbone parameters, the count this
    toolkit's experiments use; "A" (He et al.'s zero padding) gives 269,072.
    """
    return ResNet(in_shape, (16, 32, 64), (3, 3, 3), check_choice("shortcut", shortcut, ("A", "B")))


@register_model("resnet56")
def resnet56(in_shape: tuple[int, int, int], *, shortcut: str = "B") -> nn.Module:
    """CIFAR ResNet-56 of He et al.: 16-32-64 channels, 3 x 9 BasicBlocks; embedding 64.

    Shortcut "B" (default): 855,120 backbone parameters; "A": 852,368.
    """
    return ResNet(in_shape, (16, 32, 64), (9, 9, 9), check_choice("shortcut", shortcut, ("A", "B")))


# ----------------------------------------------------------------------------- VGG
VGG_CONFIGS: dict[int, list[int | str]] = {  # "M" = 2x2 max-pool
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


class VGG(nn.Module):
    """VGG conv stack (Conv3x3-[BN]-ReLU, max-pools), then average pool to 1x1 and flatten -> 512.

    On 32x32 inputs the map after the last pool is already 1x1, so the embedding is exactly the
    flattened features. A pool that would act on a 1-pixel map (28x28 inputs) is the identity.
    Layer indices in ``features`` match torchvision's VGG ``features``.
    """

    def __init__(self, in_shape: tuple[int, int, int], config: Sequence[int | str], bn: bool) -> None:
        super().__init__()
        c, h, w = in_shape
        layers: list[nn.Module] = []
        for v in config:
            if v == "M":
                pool, h, w = _pool_or_identity(h, w)
                layers.append(pool)
            else:
                layers.append(nn.Conv2d(c, int(v), kernel_size=3, padding=1))
                if bn:
                    layers.append(nn.BatchNorm2d(int(v)))
                layers.append(nn.ReLU(inplace=True))
                c = int(v)
        self.features = nn.Sequential(*layers)
        self.embed_dim = c
        _torchvision_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)


def _register_vgg(depth: int) -> None:
    def plain(in_shape: tuple[int, int, int], *, bn: bool = False) -> nn.Module:
        return VGG(in_shape, VGG_CONFIGS[depth], check_bool("bn", bn))

    def with_bn(in_shape: tuple[int, int, int]) -> nn.Module:
        return VGG(in_shape, VGG_CONFIGS[depth], True)

    plain.__doc__ = f"VGG-{depth} (no BatchNorm unless bn=True); embedding 512."
    with_bn.__doc__ = f"VGG-{depth} with BatchNorm after every conv; embedding 512."
    register_model(f"vgg{depth}")(plain)
    register_model(f"vgg{depth}_bn")(with_bn)


for _depth in VGG_CONFIGS:
    _register_vgg(_depth)


register_model("vit_tiny")(vit_tiny)
register_model("vit_small")(vit_small)
