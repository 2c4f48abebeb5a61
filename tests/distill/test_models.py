import json
import math

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from distill import models
from distill.models import Model, build_model, list_models, register_model

SHAPES = [(1, 28, 28), (3, 32, 32)]
OUT = 128  # small DINO output width keeps the tests fast


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


# ----------------------------------------------------------------------------- every registered model
@pytest.mark.parametrize("in_shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("arch", list_models())
def test_every_model_builds_runs_and_rebuilds_from_spec(arch, in_shape):
    torch.manual_seed(0)
    # the default ViT patch (8, the paper's for 32x32) does not divide 28x28: use 4 there
    opts = {"patch_size": 4} if arch.startswith("vit") and in_shape[-1] % 8 else {}
    model = build_model(arch, in_shape=in_shape, out_dim=OUT, **opts).eval()
    assert isinstance(model, Model)
    seen = {}
    model.head.register_forward_pre_hook(lambda m, args: seen.update(emb=args[0]))  # one backbone pass
    with torch.no_grad():
        out = model(torch.randn(2, *in_shape))
        assert seen["emb"].shape == (2, model.embed_dim)
        assert out.shape == (2, OUT)
        assert torch.isfinite(out).all()
        assert torch.allclose(out, model.head(seen["emb"]))

    spec = model.spec
    expected_keys = (
        {"arch", "in_shape", "num_classes", "head"}
        | set(models._backbone_defaults(arch))
        | set(models.HEAD_DEFAULTS["dino"])
    )
    assert set(spec) == expected_keys  # every option is recorded
    assert spec["arch"] == arch and spec["in_shape"] == list(in_shape) and spec["out_dim"] == OUT
    rebuilt = build_model(**json.loads(json.dumps(spec)))
    assert list(rebuilt.state_dict()) == list(model.state_dict())
    assert shapes(rebuilt) == shapes(model)
    assert repr(rebuilt) == repr(model)  # same layers with the same settings (strides, pools, ...)
    assert rebuilt.spec == spec


@pytest.mark.parametrize("arch", ["convnet", "resnet20", "vgg11_bn", "mlp"])
def test_rebuilt_model_with_loaded_weights_computes_the_same(arch):
    torch.manual_seed(0)
    model = build_model(arch, in_shape=(1, 28, 28), out_dim=OUT).eval()
    rebuilt = build_model(**model.spec)
    rebuilt.load_state_dict(model.state_dict())
    rebuilt.eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))
        assert not torch.equal(build_model(**model.spec).eval()(x), model(x))  # fresh weights differ


def test_spec_is_a_copy_and_keeps_non_default_options():
    model = build_model(
        "vit_tiny", in_shape=[1, 28, 28], depth=2, tie_blocks=True, patch_size=7, head="linear", num_classes=10
    )
    spec = model.spec
    spec["depth"] = 99
    assert model.spec["depth"] == 2
    assert model.spec == {
        "arch": "vit_tiny",
        "in_shape": [1, 28, 28],
        "num_classes": 10,
        "head": "linear",
        "patch_size": 7,
        "depth": 2,
        "tie_blocks": True,
        "weight_init": "trunc_normal",
        "block": "standard",
    }
    rebuilt = build_model(**model.spec)
    assert shapes(rebuilt) == shapes(model)


def test_spec_normalises_tuples_and_numpy_scalars():
    model = build_model("mlp", in_shape=(1, 28, 28), widths=(np.int64(32), 16), head=None)
    assert model.spec["widths"] == [32, 16]
    json.dumps(model.spec)
    assert model.embed_dim == 16
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 16)


# ----------------------------------------------------------------------------- parameter counts
@pytest.mark.parametrize(
    "arch, count",
    [
        ("resnet18", 11_168_832),
        ("vgg11", 9_220_480),
        ("resnet20", 271_824),
        ("resnet56", 855_120),
        ("vgg16", 14_714_688),
    ],
)
def test_backbone_parameter_counts(arch, count):
    assert n_params(build_model(arch, head=None).backbone) == count


def _cifar_resnet_count(n: int, projection: bool) -> int:
    """Hand count of a 16-32-64 CIFAR ResNet with n blocks per stage (convs bias-free, BN 2 per channel)."""
    total = 3 * 16 * 9 + 2 * 16  # stem
    cin = 16
    for cout in (16, 32, 64):
        for j in range(n):
            total += (cin if j == 0 else cout) * cout * 9 + cout * cout * 9 + 4 * cout
            if j == 0 and cin != cout and projection:
                total += cin * cout + 2 * cout
        cin = cout
    return total


@pytest.mark.parametrize("arch, n", [("resnet20", 3), ("resnet56", 9)])
def test_cifar_resnet_counts_by_hand_and_shortcut_variants(arch, n):
    proj = build_model(arch, head=None)
    zero = build_model(arch, head=None, shortcut="A")
    assert n_params(proj.backbone) == _cifar_resnet_count(n, projection=True)
    assert n_params(zero.backbone) == _cifar_resnet_count(n, projection=False)
    assert not any("downsample" in k for k in zero.state_dict())  # option A: parameter-free shortcuts
    if n == 3:
        with torch.no_grad():
            assert zero.backbone.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 64)
    # the zero-padded shortcut: strided subsampling, new channels zero
    sc = models.ZeroPadShortcut(16, 2)
    y = torch.randn(2, 16, 8, 8)
    out = sc(y)
    assert out.shape == (2, 32, 4, 4)
    assert torch.equal(out[:, 8:24], y[:, :, ::2, ::2])
    assert (out[:, :8] == 0).all() and (out[:, 24:] == 0).all()


def test_resnet18_matches_torchvision_with_cifar_stem():
    tv = torchvision.models.resnet18()
    tv.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    tv.maxpool = nn.Identity()
    tv.fc = nn.Identity()
    ours = build_model("resnet18", head=None).backbone
    assert n_params(ours) == n_params(tv) == 11_168_832
    assert shapes(ours) == shapes(tv)
    # same weights -> same embedding (torchvision's forward as the reference)
    ours.load_state_dict(tv.state_dict())
    ours.eval(), tv.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(ours(x), tv(x), atol=1e-5)


@pytest.mark.parametrize(
    "arch, cfg, bn",
    [
        ("vgg11", "A", False),
        ("vgg16", "D", False),
        ("vgg11_bn", "A", True),
        ("vgg19_bn", "E", True),
        ("vgg13", "B", False),
    ],
)
def test_vgg_features_match_torchvision(arch, cfg, bn):
    tv = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs[cfg], batch_norm=bn)
    ours = build_model(arch, head=None).backbone
    assert shapes(ours.features) == shapes(tv)
    if arch not in ("vgg11", "vgg11_bn"):
        return  # the forward comparison below is the same code path for every depth
    ours.features.load_state_dict(tv.state_dict())
    ours.eval(), tv.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = tv(x)
        assert ref.shape == (2, 512, 1, 1)
        assert torch.allclose(ours(x), ref.flatten(1), atol=1e-5)  # 32x32: embedding = flattened features


def test_vgg_bn_option_equals_bn_name():
    assert shapes(build_model("vgg13", bn=True, head=None)) == shapes(build_model("vgg13_bn", head=None))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in build_model("vgg13", head=None).modules())


def test_pools_skipped_on_one_pixel_maps():
    vgg = build_model("vgg11", in_shape=(1, 28, 28), head=None).backbone
    pools = [m for m in vgg.features if isinstance(m, (nn.MaxPool2d, nn.Identity))]
    assert [type(m) for m in pools] == [nn.MaxPool2d] * 4 + [nn.Identity]  # 28 -> 14 -> 7 -> 3 -> 1, skip
    cn = build_model("convnet", in_shape=(1, 28, 28), depth=5, head=None).backbone
    assert [type(b[-1]) for b in cn.features] == [nn.MaxPool2d] * 4 + [nn.Identity]
    assert cn(torch.randn(2, 1, 28, 28)).shape == (2, 64)
    plain = build_model("convnet", bn=False, width=8, head=None)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    assert plain.embed_dim == 8


def test_backbone_initialisation():
    torch.manual_seed(0)
    r = build_model("resnet18", head=None).backbone
    w = r.layer4[1].conv2.weight  # Kaiming normal, fan_out = 512 * 9
    assert abs(w.std().item() / math.sqrt(2 / (512 * 9)) - 1) < 0.02
    assert torch.equal(r.bn1.weight, torch.ones(64)) and torch.equal(r.bn1.bias, torch.zeros(64))
    m = build_model("mlp", head=None).backbone.layers[1]  # PyTorch default: U(-1/sqrt(fan_in), +)
    assert m.weight.abs().max() <= 1 / math.sqrt(3 * 32 * 32)


# ----------------------------------------------------------------------------- DINO head
def test_dino_head_default_architecture():
    torch.manual_seed(0)
    head = build_model("vgg11", head="dino").head  # paper's head: 512 -> 2048 -> 2048 -> 256 -> 65536
    linears = [m for m in head.mlp if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(512, 2048), (2048, 2048), (2048, 256)]
    assert [type(m) for m in head.mlp] == [nn.Linear, nn.GELU, nn.Linear, nn.GELU, nn.Linear]
    assert head.last_layer.weight.shape == (65536, 256) and head.last_layer.bias is None
    assert isinstance(head.last_layer.weight, nn.Parameter)  # plain last layer by default
    for m in linears + [head.last_layer]:
        assert abs(m.weight.std().item() / 0.02 - 1) < 0.02
        assert m.bias is None or not m.bias.any()
    bn = build_model("convnet", out_dim=OUT, use_bn=True, nlayers=2).head
    assert [type(m) for m in bn.mlp] == [nn.Linear, nn.BatchNorm1d, nn.GELU, nn.Linear]
    one = build_model("convnet", out_dim=OUT, nlayers=1, bottleneck_dim=32).head
    assert [type(m) for m in one.mlp] == [nn.Linear] and one.mlp[0].out_features == 32


def test_dino_head_l2_normalises_the_bottleneck():
    torch.manual_seed(0)
    model = build_model("convnet", out_dim=OUT)
    seen = {}
    model.head.last_layer.register_forward_pre_hook(lambda m, args: seen.update(z=args[0]))
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert torch.allclose(seen["z"].norm(dim=1), torch.ones(2), atol=1e-6)
    z = model.head.mlp(model.backbone(x))  # by hand
    assert torch.allclose(out, (z / z.norm(dim=1, keepdim=True)) @ model.head.last_layer.weight.T, atol=1e-6)
    raw = build_model("convnet", out_dim=OUT, l2_normalize=False).head
    e = torch.randn(2, 64)
    assert torch.allclose(raw.bottleneck(e), raw.mlp(e))
    assert not torch.allclose(raw.bottleneck(e).norm(dim=1), torch.ones(2))


def test_dino_weightnorm_last_layer_frozen_g():
    torch.manual_seed(0)
    model = build_model("convnet", out_dim=OUT, last_layer="weightnorm")
    last = model.head.last_layer
    plist = last.parametrizations.weight
    g, v = plist.original0, plist.original1
    assert g.shape == (OUT, 1) and torch.equal(g, torch.ones(OUT, 1))
    w = last.weight
    assert torch.allclose(w, g * v / v.norm(dim=1, keepdim=True))
    assert torch.allclose(w.norm(dim=1), torch.ones(OUT), atol=1e-6)
    model.requires_grad_(True)  # must not unfreeze g
    model(torch.randn(2, 3, 32, 32)).square().sum().backward()
    assert g.grad is None and not g.requires_grad
    assert all(p is not g for p in model.parameters())
    assert v.grad is not None and v.grad.abs().sum() > 0
    assert "head.last_layer.parametrizations.weight.original0" in model.state_dict()


def test_dino_weightnorm_last_layer_trainable_g():
    torch.manual_seed(0)
    model = build_model("convnet", out_dim=OUT, last_layer="weightnorm", norm_last_layer=False)
    last = model.head.last_layer
    g = last.parametrizations.weight.original0
    assert isinstance(g, nn.Parameter) and torch.equal(g, torch.ones(OUT, 1))
    model(torch.randn(2, 3, 32, 32)).square().sum().backward()
    assert g.grad is not None and g.grad.abs().sum() > 0
    with torch.no_grad():
        g.fill_(2.5)
    assert torch.allclose(last.weight.norm(dim=1), torch.full((OUT,), 2.5), atol=1e-5)


# ----------------------------------------------------------------------------- ViT
def test_vit_tied_blocks_share_one_module():
    torch.manual_seed(0)
    untied = build_model("vit_tiny", depth=4, head=None)
    tied = build_model("vit_tiny", depth=4, tie_blocks=True, head=None)
    block = n_params(tied.backbone.blocks[0])
    assert len(tied.backbone.blocks) == 1 and len(untied.backbone.blocks) == 4
    assert n_params(untied) - n_params(tied) == 3 * block
    # the tied model applies its one block depth times (manual forward as the reference)
    vit = tied.backbone
    x = torch.randn(2, 3, 32, 32)
    t = vit.patch_embed(x).flatten(2).transpose(1, 2)
    t = torch.cat([vit.cls_token.expand(2, -1, -1), t], 1) + vit.pos_embed
    for _ in range(4):
        t = vit.blocks[0](t)
    assert torch.allclose(vit(x), vit.norm(t)[:, 0], atol=1e-5)


@pytest.mark.parametrize("arch", ["vit_tiny", "vit_small"])
def test_vit_dims_and_attention_mixes_tokens(arch):
    torch.manual_seed(0)
    dim, heads = {"vit_tiny": (192, 3), "vit_small": (384, 6)}[arch]
    model = build_model(arch, depth=2, head=None).eval()
    assert model.embed_dim == dim and model.backbone.blocks[0].attn.num_heads == heads
    assert model.backbone.pos_embed.shape == (1, 1 + 4 * 4, dim)  # patch 8 on 32x32 (the paper's)
    x = torch.randn(2, 3, 32, 32)
    y = x.clone()
    y[:, :, 28:, 28:] += 1.0  # one (the last) patch only
    with torch.no_grad():
        diff = (model(x) - model(y)).abs().max()
    assert diff > 1e-3  # the cls token only sees pixels through attention


def test_vit_attention_against_explicit_softmax():
    torch.manual_seed(0)
    attn = build_model("vit_tiny", depth=1, head=None).backbone.blocks[0].attn
    x = torch.randn(2, 5, 192)
    qkv = attn.qkv(x)
    q, k, v = qkv[..., :192], qkv[..., 192:384], qkv[..., 384:]
    outs = []
    for h in range(3):  # loop over heads: softmax over the 5 tokens
        s = slice(64 * h, 64 * (h + 1))
        w = torch.softmax(q[..., s] @ k[..., s].transpose(1, 2) / 8.0, dim=-1)
        outs.append(w @ v[..., s])
    ref = attn.proj(torch.cat(outs, dim=-1))
    assert torch.allclose(attn(x), ref, atol=1e-5)


def test_vit_patch_size_must_divide_input():
    with pytest.raises(ValueError, match="patch_size"):
        build_model("vit_tiny", in_shape=(1, 28, 28), patch_size=8)
    assert build_model("vit_tiny", in_shape=(1, 28, 28), patch_size=7, depth=1, head=None).backbone.pos_embed.shape == (
        1,
        17,
        192,
    )


def test_vit_torch_init_option():
    torch.manual_seed(0)
    vit = build_model("vit_small", weight_init="torch", depth=1, head=None).backbone
    assert abs(vit.pos_embed.std().item() - 1) < 0.05
    vit = build_model("vit_small", depth=1, head=None).backbone
    assert abs(vit.pos_embed.std().item() / 0.02 - 1) < 0.05


# ----------------------------------------------------------------------------- heads and errors
def test_linear_and_identity_heads():
    model = build_model("resnet20", head="linear", num_classes=10)
    assert isinstance(model.head, nn.Linear) and (model.head.in_features, model.head.out_features) == (64, 10)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    bare = build_model("resnet20", head=None)
    assert isinstance(bare.head, nn.Identity)
    x = torch.randn(2, 3, 32, 32)
    bare.eval()
    assert torch.equal(bare(x), bare.backbone(x))


def test_unknown_arch_lists_registered_names():
    with pytest.raises(ValueError, match="resnet18") as e:
        build_model("resnet1000")
    assert "vgg11" in str(e.value) and "vit_tiny" in str(e.value)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"arch": "resnet18", "head": "linear"}, "num_classes"),
        ({"arch": "resnet18", "head": "mlp"}, "head"),
        ({"arch": "resnet18", "widths": [3]}, "widths"),
        ({"arch": "resnet18", "head": None, "out_dim": 5}, "out_dim"),
        ({"arch": "resnet20", "shortcut": "C"}, "shortcut"),
        ({"arch": "convnet", "width": 0}, "width"),
        ({"arch": "convnet", "bn": "yes"}, "bn"),
        ({"arch": "mlp", "widths": "512"}, "widths"),
        ({"arch": "convnet", "last_layer": "cosine"}, "last_layer"),
        ({"arch": "convnet", "out_dim": 2.5}, "out_dim"),
        ({"arch": "convnet", "in_shape": (32, 32)}, "in_shape"),
        ({"arch": "convnet", "num_classes": 0}, "num_classes"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_model(**kwargs)


def test_register_model_adds_a_buildable_architecture():
    @register_model("toy_linear_net")
    def toy(in_shape, *, width=7):
        net = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(in_shape), width))
        net.embed_dim = width
        return net

    try:
        assert "toy_linear_net" in list_models()
        model = build_model("toy_linear_net", in_shape=(1, 28, 28), width=5, out_dim=OUT)
        assert model.spec["width"] == 5 and model(torch.randn(2, 1, 28, 28)).shape == (2, OUT)
        assert shapes(build_model(**model.spec)) == shapes(model)
        with pytest.raises(ValueError, match="already registered"):
            register_model("toy_linear_net")(toy)
        with pytest.raises(ValueError, match="keyword-only"):
            register_model("toy_positional")(lambda in_shape, width: None)
    finally:
        models._REGISTRY.pop("toy_linear_net", None)
    assert "toy_linear_net" not in list_models()


def test_vit_reference_block_against_an_explicit_loop():
    """block="reference": per token, a softmax over the heads; the (B, H, L, E') -> (B, L, E) reshape;
    GELU after the MLP's output layer; LayerNorm eps 1e-5. Written out with loops over tokens."""
    torch.manual_seed(0)
    blk = build_model("vit_tiny", depth=1, block="reference", head=None).backbone.blocks[0]
    B, L, E, H = 2, 5, 192, 3
    d = E // H
    x = torch.randn(B, L, E)

    def ln(t):
        mu, var = t.mean(-1, keepdim=True), t.var(-1, unbiased=False, keepdim=True)
        return (t - mu) / torch.sqrt(var + 1e-5)  # weight 1, bias 0 at init

    qkv = blk.attn.qkv(ln(x))
    heads = torch.empty(B, H, L, d)  # heads[b, h, l] = head h's output at token l
    for b in range(B):
        for i in range(L):
            q = qkv[b, i, :E].reshape(H, d)
            k = qkv[b, i, E : 2 * E].reshape(H, d)
            v = qkv[b, i, 2 * E :].reshape(H, d)
            w = torch.softmax(q @ k.T / d**0.5, dim=-1)  # (H, H): head h attends to head g of token i
            heads[b, :, i] = w @ v
    mixed = heads.flatten().reshape(B, L, E)  # the H-major memory order read as (B, L, E)
    y = x + blk.attn.proj(mixed)
    z = blk.mlp[2](torch.nn.functional.gelu(blk.mlp[0](ln(y))))
    ref = y + torch.nn.functional.gelu(z)
    assert torch.allclose(blk(x), ref, atol=1e-5)
    # the standard block differs on the same weights
    std = build_model("vit_tiny", depth=1, head=None).backbone.blocks[0]
    std.load_state_dict(blk.state_dict())
    assert not torch.allclose(std(x), ref, atol=1e-3)


def test_vit_unknown_block_is_refused():
    with pytest.raises(ValueError, match="block"):
        build_model("vit_tiny", depth=1, block="dino", head=None)


@pytest.mark.parametrize("arch", ["resnet18", "resnet34"])
def test_resnet_imagenet_stem_equals_torchvision(arch):
    """stem="imagenet" is torchvision's network (7x7 / max-pool stem); checked on the same weights."""
    import torchvision

    torch.manual_seed(0)
    ours = build_model(arch, stem="imagenet", head=None).backbone.eval()
    tv = getattr(torchvision.models, arch)()
    tv.fc = torch.nn.Identity()
    tv.load_state_dict(ours.state_dict())
    tv.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(ours(x), tv(x), atol=1e-5)
    assert ours.conv1.weight.shape == (64, 3, 7, 7)
    cifar = build_model(arch, head=None).backbone
    assert cifar.conv1.weight.shape == (64, 3, 3, 3) and set(cifar.state_dict()) == set(ours.state_dict())
    with pytest.raises(ValueError, match="stem"):
        build_model(arch, stem="tiny", head=None)
