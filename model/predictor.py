"""The one place inference happens: device, precision, memory layout and APSP chunking.

>>> predictor = Predictor(load_checkpoint("model.safetensors"), device="auto", precision="auto")
>>> out = predictor.predict(target, context_images, context_labels)   # [D,H,W] tensors

``context_labels`` may hold K label sets over the same context images (``[K, L, D, H, W]``):
the target is encoded once and the K structures are decoded as one batch.
"""
from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor

from .apsp import mean_context_features
from .network import Neuroverse3D, check_inputs

PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> first CUDA device when present, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    return resolved


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """``auto`` picks bfloat16 where the hardware runs it natively, else float32."""
    if precision == "auto":
        return torch.bfloat16 if native_bfloat16(device) else torch.float32
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be auto, {', '.join(PRECISIONS)}; got {precision!r}")
    if precision == "float16" and device.type != "cuda":
        raise ValueError("float16 is supported on CUDA only; use bfloat16 or float32 on the CPU")
    return PRECISIONS[precision]


def native_bfloat16(device: torch.device) -> bool:
    """True where bfloat16 convolutions run in hardware (CPU: AMX/AVX512-BF16; CUDA: sm80+)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        with open("/proc/cpuinfo") as handle:
            flags = handle.read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


class Predictor:
    """Run a :class:`Neuroverse3D` on volumes, fast and within memory.

    device: ``auto|cpu|cuda[:N]``; precision: ``auto|float32|bfloat16|float16``;
    mini_context_size: pairs per chunk (``None`` = all at once).
    """

    def __init__(self, model: Neuroverse3D, device: str = "auto", precision: str = "float32",
                 mini_context_size: Optional[Union[int, str]] = None):
        self.device = resolve_device(device)
        self.dtype = resolve_precision(precision, self.device)
        self.mini_context_size = mini_context_size
        self.metadata = getattr(model, "metadata", {})
        self.model = model.to(self.device, self.dtype).eval()
        self.model = self.model.to(memory_format=torch.channels_last_3d)

    @property
    def precision(self) -> str:
        return str(self.dtype).replace("torch.", "")

    def _to_model(self, volume: Tensor) -> Tensor:
        """``[N, 1, D, H, W]`` -> device, dtype and channels_last_3d layout."""
        return volume.to(self.device, self.dtype).contiguous(memory_format=torch.channels_last_3d)

    @torch.inference_mode()
    def predict(self, target: Tensor, context_images: Tensor, context_labels: Tensor,
                mini_context_size: Optional[int] = None) -> Tensor:
        """target ``[D,H,W]``, context_images ``[L,D,H,W]``, context_labels ``[L,D,H,W]`` or
        ``[K,L,D,H,W]`` (K structures) -> float32 CPU tensor ``[D,H,W]`` or ``[K,D,H,W]``."""
        single = context_labels.dim() == 4
        labels = context_labels.unsqueeze(0) if single else context_labels
        structures, pairs = labels.shape[:2]
        target_in = torch.as_tensor(target, dtype=torch.float32)[None, None]
        context_in = torch.as_tensor(context_images, dtype=torch.float32)[None, :, None]
        context_out = torch.as_tensor(labels, dtype=torch.float32)[:, :, None]
        check_inputs(target_in, context_in.expand(1, pairs, *context_in.shape[2:]),
                     context_out[:1], self.model.divisor)
        chunk = mini_context_size or self.mini_context_size
        chunk = None if chunk in (None, "auto") else int(chunk)

        bottleneck, skips = self.model.encode_target(self._to_model(target_in))
        bottleneck = bottleneck.expand(structures, *bottleneck.shape[1:])
        skips = [s.expand(structures, *s.shape[1:]) for s in skips]
        context_in = context_in.expand(structures, *context_in.shape[1:])
        means = mean_context_features(self.model, context_in, context_out, skips, chunk)
        out = self.model.decode(bottleneck, skips, means).float().cpu()[:, 0]
        return out[0] if single else out
