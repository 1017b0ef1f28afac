"""CPU kernels of the engine: fused oneDNN convolutions and bfloat16 upsampling.

oneDNN's fused ops (``torch.ops.mkldnn._convolution_pointwise``) compute ``GELU(conv(x))``
or ``conv(x) + other`` (also in place, into ``other``) in one pass over the output. They
apply to CPU inference in float32/bfloat16 on ``channels_last_3d`` tensors
(:func:`fusable`); everywhere else every function here runs the plain torch ops with the
same result.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

CL = torch.channels_last_3d


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
    """True where the fused kernels apply: CPU inference in float32/bfloat16 on a
    ``channels_last_3d`` ``x``, with ``weight`` of ``x``'s dtype (under ``torch.autocast`` a
    bfloat16 ``x`` meets float32 weights: plain ops then)."""
    return (_POINTWISE is not None and x.device.type == "cpu" and not torch.is_grad_enabled()
            and x.dtype in (torch.float32, torch.bfloat16) and weight.dtype == x.dtype
            and x.dim() == 5 and x.is_contiguous(memory_format=CL))


def _geometry(padding: int):
    return [padding] * 3, [1] * 3, [1] * 3, 1  # padding, stride, dilation, groups


def conv(x: Tensor, weight: Tensor, bias: Optional[Tensor], padding: int = 0) -> Tensor:
    """``conv3d(x, weight, bias)`` (stride 1); output channels-last where fused."""
    if fusable(x, weight):  # aten may pick a slow GEMM path for a 1x1x1 conv here
        return _POINTWISE(x, weight, bias, *_geometry(padding), "none", [], "")
    return F.conv3d(x, weight, bias, padding=padding)


def conv_gelu(x: Tensor, weight: Tensor, bias: Optional[Tensor], padding: int = 1) -> Tensor:
    """``GELU(conv3d(x, weight, bias))``."""
    if fusable(x, weight):
        return _POINTWISE(x, weight, bias, *_geometry(padding), "gelu", [], "none")
    return F.gelu(F.conv3d(x, weight, bias, padding=padding))


def conv_add(x: Tensor, weight: Tensor, bias: Optional[Tensor], other: Tensor,
             padding: int = 0) -> Tensor:
    """``conv3d(x, weight, bias) + other`` (``other`` of the output's shape)."""
    if fusable(x, weight) and other.dtype == x.dtype and other.shape[0] == x.shape[0]:
        return _POINTWISE.binary(x, other, weight, bias, *_geometry(padding), "add", 1.0, None,
                                 [], None)
    return F.conv3d(x, weight, bias, padding=padding) + other


def conv_add_(other: Tensor, x: Tensor, weight: Tensor, bias: Optional[Tensor],
              padding: int = 0) -> Tensor:
    """``other += conv3d(x, weight, bias)`` in place; returns ``other`` (a temporary of the
    caller's: one activation fewer allocated)."""
    if (fusable(x, weight) and other.dtype == x.dtype and other.shape[0] == x.shape[0]
            and other.is_contiguous(memory_format=CL)):
        return _POINTWISE_INPLACE(other, x, weight, bias, *_geometry(padding), "add", 1.0,
                                  None, [], None)
    return other.add_(F.conv3d(x, weight, bias, padding=padding))


def gelu_(x: Tensor) -> Tensor:
    """Exact GELU in place (``x`` is a temporary of the caller's)."""
    return torch.ops.aten.gelu_(x)


def embed_volume(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """1x1x1 conv of a 1-channel volume ``[B, 1, *S]`` -> ``[B, C, *S]`` channels-last.

    Where fused kernels apply it is one ``bias + x * w`` written straight into a channels-last
    tensor (oneDNN runs a 1-input-channel conv in the default layout, slowly, and its output
    would then need a layout change)."""
    if fusable(x, weight) and x.shape[1] == 1:
        out = torch.empty((x.shape[0], weight.shape[0], *x.shape[2:]), dtype=x.dtype,
                          device=x.device, memory_format=CL)
        shape = (1, -1, 1, 1, 1)
        return torch.addcmul(bias.view(shape), x, weight.view(shape), out=out)
    return F.conv3d(x, weight, bias).contiguous(memory_format=CL)


def upsample(x: Tensor) -> Tensor:
    """Trilinear x2 (align_corners=False) on ``[N, C, D, H, W]``.

    bfloat16 channels-last on the CPU: three 1D passes (W, H, then D), faster than torch's
    kernel there and equal to it up to bfloat16 rounding; elsewhere torch's kernel.
    """
    if (x.dtype == torch.bfloat16 and x.device.type == "cpu" and x.dim() == 5
            and x.is_contiguous(memory_format=CL)):
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
    out = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=CL)
    pairs = out.unflatten(dim, (n, 2))
    even, odd = pairs.select(dim + 1, 0), pairs.select(dim + 1, 1)
    head, tail = x.narrow(dim, 0, n - 1), x.narrow(dim, 1, n - 1)
    torch.lerp(tail, head, 0.25, out=even.narrow(dim, 1, n - 1))
    torch.lerp(head, tail, 0.25, out=odd.narrow(dim, 0, n - 1))
    even.narrow(dim, 0, 1).copy_(x.narrow(dim, 0, 1))
    odd.narrow(dim, n - 1, 1).copy_(x.narrow(dim, n - 1, 1))
    return out
