"""The Neuroverse3D network (reference): two 3D U-Nets joined by target-context fusion.

This file is the architecture and nothing else: every module's ``forward`` is the math.
Training and the fidelity tests run it; fast inference (:mod:`.engine`) reads its weights.
The released checkpoint's key names map onto these parameter names through the table in
:mod:`.checkpoint`.

Shapes: B batch, L context pairs, n pairs in one mini-context (chunk), C_i channels of stage i
(i = 0..S-1), D/H/W the full-resolution grid (each divisible by 2**(S-1)); stage i works at
``D / 2**i``. ``N`` is a batch of volumes: B targets, or B*n context pairs.

* target encoder: embed 1 -> C_0; per stage i < S-1: residual block, keep the skip t_i,
  downsample to C_{i+1}.
* context U-Net, per pair (image and label as 2 channels): embed 2 -> C_0; per stage i < S-1:
  residual block, target fusion ``c = GELU(c + conv1x1(cat[c, t_i]))``, keep the skip,
  downsample; bottleneck block; decoder stages (upsample x2, cat skip, conv1x1, residual
  block). The bottleneck and the decoder outputs are the *context features* h_0..h_{S-1}.
* target decoder: at the bottleneck and after every decoder stage k, a residual block, then
  context fusion ``t = GELU(t + conv1x1(cat[mean_pairs h_k, t]))``; output block, conv1x1 -> 1.

The fusion conv is linear in h_k, so the mean over pairs may be taken over the features
themselves (the release averages the conv outputs): that is what makes mini-context (APSP)
processing exact (see :mod:`.apsp`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .apsp import mean_context_features

RELEASED_CHANNELS = (32, 64, 128, 256, 512)
RELEASED_CONVS_PER_BLOCK = 2


@dataclass(frozen=True)
class NetworkConfig:
    """Architecture of a Neuroverse3D network (the released model is the default)."""

    channels: Sequence[int] = field(default=RELEASED_CHANNELS)
    convs_per_block: int = RELEASED_CONVS_PER_BLOCK

    def __post_init__(self):
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        if len(self.channels) < 2:
            raise ValueError("a Neuroverse3D network needs at least 2 stages")
        if self.convs_per_block < 1:
            raise ValueError("convs_per_block must be >= 1")

    @property
    def stages(self) -> int:
        return len(self.channels)

    @property
    def divisor(self) -> int:
        """Every spatial size of the input must be a multiple of this."""
        return 2 ** (self.stages - 1)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["channels"] = list(self.channels)
        return data


# ------------------------------------------------------------------------------ helpers
def gelu(x: Tensor) -> Tensor:
    """Exact (erf) GELU, as in the released model."""
    return F.gelu(x)


def upsample(x: Tensor) -> Tensor:
    """Trilinear x2 (align_corners=False): ``[N, C, d, h, w] -> [N, C, 2d, 2h, 2w]``."""
    return F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=False)


def fold_pairs(x: Tensor, pairs: Optional[int] = None) -> Tensor:
    """The pair axis: ``[B, n, C, *S] -> [B*n, C, *S]``, or back with ``pairs=n``."""
    return x.flatten(0, 1) if pairs is None else x.unflatten(0, (-1, pairs))


def conv1x1(c_in: int, c_out: int) -> nn.Conv3d:
    return nn.Conv3d(c_in, c_out, kernel_size=1)


def downsample_conv(c_in: int, c_out: int) -> nn.Conv3d:
    """Halves the grid: kernel 4, stride 2, padding 1."""
    return nn.Conv3d(c_in, c_out, kernel_size=4, stride=2, padding=1)


# ------------------------------------------------------------------------------- blocks
class ResidualBlock(nn.Module):
    """``GELU(x + conv3(GELU(conv3(x))))`` (``convs`` 3x3x3 convs): ``[N, C, *S] -> same``."""

    def __init__(self, channels: int, convs: int):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv3d(channels, channels, kernel_size=3, padding=1)
                                   for _ in range(convs))

    def forward(self, x: Tensor) -> Tensor:
        y = self.convs[0](x)
        for conv in self.convs[1:]:
            y = conv(gelu(y))
        return gelu(x + y)


class UpStage(nn.Module):
    """Decoder stage: ``block(conv1x1(cat[upsample(x), skip]))``.

    x ``[N, C_{i+1}, d, h, w]``, skip ``[N, C_i, 2d, 2h, 2w]`` -> ``[N, C_i, 2d, 2h, 2w]``.
    """

    def __init__(self, c_low: int, c_skip: int, convs: int):
        super().__init__()
        self.merge = conv1x1(c_low + c_skip, c_skip)
        self.block = ResidualBlock(c_skip, convs)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.block(self.merge(torch.cat([upsample(x), skip], dim=1)))


class ContextFusion(nn.Module):
    """Residual block, then ``GELU(t + conv1x1(cat[h, t]))``; t, h: ``[B, C, *S]`` (h: the
    mean context feature of the level)."""

    def __init__(self, channels: int, convs: int):
        super().__init__()
        self.block = ResidualBlock(channels, convs)
        self.fuse = conv1x1(2 * channels, channels)

    def forward(self, t: Tensor, context_mean: Tensor) -> Tensor:
        t = self.block(t)
        return gelu(t + self.fuse(torch.cat([context_mean, t], dim=1)))


# ------------------------------------------------------------------------------ branches
class TargetEncoder(nn.Module):
    """``[B, 1, D, H, W]`` -> (bottleneck ``[B, C_{S-1}, D/2^(S-1), ...]``, skips t_0..t_{S-2})."""

    def __init__(self, config: NetworkConfig):
        super().__init__()
        ch, convs = config.channels, config.convs_per_block
        self.embed = conv1x1(1, ch[0])
        self.blocks = nn.ModuleList(ResidualBlock(c, convs) for c in ch[:-1])
        self.downs = nn.ModuleList(downsample_conv(a, b) for a, b in zip(ch[:-1], ch[1:]))

    def forward(self, target: Tensor):
        t = self.embed(target)                       # [B, C_0, D, H, W]
        skips = []
        for block, down in zip(self.blocks, self.downs):
            t = block(t)                             # [B, C_i, D/2^i, ...]
            skips.append(t)
            t = down(t)                              # [B, C_{i+1}, D/2^(i+1), ...]
        return t, skips


class ContextUNet(nn.Module):
    """Context pairs ``[B, n, 2, D, H, W]`` and the target skips -> context features h_0..h_{S-1},
    ``[B, n, C_{S-1-k}, D/2^(S-1-k), ...]`` (h_0 the bottleneck, h_{S-1} full resolution)."""

    def __init__(self, config: NetworkConfig):
        super().__init__()
        ch, convs = config.channels, config.convs_per_block
        rev = ch[::-1]
        self.embed = conv1x1(2, ch[0])
        self.blocks = nn.ModuleList(ResidualBlock(c, convs) for c in ch[:-1])
        self.target_fusion = nn.ModuleList(conv1x1(2 * c, c) for c in ch[:-1])
        self.downs = nn.ModuleList(downsample_conv(a, b) for a, b in zip(ch[:-1], ch[1:]))
        self.bottleneck = ResidualBlock(ch[-1], convs)
        self.ups = nn.ModuleList(UpStage(a, b, convs) for a, b in zip(rev[:-1], rev[1:]))

    def forward(self, pairs: Tensor, target_skips: List[Tensor]) -> List[Tensor]:
        n = pairs.shape[1]
        c = self.embed(fold_pairs(pairs))            # [B*n, C_0, D, H, W]
        skips = []
        for block, fusion, down, t in zip(self.blocks, self.target_fusion, self.downs,
                                          target_skips):
            c = block(c)                             # [B*n, C_i, ...]
            t = t.repeat_interleave(n, dim=0)        # the target, once per pair: [B*n, C_i, ...]
            c = gelu(c + fusion(torch.cat([c, t], dim=1)))
            skips.append(c)
            c = down(c)
        c = self.bottleneck(c)                       # h_0: [B*n, C_{S-1}, ...]
        features = [c]
        for up, skip in zip(self.ups, reversed(skips)):
            c = up(c, skip)                          # h_k: [B*n, C_{S-1-k}, ...]
            features.append(c)
        return [fold_pairs(h, n) for h in features]


class TargetDecoder(nn.Module):
    """Bottleneck, skips and mean context features h_0..h_{S-1} ``[B, C, ...]`` -> ``[B, 1, D, H, W]``."""

    def __init__(self, config: NetworkConfig):
        super().__init__()
        ch, convs = config.channels, config.convs_per_block
        rev = ch[::-1]
        self.bottleneck = ContextFusion(rev[0], convs)
        self.merges = nn.ModuleList(conv1x1(a + b, b) for a, b in zip(rev[:-1], rev[1:]))
        self.stages = nn.ModuleList(ContextFusion(c, convs) for c in rev[1:])
        self.output = ResidualBlock(ch[0], convs)
        self.head = conv1x1(ch[0], 1)

    def forward(self, t: Tensor, skips: List[Tensor], context_means: List[Tensor]) -> Tensor:
        t = self.bottleneck(t, context_means[0])     # [B, C_{S-1}, ...]
        for merge, stage, skip, mean in zip(self.merges, self.stages, reversed(skips),
                                            context_means[1:]):
            t = merge(torch.cat([upsample(t), skip], dim=1))  # [B, C_i, 2x the grid]
            t = stage(t, mean)
        return self.head(self.output(t))             # [B, 1, D, H, W], no activation


# ----------------------------------------------------------------------------- the network
class Neuroverse3D(nn.Module):
    """In-context learning network for 3D volumes.

    ``Neuroverse3D()`` builds the released configuration (70,854,913 parameters).
    Inputs are intensities in [0, 1]; every spatial size must be divisible by ``divisor``.
    """

    def __init__(self, channels: Sequence[int] = RELEASED_CHANNELS,
                 convs_per_block: int = RELEASED_CONVS_PER_BLOCK):
        super().__init__()
        self.config = NetworkConfig(channels, convs_per_block)
        self.target_encoder = TargetEncoder(self.config)
        self.context_unet = ContextUNet(self.config)
        self.target_decoder = TargetDecoder(self.config)

    @property
    def divisor(self) -> int:
        return self.config.divisor

    def encode_target(self, target_in: Tensor):
        """``[B, 1, D, H, W]`` -> (bottleneck, skips); once per target."""
        return self.target_encoder(target_in)

    def context_features(self, context_in: Tensor, context_out: Tensor,
                         target_skips: List[Tensor]) -> List[Tensor]:
        """One mini-context: ``[B, n, 1, D, H, W]`` x2 -> per-level features ``[B, n, C, ...]``."""
        return self.context_unet(torch.cat([context_in, context_out], dim=2), target_skips)

    def decode(self, bottleneck: Tensor, target_skips: List[Tensor],
               context_means: List[Tensor]) -> Tensor:
        """Target decoder on the mean context features -> ``[B, 1, D, H, W]``."""
        return self.target_decoder(bottleneck, target_skips, context_means)

    def forward(self, target_in: Tensor, context_in: Tensor, context_out: Tensor,
                mini_context_size: Optional[int] = None) -> Tensor:
        """``[B,1,D,H,W]``, ``[B,L,1,D,H,W]`` x2 -> ``[B,1,D,H,W]``.

        The context runs in chunks of ``mini_context_size`` pairs (default: all at once) whose
        features are summed (APSP); any chunk size gives the same output. Context tensors may
        live on another device than the network: chunks are moved one at a time.
        """
        check_inputs(target_in, context_in, context_out, self.divisor)
        bottleneck, skips = self.encode_target(target_in)
        means = mean_context_features(self, context_in, context_out, skips, mini_context_size)
        return self.decode(bottleneck, skips, means)


def check_inputs(target_in: Tensor, context_in: Tensor, context_out: Tensor, divisor: int):
    """Raise ``ValueError`` with a clear message when the input shapes cannot work."""
    if target_in.dim() != 5 or target_in.shape[1] != 1:
        raise ValueError(f"target_in must be [B, 1, D, H, W], got {list(target_in.shape)}")
    for name, ctx in (("context_in", context_in), ("context_out", context_out)):
        if ctx.dim() != 6 or ctx.shape[2] != 1:
            raise ValueError(f"{name} must be [B, L, 1, D, H, W], got {list(ctx.shape)}")
        if ctx.shape[0] != target_in.shape[0] or ctx.shape[3:] != target_in.shape[2:]:
            raise ValueError(
                f"{name} {list(ctx.shape)} does not match target_in {list(target_in.shape)}"
            )
    if context_in.shape[1] != context_out.shape[1] or context_in.shape[1] < 1:
        raise ValueError("context_in and context_out must hold the same number (>= 1) of pairs")
    check_spatial_size(target_in.shape[2:], divisor)


def check_spatial_size(shape, divisor: int):
    """Raise ``ValueError`` unless every side of ``shape`` ``(D, H, W)`` divides by ``divisor``."""
    if any(side % divisor for side in shape):
        raise ValueError(
            f"spatial size {list(shape)} is not divisible by {divisor}; "
            f"pad or resample the volumes to a multiple of {divisor}"
        )
