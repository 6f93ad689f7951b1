"""TinyViT image encoder of LiteMedSAM: (B, 3, 256, 256) images in [0, 1] -> (B, 256, 64, 64) embeddings.

The architecture of TinyViT-5M as MobileSAM/LiteMedSAM adapted it (1x1 patch embedding, no stride before the first
stage, last stage at the third stage's resolution, a SAM-style neck), written so that its `state_dict` keys equal the
`image_encoder.*` keys of LiteMedSAM's `lite_medsam.pth` (so the file loads with `strict=True`).

Written for speed on CPU and for later `torch.autocast(bfloat16)` / `channels_last` use:
- window attention partitions and merges windows with reshapes (no Python loop over windows), batched over all
  windows of all images, with the learned relative-position bias added to the attention logits;
- in eval mode each conv + BatchNorm pair runs as one conv with folded weights;
- tokens are kept as (B, H, W, C) between blocks, so the depthwise "local conv" sees a channels-last view of the same
  memory instead of a transposed copy;
- no BatchNorm statistics are updated in eval mode; the encoder is frozen in this project (see `AutoMedSAM.train`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F  # noqa: N812 (the conventional alias)
from torch import nn


class ConvNorm(nn.Sequential):
    """Conv2d without bias followed by BatchNorm2d (keys `c.*`, `bn.*`)."""

    def __init__(self, in_chans: int, out_chans: int, kernel_size: int = 1, stride: int = 1, padding: int = 0,
                 groups: int = 1, bn_weight_init: float = 1.0) -> None:
        super().__init__()
        self.add_module("c", nn.Conv2d(in_chans, out_chans, kernel_size, stride, padding, groups=groups, bias=False))
        norm = nn.BatchNorm2d(out_chans)
        nn.init.constant_(norm.weight, bn_weight_init)
        nn.init.zeros_(norm.bias)
        self.add_module("bn", norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in, H, W) -> (B, out, H', W'); in eval mode the BatchNorm is folded into the conv (one pass)."""
        conv, norm = self.c, self.bn
        if self.training:
            return norm(conv(x))
        scale = norm.weight * torch.rsqrt(norm.running_var + norm.eps)
        weight = conv.weight * scale[:, None, None, None]
        bias = norm.bias - norm.running_mean * scale
        return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of a (B, C, H, W) map (SAM's neck normalisation, eps 1e-6)."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W); normalises each pixel's C values (works on any memory format)."""
        x = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class PatchEmbed(nn.Module):
    """Two 1x1 conv-BN layers lifting the image to `embed_dim` channels at full resolution."""

    def __init__(self, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(ConvNorm(in_chans, embed_dim // 2), nn.GELU(), ConvNorm(embed_dim // 2, embed_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> (B, embed_dim, H, W)."""
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual block (1x1 expand, 3x3 depthwise, 1x1 project) of the convolutional first stage."""

    def __init__(self, dim: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = ConvNorm(dim, hidden)
        self.conv2 = ConvNorm(hidden, hidden, 3, 1, 1, groups=hidden)
        self.conv3 = ConvNorm(hidden, dim, bn_weight_init=0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        y = F.gelu(self.conv1(x))
        y = F.gelu(self.conv2(y))
        return F.gelu(self.conv3(y) + x)


class PatchMerging(nn.Module):
    """Channel change and (stride 2) downsampling between stages: 1x1, 3x3 depthwise (strided), 1x1."""

    def __init__(self, dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.conv1 = ConvNorm(dim, out_dim)
        self.conv2 = ConvNorm(out_dim, out_dim, 3, stride, 1, groups=out_dim)
        self.conv3 = ConvNorm(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, dim, H, W) -> (B, out_dim, H / stride, W / stride)."""
        x = F.gelu(self.conv1(x))
        x = F.gelu(self.conv2(x))
        return self.conv3(x)


class ConvLayer(nn.Module):
    """First stage: MBConv blocks on the full-resolution map, then patch merging."""

    def __init__(self, dim: int, depth: int, expand_ratio: float, downsample: PatchMerging | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand_ratio) for _ in range(depth))
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C', H', W')."""
        for block in self.blocks:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside square windows with a learned bias per |dy|, |dx| offset and head.

    Keys: `norm`, `qkv`, `proj`, `attention_biases` (heads, window**2); the offset index map is a non-persistent
    buffer. The qkv projection is laid out per head as [q (key_dim), k (key_dim), v (key_dim)].
    """

    def __init__(self, dim: int, num_heads: int, window_size: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = dim // num_heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window_size * window_size))
        coords = torch.stack(torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij"))
        coords = coords.flatten(1)                                   # (2, N) row, column of each window position
        offsets = (coords[:, :, None] - coords[:, None, :]).abs()    # (2, N, N)
        self.register_buffer("attention_bias_idxs", offsets[0] * window_size + offsets[1], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(W, N, C) tokens of W windows of N = window**2 positions -> (W, N, C)."""
        windows, tokens, channels = x.shape
        qkv = self.qkv(self.norm(x)).view(windows, tokens, self.num_heads, 3 * self.key_dim).transpose(1, 2)
        q, k, v = qkv.split(self.key_dim, dim=-1)                    # each (W, heads, N, key_dim)
        # One fused attention op with the bias as additive mask: as fast as the explicit form in eager fp32, faster
        # in bf16, and OpenVINO maps it to its fused kernel (encoder 20 % faster there, docs/benchmarks.md).
        bias = self.attention_biases[:, self.attention_bias_idxs].to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(out.transpose(1, 2).reshape(windows, tokens, channels))


class Mlp(nn.Module):
    """Pre-norm two-layer MLP with GELU (keys `norm`, `fc1`, `fc2`)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., C) -> (..., C)."""
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """(B, H, W, C) -> (B * nH * nW, window**2, C) windows, zero-padding H, W up to multiples of `window`.

    Returns the windows and the padded size (pH, pW). Padded positions take part in attention as zero tokens, exactly
    as in the reference TinyViT (they are cropped again by `window_merge`).
    """
    b, h, w, c = x.shape
    pad_b, pad_r = (-h) % window, (-w) % window
    if pad_b or pad_r:
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
    ph, pw = h + pad_b, w + pad_r
    x = x.view(b, ph // window, window, pw // window, window, c).transpose(2, 3)
    return x.reshape(-1, window * window, c), (ph, pw)


def window_merge(windows: torch.Tensor, window: int, padded: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """Inverse of `window_partition`: (B * nH * nW, window**2, C) -> (B, H, W, C) cropped to `size` (H, W)."""
    ph, pw = padded
    c = windows.shape[-1]
    x = windows.view(-1, ph // window, pw // window, window, window, c).transpose(2, 3).reshape(-1, ph, pw, c)
    h, w = size
    return x[:, :h, :w] if (ph, pw) != (h, w) else x


class TinyViTBlock(nn.Module):
    """Window attention + depthwise local conv + MLP, on (B, H, W, C) tokens."""

    def __init__(self, dim: int, num_heads: int, window_size: int, mlp_ratio: float, local_conv_size: int) -> None:
        super().__init__()
        self.window_size = window_size
        self.attn = WindowAttention(dim, num_heads, window_size)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.local_conv = ConvNorm(dim, dim, local_conv_size, 1, local_conv_size // 2, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, H, W, C)."""
        h, w = x.shape[1:3]
        windows, padded = window_partition(x, self.window_size)
        x = x + window_merge(self.attn(windows), self.window_size, padded, (h, w))
        # (B, H, W, C) seen as (B, C, H, W) is a channels-last tensor: the depthwise conv needs no copy.
        x = self.local_conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x + self.mlp(x)


class BasicLayer(nn.Module):
    """One transformer stage: TinyViT blocks, then optional patch merging; (B, C, H, W) in and out."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, mlp_ratio: float,
                 local_conv_size: int, downsample: PatchMerging | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TinyViTBlock(dim, num_heads, window_size, mlp_ratio, local_conv_size) for _ in range(depth))
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C', H', W')."""
        x = x.permute(0, 2, 3, 1)
        for block in self.blocks:
            x = block(x)
        x = x.permute(0, 3, 1, 2)
        return x if self.downsample is None else self.downsample(x)


class TinyViT(nn.Module):
    """TinyViT image encoder with LiteMedSAM's configuration as defaults.

    Stage resolutions for a 256 px input: 256 (conv stage, 64 ch) -> 128 (128 ch) -> 64 (160 ch) -> 64 (320 ch); the
    merging into the last stage keeps the resolution. The neck maps to `out_chans` (256) channels.
    """

    def __init__(self, img_size: int = 256, in_chans: int = 3, embed_dims: Sequence[int] = (64, 128, 160, 320),
                 depths: Sequence[int] = (2, 2, 6, 2), num_heads: Sequence[int] = (2, 4, 5, 10),
                 window_sizes: Sequence[int] = (7, 7, 14, 7), mlp_ratio: float = 4.0,
                 mbconv_expand_ratio: float = 4.0, local_conv_size: int = 3, out_chans: int = 256) -> None:
        super().__init__()
        self.img_size = img_size
        self.patch_embed = PatchEmbed(in_chans, embed_dims[0])
        last = len(depths) - 1
        self.layers = nn.ModuleList()
        for i, depth in enumerate(depths):
            downsample = None
            if i < last:
                stride = 1 if i + 1 == last else 2
                downsample = PatchMerging(embed_dims[i], embed_dims[i + 1], stride)
            if i == 0:
                self.layers.append(ConvLayer(embed_dims[0], depth, mbconv_expand_ratio, downsample))
            else:
                self.layers.append(BasicLayer(embed_dims[i], depth, num_heads[i], window_sizes[i], mlp_ratio,
                                              local_conv_size, downsample))
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 256, 256) float images in [0, 1] -> (B, 256, 64, 64) image embeddings."""
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        return self.neck(x)


def _init_weights(module: nn.Module) -> None:
    """Truncated-normal linear weights, zero biases, unit LayerNorm (as TinyViT initialises before training)."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
