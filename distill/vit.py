"""Vision Transformer backbone for small images (ViT-Tiny / ViT-Small at patch size 8 on 32x32, as the paper).

Patch embedding (a Conv2d with kernel = stride = patch size), a learned cls token, learned
position embeddings, ``depth`` pre-norm blocks (multi-head self-attention across tokens, then
an MLP of width 4 * dim with GELU, each wrapped in a residual connection), a final LayerNorm;
the embedding is the cls token's output, shape (B, dim).

``block="reference"`` builds the blocks of the authors' code instead (safelix/dinopl,
``models/vit.py``), which differ from a standard ViT in ways the paper does not state: its
attention weights are a softmax over the *heads* of one token (scores (B, L, H, H)), not over the
tokens, and the result (B, L, H, D/H) is transposed to (B, H, L, D/H) and reshaped to (B, L, D)
without undoing the transpose, which redistributes values across token positions; its MLP applies
GELU after the output layer too; its LayerNorms use eps 1e-5.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from distill.heads import check_bool, check_choice, check_int, trunc_normal_

WEIGHT_INITS = ("trunc_normal", "torch")
BLOCKS = ("standard", "reference")


class Attention(nn.Module):
    """Multi-head self-attention between the L tokens of (B, L, dim).

    ``across_heads=True``: the authors' code's variant (module docstring): per token, a softmax over
    its H heads' scores (B, L, H, H), then the (B, H, L, D/H) -> (B, L, D) reshape without a transpose.
    """

    def __init__(self, dim: int, num_heads: int, across_heads: bool = False) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"ViT width {dim} is not divisible by num_heads={num_heads}; pick a divisor")
        self.num_heads = num_heads
        self.across_heads = across_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        if self.across_heads:
            # (B, L, 3, H, D/H) -> three (B, L, H, D/H): the "sequence" axis of the attention is H
            q, k, v = self.qkv(x).reshape(B, L, 3, self.num_heads, D // self.num_heads).unbind(2)
            y = F.scaled_dot_product_attention(q, k, v)  # (B, L, H, D/H)
            return self.proj(y.transpose(1, 2).reshape(B, L, D))
        # (B, L, 3, H, D/H) -> three tensors (B, H, L, D/H): attention runs over the L axis
        q, k, v = self.qkv(x).reshape(B, L, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(B, L, D))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then + mlp(norm2(x)).

    ``reference=True``: the authors' code's block (module docstring): attention across heads, a GELU
    after the MLP's output layer, LayerNorm eps 1e-5. Parameter names and shapes are the same.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: int = 4, reference: bool = False) -> None:
        super().__init__()
        eps = 1e-5 if reference else 1e-6
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, across_heads=reference)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        out_act = [nn.GELU()] if reference else []
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim), *out_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """ViT backbone: float image (B, C, H, W) -> cls embedding (B, dim).

    ``tie_blocks=True`` keeps ONE block and applies it ``depth`` times (what the authors' code
    does, by repeating one module); by default the ``depth`` blocks are independent.

    ``weight_init="trunc_normal"`` (default, the standard ViT/DINO initialisation): Linear weights
    and the cls / position embeddings ~ N(0, 0.02^2) (`distill.heads.trunc_normal_`, cut
    at +-2 as in DINO), zero biases, LayerNorm (1, 0), patch-embedding Conv2d with PyTorch's default.
    ``weight_init="torch"``: PyTorch's default Linear/Conv2d initialisation and cls / position
    embeddings ~ N(0, 1), as the authors' code.
    ``block``: "standard" (default) or "reference", the authors' code's block (module docstring).
    """

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        *,
        dim: int,
        num_heads: int,
        depth: int = 12,
        patch_size: int = 8,
        tie_blocks: bool = False,
        weight_init: str = "trunc_normal",
        block: str = "standard",
    ) -> None:
        super().__init__()
        if block not in BLOCKS:
            raise ValueError(f"unknown ViT block {block!r}; use one of {', '.join(BLOCKS)}")
        C, H, W = in_shape
        if H % patch_size or W % patch_size:
            raise ValueError(
                f"ViT patch_size={patch_size} does not divide the input size {H}x{W}; "
                f"pass a patch_size that divides both"
            )
        self.depth = depth
        self.tie_blocks = tie_blocks
        self.embed_dim = dim
        self.patch_embed = nn.Conv2d(C, dim, kernel_size=patch_size, stride=patch_size)
        num_patches = (H // patch_size) * (W // patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + num_patches, dim))
        ref = block == "reference"
        self.blocks = nn.ModuleList(Block(dim, num_heads, reference=ref) for _ in range(1 if tie_blocks else depth))
        self.norm = nn.LayerNorm(dim, eps=1e-5 if ref else 1e-6)
        self._init_weights(weight_init)

    @torch.no_grad()
    def _init_weights(self, weight_init: str) -> None:
        if weight_init == "torch":
            nn.init.normal_(self.cls_token)
            nn.init.normal_(self.pos_embed)
            return  # modules were built with PyTorch's defaults
        trunc_normal_(self.cls_token, std=0.02)
        trunc_normal_(self.pos_embed, std=0.02)
        for m in self.blocks.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, L, dim)
        tokens = torch.cat([self.cls_token.expand(len(tokens), -1, -1), tokens], dim=1) + self.pos_embed
        for i in range(self.depth):
            tokens = self.blocks[0 if self.tie_blocks else i](tokens)
        return self.norm(tokens)[:, 0]


def _vit_factory(size: str, dim: int, num_heads: int) -> Callable[..., nn.Module]:
    def factory(
        in_shape: tuple[int, int, int],
        *,
        patch_size: int = 8,
        depth: int = 12,
        tie_blocks: bool = False,
        weight_init: str = "trunc_normal",
        block: str = "standard",
    ) -> nn.Module:
        return VisionTransformer(
            in_shape,
            dim=dim,
            num_heads=num_heads,
            depth=check_int("depth", depth),
            patch_size=check_int("patch_size", patch_size),
            tie_blocks=check_bool("tie_blocks", tie_blocks),
            weight_init=check_choice("weight_init", weight_init, WEIGHT_INITS),
            block=check_choice("block", block, BLOCKS),
        )

    factory.__name__ = factory.__qualname__ = f"vit_{size.lower()}"
    factory.__doc__ = (
        f"ViT-{size}: width {dim}, {num_heads} heads, ``depth`` blocks, MLP ratio 4; embedding {dim} (cls token).\n"
        "    ``block=\"reference\"``: the authors' code's block (`distill.vit`)."
    )
    return factory


# backbone factories, registered by distill.models
vit_tiny = _vit_factory("Tiny", 192, 3)
vit_small = _vit_factory("Small", 384, 6)
