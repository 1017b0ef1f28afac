"""The Neuroverse3D network: two 3D U-Nets joined by target-context fusion.

Module and parameter names follow the released checkpoint (``neuroverse3D.ckpt``) so that
its ``state_dict`` loads without renaming (after stripping the Lightning ``net.`` prefix).

Notation in shape comments: B batch, L context pairs, n pairs in one mini-context (chunk),
C_i channels of stage i, D/H/W spatial size at full resolution (divisible by 2**(S-1)).

Data flow (S stages, channels C_0..C_{S-1}):

* target encoder: embed 1 -> C_0, then per stage i < S-1: residual block, keep skip t_i,
  downsample (conv k4 s2 p1) to C_{i+1}.
* context U-Net (per pair, image and label as 2 channels): embed 2 -> C_0; per stage i < S-1:
  residual block, fuse the target skip (``GELU(c + conv1x1(cat[c, t_i]))``), keep skip c_i,
  downsample; bottleneck residual block; decoder: upsample x2, cat skip, conv1x1, residual
  block.  The bottleneck and each decoder stage output are the *context features* h_0..h_{S-1}.
* target decoder: at the bottleneck and after every decoder stage k, residual block then
  ``GELU(t + mean_pairs(conv1x1(cat[h_k, t])))``; output residual block and conv1x1 -> 1.

Because the fusion conv is linear in h_k, the mean over pairs can be taken over the features
themselves. That is what makes mini-context (APSP) processing exact: the context branch runs
chunk by chunk and only the per-level sums of h_k are kept (see :mod:`.apsp`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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


def gelu(x: Tensor) -> Tensor:
    """Exact (erf) GELU, as in the released model."""
    return F.gelu(x)


def conv_split(x: Tensor, conv: nn.Conv3d, start: int, stop: int, bias: bool) -> Tensor:
    """Apply the input channels ``start:stop`` of a 1x1x1 conv's weight to ``x``.

    ``conv(cat[a, b]) == conv_split(a, 0, Ca, False) + conv_split(b, Ca, Ca+Cb, True)``:
    lets a fusion conv act on each half separately, so the concatenation (and the broadcast of
    the target over context pairs) is never materialised.
    """
    weight, b = split_weight(conv, start, stop, x), conv.bias if bias else None
    if fusable(x, weight):  # oneDNN, output channels-last (aten may pick a slow GEMM path)
        return _POINTWISE(x, weight, b, [0] * 3, [1] * 3, [1] * 3, 1, "none", [], "")
    return F.conv3d(x, weight, b)


def derived_weight(conv: nn.Conv3d, key, make, x: Tensor) -> Tensor:
    """``make(conv.weight)``, cached on ``conv`` for inference (no gradient) while the weight
    is unchanged (same storage, version, dtype); recomputed on every call otherwise."""
    weight = conv.weight
    if torch.is_grad_enabled() or x.requires_grad:
        return make(weight)
    try:
        stamp = (weight.data_ptr(), weight._version, weight.dtype, weight.device)
    except RuntimeError:  # an inference tensor has no version counter
        return make(weight)
    cache = conv.__dict__.setdefault("_derived_weights", {})
    hit = cache.get(key)
    if hit is None or hit[0] != stamp:
        hit = cache[key] = (stamp, make(weight))
    return hit[1]


def split_weight(conv: nn.Conv3d, start: int, stop: int, x: Tensor) -> Tensor:
    """``conv.weight[:, start:stop]``, contiguous in ``x``'s layout (no per-call copy)."""
    cl = x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d)
    layout = torch.channels_last_3d if cl else torch.contiguous_format

    def make(weight):
        return weight[:, start:stop].contiguous(memory_format=layout)
    return derived_weight(conv, ("split", start, stop, cl), make, x)


def plus_identity(conv: nn.Conv3d, start: int, stop: int, x: Tensor) -> Tensor:
    """``conv.weight[:, start:stop] + I`` (a square 1x1x1 slice): ``conv1x1(x; W + I) == x +
    conv1x1(x; W)``, which saves materialising a residual sum. Used in float32 only: the
    folded weight is exact to float32 rounding (bfloat16 would round ``1 + w`` coarsely)."""
    part = split_weight(conv, start, stop, x)

    def make(weight):
        eye = torch.eye(stop - start, dtype=weight.dtype, device=weight.device)
        out = torch.empty_like(part, memory_format=torch.preserve_format)
        return torch.add(part, eye[:, :, None, None, None], out=out)  # keeps part's strides
    return derived_weight(conv, ("plus_identity", start, stop, part.stride()), make, x)


def _mkldnn_pointwise():
    ops = getattr(torch.ops, "mkldnn", None)
    try:
        return ops._convolution_pointwise if torch.backends.mkldnn.is_available() else None
    except (AttributeError, RuntimeError):
        return None


_POINTWISE = _mkldnn_pointwise()
_POINTWISE_INPLACE = (torch.ops.mkldnn._convolution_pointwise_.binary
                      if _POINTWISE is not None else None)


def fusable(x: Tensor, weight: Tensor) -> bool:
    """True where oneDNN fused conv kernels apply: CPU inference in float32/bfloat16 on a
    ``channels_last_3d`` tensor, with ``weight`` of ``x``'s dtype (under ``torch.autocast`` a
    bfloat16 ``x`` meets float32 weights: plain ops then cast). Elsewhere (CUDA, float64,
    training) plain ops run."""
    return (_POINTWISE is not None and x.device.type == "cpu" and not torch.is_grad_enabled()
            and x.dtype in (torch.float32, torch.bfloat16) and weight.dtype == x.dtype
            and x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d))


def _geometry(conv: nn.Conv3d):
    return list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups


def conv_gelu(x: Tensor, conv: nn.Conv3d) -> Tensor:
    """``GELU(conv(x))`` (one fused kernel where :func:`fusable`)."""
    if fusable(x, conv.weight):
        return _POINTWISE(x, conv.weight, conv.bias, *_geometry(conv), "gelu", [], "none")
    return gelu(conv(x))


def conv_add(x: Tensor, weight: Tensor, bias, other: Tensor, padding: int = 0) -> Tensor:
    """``conv3d(x, weight, bias) + other`` (``other`` of the output's shape; fused where
    :func:`fusable`)."""
    if fusable(x, weight) and other.dtype == x.dtype and other.shape[0] == x.shape[0]:
        return _POINTWISE.binary(x, other, weight, bias, [padding] * 3, [1] * 3, [1] * 3, 1,
                                 "add", 1.0, None, [], None)
    return F.conv3d(x, weight, bias, padding=padding) + other


def conv_add_(other: Tensor, x: Tensor, weight: Tensor, bias, padding: int = 0) -> Tensor:
    """``other += conv3d(x, weight, bias)`` in place; returns ``other`` (a temporary of the
    caller's: one fewer activation allocated, and, at 128^3, one fewer fresh 134 MB block)."""
    if (fusable(x, weight) and other.dtype == x.dtype and other.shape[0] == x.shape[0]
            and other.is_contiguous(memory_format=torch.channels_last_3d)):
        return _POINTWISE_INPLACE(other, x, weight, bias, [padding] * 3, [1] * 3, [1] * 3, 1,
                                  "add", 1.0, None, [], None)
    return other.add_(F.conv3d(x, weight, bias, padding=padding))


def layout_like(x: Tensor, conv: nn.Conv3d) -> Tensor:
    """``x`` in ``channels_last_3d`` when ``conv``'s weight is (an embedding's 1-2 input
    channels make the layout of its output ambiguous, so it is set explicitly)."""
    if channels_last(conv):
        return x.contiguous(memory_format=torch.channels_last_3d)
    return x


def channels_last(conv: nn.Conv3d) -> bool:
    """True when ``conv``'s weight is (unambiguously) in ``channels_last_3d``."""
    weight = conv.weight
    return weight.is_contiguous(memory_format=torch.channels_last_3d) and not weight.is_contiguous()


def embed_volume(x: Tensor, conv: nn.Conv3d, like: nn.Conv3d) -> Tensor:
    """1x1x1 conv of a 1-channel volume ``[B, 1, *S]`` laid out like ``like``'s weight.

    For inference in ``channels_last_3d`` it is one ``bias + x * w`` written straight into a
    channels-last tensor (oneDNN runs a 1-input-channel volume in the default layout, slowly,
    and the result would then need a layout change)."""
    weight = conv.weight
    if fusable(x, weight) and x.shape[1] == 1 and conv.bias is not None and channels_last(like):
        out = torch.empty((x.shape[0], weight.shape[0], *x.shape[2:]), dtype=x.dtype,
                          device=x.device, memory_format=torch.channels_last_3d)
        shape = (1, -1, 1, 1, 1)
        return torch.addcmul(conv.bias.view(shape), x, weight.view(shape), out=out)
    return layout_like(conv(x), like)


def gelu_(x: Tensor) -> Tensor:
    """Exact GELU, in place when no gradient is recorded (call on fresh tensors only)."""
    return gelu(x) if torch.is_grad_enabled() else torch.ops.aten.gelu_(x)


# ----------------------------------------------------------------------------- layers
class PairwiseModule(nn.Module):
    """Apply ``module`` to each context pair: ``[B, n, C, *S] -> [B, n, C', *S']``.

    The released model wraps every context-branch layer this way (hence ``.module.`` in keys).
    """

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: Tensor) -> Tensor:
        batch, pairs = x.shape[:2]
        y = self.module(x.flatten(0, 1))
        return y.unflatten(0, (batch, pairs))


class ResidualBlock(nn.Module):
    """``GELU(x + convs(x))`` with ``convs`` = conv3 (-> GELU -> conv3)*; channels unchanged."""

    def __init__(self, channels: int, convs: int):
        super().__init__()
        layers: List[nn.Module] = []
        for index in range(convs):
            if index:
                layers.append(nn.GELU())
            layers.append(nn.Conv3d(channels, channels, kernel_size=3, padding=1))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.run(x)[0]

    def run(self, x: Tensor, consume: bool = False):
        """``(GELU(x + convs(x)), scratch)`` for inference.

        consume: ``x`` is the caller's temporary, so where fused kernels run the sum is
        written into it (one activation fewer). scratch: a dead activation of ``x``'s shape
        and layout (the inner convolutions' output) that the caller may overwrite, or None.
        """
        if not fusable(x, self.layers[0].weight):
            return gelu(x + self.layers(x)), None
        convs = [layer for layer in self.layers if isinstance(layer, nn.Conv3d)]
        y = x
        for conv in convs[:-1]:
            y = conv_gelu(y, conv)
        last = convs[-1]
        if y is x:  # a single conv reads x while the sum would overwrite it
            return gelu_(conv_add(x, last.weight, last.bias, x, padding=1)), None
        if consume:
            return gelu_(conv_add_(x, y, last.weight, last.bias, padding=1)), y
        return gelu_(conv_add(y, last.weight, last.bias, x, padding=1)), y


def downsample_conv(c_in: int, c_out: int) -> nn.Conv3d:
    """Halve the grid: conv kernel 4, stride 2, padding 1."""
    return nn.Conv3d(c_in, c_out, kernel_size=4, stride=2, padding=1)


def upsample(x: Tensor) -> Tensor:
    """Trilinear x2 (align_corners=False) on ``[N, C, D, H, W]``.

    For bfloat16 inference in ``channels_last_3d`` on the CPU it runs as three 1D passes
    (W, H, then D), about 1.7x faster than torch's kernel there and equal up to bfloat16
    rounding; elsewhere torch's kernel runs.
    """
    if (x.dtype == torch.bfloat16 and x.device.type == "cpu" and not torch.is_grad_enabled()
            and x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d)):
        for dim in (4, 3, 2):
            x = _double_linear(x, dim)
        return x
    return F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=False)


def _double_linear(x: Tensor, dim: int) -> Tensor:
    """Linear x2 along ``dim`` (align_corners=False): ``out[2i] = x[i] + (x[i-1] - x[i])/4``,
    ``out[2i+1] = x[i] + (x[i+1] - x[i])/4``, edges clamped. Output in ``channels_last_3d``."""
    n = x.shape[dim]
    shape = list(x.shape)
    shape[dim] = 2 * n
    out = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=torch.channels_last_3d)
    pairs = out.unflatten(dim, (n, 2))
    even, odd = pairs.select(dim + 1, 0), pairs.select(dim + 1, 1)
    head, tail = x.narrow(dim, 0, n - 1), x.narrow(dim, 1, n - 1)
    torch.lerp(tail, head, 0.25, out=even.narrow(dim, 1, n - 1))
    torch.lerp(head, tail, 0.25, out=odd.narrow(dim, 0, n - 1))
    even.narrow(dim, 0, 1).copy_(x.narrow(dim, 0, 1))
    odd.narrow(dim, n - 1, 1).copy_(x.narrow(dim, n - 1, 1))
    return out


def upsample_and_merge(x: Tensor, skip: Tensor, conv: nn.Conv3d) -> Tensor:
    """``conv1x1(cat[up(x), skip])`` without materialising the concatenation.

    x: ``[N, C_{i+1}, d, h, w]``, skip: ``[N, C_i, 2d, 2h, 2w]`` -> ``[N, C_i, 2d, 2h, 2w]``.
    A 1x1x1 conv (channel mixing) and trilinear upsampling (per-channel spatial weights)
    commute, so the up half of the conv runs at low resolution on C_{i+1} channels and only
    C_i channels are upsampled: 8x fewer conv FLOPs, half the upsampling work and memory.
    """
    c_up = x.shape[1]
    merged = upsample(conv_split(x, conv, 0, c_up, bias=False))
    return conv_add_(merged, skip, conv.weight[:, c_up:], conv.bias)


# --------------------------------------------------------------------------- target branch
class TargetEncoderStage(nn.Module):
    def __init__(self, channels: int, convs: int):
        super().__init__()
        self.target_conv = ResidualBlock(channels, convs)


class TargetDownsample(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.target_linear_layer = downsample_conv(c_in, c_out)


class TargetUpsample(nn.Module):
    def __init__(self, c_low: int, c_skip: int):
        super().__init__()
        self.target_conv_layer = nn.Conv3d(c_low + c_skip, c_skip, kernel_size=1)


class TargetEncoder(nn.Module):
    """``[B, 1, D, H, W]`` -> (bottleneck ``[B, C_{S-1}, D/2^(S-1), ...]``, skips t_0..t_{S-2})."""

    def __init__(self, config: NetworkConfig):
        super().__init__()
        ch, convs = config.channels, config.convs_per_block
        self.target_embedding = nn.Conv3d(1, ch[0], kernel_size=1)
        self.enc_blocks = nn.ModuleList(TargetEncoderStage(c, convs) for c in ch[:-1])
        self.downsample_blocks = nn.ModuleList(
            TargetDownsample(a, b) for a, b in zip(ch[:-1], ch[1:])
        )

    def forward(self, target: Tensor):
        t = embed_volume(target, self.target_embedding, self.downsample_blocks[0].target_linear_layer)
        skips = []
        for block, down in zip(self.enc_blocks, self.downsample_blocks):
            t = block.target_conv.run(t, consume=True)[0]  # t: embedding or downsampled
            skips.append(t)
            t = down.target_linear_layer(t)
        return t, skips


class ContextFusion(nn.Module):
    """Context-to-target fusion: residual block, then ``GELU(t + conv1x1(cat[mean h, t]))``."""

    def __init__(self, channels: int, convs: int):
        super().__init__()
        self.target_conv = ResidualBlock(channels, convs)
        self.combine_conv_target = PairwiseModule(nn.Conv3d(2 * channels, channels, kernel_size=1))

    def forward(self, t: Tensor, context_mean: Tensor, consume: bool = False) -> Tensor:
        """t: ``[B, C, *S]``; context_mean: mean context feature over pairs, ``[B, C, *S]``;
        consume: ``t`` is the caller's temporary (see :meth:`ResidualBlock.run`)."""
        t, scratch = self.target_conv.run(t, consume)
        conv = self.combine_conv_target.module
        c = t.shape[1]
        if scratch is not None:  # written into the residual block's dead activation
            scratch.copy_(t)
            conv_add_(scratch, context_mean, split_weight(conv, 0, c, context_mean), conv.bias)
            fused = conv_add_(scratch, t, split_weight(conv, c, 2 * c, t), None)
        elif fusable(t, conv.weight) and t.dtype == torch.float32:  # t folded into the weight
            other = conv_split(context_mean, conv, 0, c, bias=True)
            fused = conv_add_(other, t, plus_identity(conv, c, 2 * c, t), None)
        else:
            other = t + conv_split(context_mean, conv, 0, c, bias=False)
            fused = conv_add_(other, t, split_weight(conv, c, 2 * c, t), conv.bias)
        return gelu_(fused)


class TargetOutput(nn.Module):
    def __init__(self, channels: int, convs: int):
        super().__init__()
        self.block = nn.Sequential(ResidualBlock(channels, convs), nn.Conv3d(channels, 1, 1))


class TargetDecoder(nn.Module):
    """Bottleneck + S-1 up stages fused with mean context features -> ``[B, 1, D, H, W]``."""

    def __init__(self, config: NetworkConfig):
        super().__init__()
        ch, convs = config.channels, config.convs_per_block
        rev = ch[::-1]  # C_{S-1} .. C_0
        self.enc_blocks = nn.ModuleList([ContextFusion(rev[0], convs)])
        self.upsample_blocks = nn.ModuleList(TargetUpsample(a, b) for a, b in zip(rev[:-1], rev[1:]))
        self.dec_blocks = nn.ModuleList(ContextFusion(c, convs) for c in rev[1:])
        self.output_block = TargetOutput(ch[0], convs)

    def forward(self, t: Tensor, skips: List[Tensor], context_means: List[Tensor]) -> Tensor:
        """context_means: h_0 (bottleneck) .. h_{S-1} (full resolution), each ``[B, C, *S]``."""
        t = self.enc_blocks[0](t, context_means[0])  # not consumed: the caller's bottleneck
        for k, (up, fusion) in enumerate(zip(self.upsample_blocks, self.dec_blocks)):
            t = upsample_and_merge(t, skips[-1 - k], up.target_conv_layer)
            t = fusion(t, context_means[k + 1], consume=True)
        block, project = self.output_block.block
        return project(block.run(t, consume=True)[0])


# -------------------------------------------------------------------------- context branch
class ContextEncoderStage(nn.Module):
    def __init__(self, channels: int, convs: int, fuse_target: bool):
        super().__init__()
        self.context_conv = PairwiseModule(ResidualBlock(channels, convs))
        if fuse_target:
            self.combine_conv_context = PairwiseModule(
                nn.Conv3d(2 * channels, channels, kernel_size=1)
            )

    def target_term(self, target_skip: Tensor) -> Tensor:
        """The target half of the fusion conv, with its bias: ``[B, C, *S]``; it does not
        depend on the context, so it can be computed once per target."""
        conv = self.combine_conv_context.module
        ch = target_skip.shape[1]
        return conv_split(target_skip, conv, ch, 2 * ch, bias=True)

    def forward(self, c: Tensor, target_skip: Tensor = None, target_term: Tensor = None,
                consume: bool = False) -> Tensor:
        """c: ``[B, n, C, *S]``; target_skip: ``[B, C, *S]`` (broadcast over the n pairs), or
        its precomputed ``target_term``; consume: ``c`` is the caller's temporary (see
        :meth:`ResidualBlock.run`)."""
        flat, scratch = self.context_conv.module.run(c.flatten(0, 1), consume)
        c = flat.unflatten(0, c.shape[:2])
        if target_skip is None and target_term is None:
            return c
        conv = self.combine_conv_context.module
        ch = c.shape[2]
        term = self.target_term(target_skip) if target_term is None else target_term
        if fusable(flat, conv.weight) and flat.dtype == torch.float32:
            # GELU(c + W_c c + term) = GELU((W_c + I) c + term): no residual sum materialised
            if scratch is None and term.shape[0] == flat.shape[0]:
                fused = conv_add(flat, plus_identity(conv, 0, ch, flat), None, term)
            else:  # the term repeated for each pair (in the residual block's dead activation)
                other = torch.empty_like(flat) if scratch is None else scratch
                other.view(c.shape).copy_(term.unsqueeze(1))
                fused = conv_add_(other, flat, plus_identity(conv, 0, ch, flat), None)
        else:
            if scratch is None:
                other = (c + term.unsqueeze(1)).flatten(0, 1)
            else:
                other = scratch
                torch.add(c, term.unsqueeze(1), out=scratch.view(c.shape))
            fused = conv_add_(other, flat, split_weight(conv, 0, ch, flat), None)
        return gelu_(fused).unflatten(0, c.shape[:2])


class ContextDownsample(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.context_linear_layer = PairwiseModule(downsample_conv(c_in, c_out))


class ContextUpsample(nn.Module):
    def __init__(self, c_low: int, c_skip: int):
        super().__init__()
        self.context_conv_layer = PairwiseModule(nn.Conv3d(c_low + c_skip, c_skip, kernel_size=1))


class ContextDecoderStage(nn.Module):
    def __init__(self, channels: int, convs: int):
        super().__init__()
        self.context_conv = PairwiseModule(ResidualBlock(channels, convs))


class ContextUNet(nn.Module):
    """Context pairs ``[B, n, 2, D, H, W]`` + target skips -> context features h_0..h_{S-1}.

    h_0 is the bottleneck ``[B, n, C_{S-1}, ...]``; h_k the k-th decoder stage output.
    """

    def __init__(self, config: NetworkConfig):
        super().__init__()
        ch, convs = config.channels, config.convs_per_block
        rev = ch[::-1]
        self.context_embedding = PairwiseModule(nn.Conv3d(2, ch[0], kernel_size=1))
        self.enc_blocks = nn.ModuleList(
            ContextEncoderStage(c, convs, fuse_target=i < len(ch) - 1) for i, c in enumerate(ch)
        )
        self.downsample_blocks = nn.ModuleList(
            ContextDownsample(a, b) for a, b in zip(ch[:-1], ch[1:])
        )
        self.upsample_blocks = nn.ModuleList(ContextUpsample(a, b) for a, b in zip(rev[:-1], rev[1:]))
        self.dec_blocks = nn.ModuleList(ContextDecoderStage(c, convs) for c in rev[1:])

    def target_terms(self, target_skips: List[Tensor]) -> List[Tensor]:
        """Per encoder stage, the target's contribution to the fusion (see
        :meth:`ContextEncoderStage.target_term`): compute once per target, pass to forward."""
        return [stage.target_term(t) for stage, t in zip(self.enc_blocks, target_skips)]

    def forward(self, pairs: Tensor, target_skips: List[Tensor],
                target_terms: List[Tensor] = None) -> List[Tensor]:
        """``target_terms`` (optional): :meth:`target_terms` of ``target_skips``, to avoid
        recomputing them for every mini-context."""
        c = self.context_embedding(pairs)
        c = layout_like(c.flatten(0, 1), self.downsample_blocks[0].context_linear_layer.module)
        c = c.unflatten(0, pairs.shape[:2])
        skips = []
        terms = target_terms or [None] * len(target_skips)
        for stage, down, t_skip, term in zip(self.enc_blocks, self.downsample_blocks,
                                             target_skips, terms):
            c = stage(c, t_skip, term, consume=True)  # c: embedding or downsampled
            skips.append(c)
            c = down.context_linear_layer(c)
        c = self.enc_blocks[-1](c, consume=True)
        features = [c]
        for k, (up, stage) in enumerate(zip(self.upsample_blocks, self.dec_blocks)):
            skip = skips[-1 - k]
            low = c.flatten(0, 1)
            merged = upsample_and_merge(low, skip.flatten(0, 1), up.context_conv_layer.module)
            c = stage.context_conv.module.run(merged, consume=True)[0].unflatten(0, skip.shape[:2])
            features.append(c)
        return features


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
        """``[B, 1, D, H, W]`` -> (bottleneck, skips); run once per target."""
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
                mini_context_size: int = None) -> Tensor:
        """APSP forward: ``[B,1,D,H,W]``, ``[B,L,1,D,H,W]`` x2 -> ``[B,1,D,H,W]``.

        The context is processed in chunks of ``mini_context_size`` pairs (default: all at once)
        whose features are summed in float32 and averaged; any chunk size gives the same result.
        Context tensors may live on another device (e.g. CPU while the network is on a GPU):
        chunks are moved one at a time.
        """
        from .apsp import mean_context_features  # local: apsp imports this module

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
