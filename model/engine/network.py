"""The reference network's forward, fast: the same math as :mod:`..network`, other kernels.

:class:`Engine` reads the weights of a :class:`~..network.Neuroverse3D` (already cast to the
inference dtype and device, in ``channels_last_3d``) and runs its three parts as APSP needs
them: :meth:`Engine.encode_target`, :meth:`Engine.context_features` per chunk and
:meth:`Engine.decode`. What differs from the reference forward, exactly or up to float32
rounding (``tests/test_predictor.py`` checks it against the released model's outputs):

* fused CPU kernels (:mod:`.kernels`): ``GELU(conv)``, ``conv + other`` written in place;
* a residual block may write its sum into its input (``consume``: the input is a temporary)
  and hands back its dead inner activation (``scratch``) for the caller's next sum;
* a 1x1 conv over ``cat[a, b]`` runs as two convs on the halves of its weight (split once
  here), so concatenations and the target broadcast over pairs are never materialised;
* the target's half of the context U-Net's target fusion (with the bias) depends on the
  target only: :meth:`Engine.target_terms` computes it once per target, not once per chunk;
* up-merge: ``conv1x1(cat[up(x), skip]) = up(W_x x) + W_s skip + b`` (a 1x1 conv and trilinear
  upsampling commute), so the up half runs at low resolution on fewer channels;
* float32: ``x + W x`` runs as ``(W + I) x`` (weights ``W + I`` derived once), which saves a
  residual sum (bfloat16 would round ``1 + w`` coarsely, so not there).
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from ..network import Neuroverse3D, ResidualBlock, fold_pairs
from .kernels import (CL, conv, conv_add, conv_add_, conv_gelu, embed_volume, fusable, gelu_,
                      upsample)


def _split(weight: Tensor, first: int) -> Tuple[Tensor, Tensor]:
    """A 1x1x1 conv weight's input channels ``[:first]`` and ``[first:]``, each contiguous."""
    return (weight[:, :first].contiguous(memory_format=CL),
            weight[:, first:].contiguous(memory_format=CL))


def _plus_identity(part: Tensor) -> Tensor:
    """``part + I`` of a square 1x1x1 weight, in ``part``'s strides."""
    eye = torch.eye(part.shape[0], dtype=part.dtype, device=part.device)
    return torch.add(part, eye[:, :, None, None, None],
                     out=torch.empty_like(part, memory_format=torch.preserve_format))


class Engine:
    """Fast inference forward of ``model`` (see the module doc); no gradients.

    ``model``'s weights must not change while the engine is used (the split weights are
    derived once, here).
    """

    def __init__(self, model: Neuroverse3D):
        self.model = model
        cu, td = model.context_unet, model.target_decoder
        ch = model.config.channels
        with torch.no_grad():
            self.float32 = cu.embed.weight.dtype == torch.float32
            # context U-Net target fusion, conv1x1(cat[c, t]): (W_c, W_t)
            self.target_fusion = [_split(f.weight, c) for f, c in zip(cu.target_fusion, ch)]
            # target decoder context fusion, conv1x1(cat[h, t]): (W_h, W_t)
            fusions = [td.bottleneck, *td.stages]
            self.context_fusion = [_split(f.fuse.weight, f.fuse.out_channels) for f in fusions]
            self.context_merges = [_split(up.merge.weight, c) for up, c in
                                   zip(cu.ups, ch[:0:-1])]
            self.target_merges = [_split(m.weight, c) for m, c in zip(td.merges, ch[:0:-1])]
            self.target_fusion_eye = self.context_fusion_eye = None
            if self.float32:
                self.target_fusion_eye = [_plus_identity(w_c) for w_c, _ in self.target_fusion]
                self.context_fusion_eye = [_plus_identity(w_t) for _, w_t in self.context_fusion]

    # ------------------------------------------------------------------------- blocks
    @staticmethod
    def residual(block: ResidualBlock, x: Tensor, consume: bool = False):
        """``(GELU(x + convs(x)), scratch)``.

        consume: ``x`` is the caller's temporary, so where fused kernels run the sum is
        written into it. scratch: a dead activation of ``x``'s shape and layout (the inner
        convolutions' output) that the caller may overwrite, or None.
        """
        convs = block.convs
        if not fusable(x, convs[0].weight):
            return block(x), None
        y = x
        for inner in convs[:-1]:
            y = conv_gelu(y, inner.weight, inner.bias)
        last = convs[-1]
        if y is x:  # a single conv reads x while the sum would overwrite it
            return gelu_(conv_add(x, last.weight, last.bias, x, padding=1)), None
        if consume:
            return gelu_(conv_add_(x, y, last.weight, last.bias, padding=1)), y
        return gelu_(conv_add(y, last.weight, last.bias, x, padding=1)), y

    @staticmethod
    def up_merge(x: Tensor, skip: Tensor, weights: Tuple[Tensor, Tensor], bias) -> Tensor:
        """``conv1x1(cat[up(x), skip])``: x ``[N, C_{i+1}, d, h, w]``, skip ``[N, C_i, 2d, ...]``
        -> ``[N, C_i, 2d, 2h, 2w]``; the up half of the conv runs before upsampling (8x fewer
        FLOPs, half the upsampling work and memory)."""
        w_up, w_skip = weights
        return conv_add_(upsample(conv(x, w_up, None)), skip, w_skip, bias)

    def _fuse_target(self, stage: int, c: Tensor, scratch: Optional[Tensor], term: Tensor,
                     pairs: int) -> Tensor:
        """``GELU(c + W_c c + term)``: c ``[B*n, C, *S]``, term ``[B, C, *S]`` (repeated over the
        n pairs, in the residual block's dead ``scratch`` when there is one)."""
        w_c = self.target_fusion[stage][0]
        by_pair = (-1, pairs, *c.shape[1:])
        if fusable(c, w_c) and self.float32:  # (W_c + I) c + term: no residual sum
            eye = self.target_fusion_eye[stage]
            if scratch is None and term.shape[0] == c.shape[0]:
                return gelu_(conv_add(c, eye, None, term))
            other = torch.empty_like(c) if scratch is None else scratch
            other.view(by_pair).copy_(term.unsqueeze(1))
            return gelu_(conv_add_(other, c, eye, None))
        if scratch is None:
            other = (c.view(by_pair) + term.unsqueeze(1)).flatten(0, 1)
        else:
            other = scratch
            torch.add(c.view(by_pair), term.unsqueeze(1), out=scratch.view(by_pair))
        return gelu_(conv_add_(other, c, w_c, None))

    def _fuse_context(self, level: int, t: Tensor, mean: Tensor, consume: bool) -> Tensor:
        """Residual block, then ``GELU(t + W_h mean + W_t t + b)``: t, mean ``[B, C, *S]``."""
        td = self.model.target_decoder
        fusion = td.bottleneck if level == 0 else td.stages[level - 1]
        t, scratch = self.residual(fusion.block, t, consume)
        (w_h, w_t), bias = self.context_fusion[level], fusion.fuse.bias
        if scratch is not None:  # written into the residual block's dead activation
            scratch.copy_(t)
            conv_add_(scratch, mean, w_h, bias)
            return gelu_(conv_add_(scratch, t, w_t, None))
        if fusable(t, w_t) and self.float32:  # t folded into the weight
            return gelu_(conv_add_(conv(mean, w_h, bias), t, self.context_fusion_eye[level],
                                   None))
        return gelu_(conv_add_(t + conv(mean, w_h, None), t, w_t, bias))

    # ---------------------------------------------------------------------- the parts
    def encode_target(self, target: Tensor):
        """``[B, 1, D, H, W]`` -> (bottleneck, skips t_0..t_{S-2}), channels-last."""
        te = self.model.target_encoder
        t = embed_volume(target, te.embed.weight, te.embed.bias)
        skips = []
        for block, down in zip(te.blocks, te.downs):
            t = self.residual(block, t, consume=True)[0]  # t: embedding or downsampled
            skips.append(t)
            t = down(t)
        return t, skips

    def target_terms(self, target_skips: List[Tensor]) -> List[Tensor]:
        """Per context encoder stage, the target's share of the target fusion with its bias,
        ``W_t t_i + b`` ``[B, C_i, ...]``: once per target, for every chunk."""
        fusions = self.model.context_unet.target_fusion
        return [conv(t, w_t, f.bias) for t, f, (_, w_t) in
                zip(target_skips, fusions, self.target_fusion)]

    def context_features(self, pairs: Tensor, target_terms: List[Tensor]) -> List[Tensor]:
        """One chunk: pairs ``[B, n, 2, D, H, W]`` -> features h_0..h_{S-1} ``[B, n, C, ...]``."""
        cu = self.model.context_unet
        n = pairs.shape[1]
        c = conv(fold_pairs(pairs), cu.embed.weight, cu.embed.bias).contiguous(memory_format=CL)
        skips = []
        for stage, (block, down, term) in enumerate(zip(cu.blocks, cu.downs, target_terms)):
            c, scratch = self.residual(block, c, consume=True)  # c: embedding or downsampled
            c = self._fuse_target(stage, c, scratch, term, n)
            del scratch
            skips.append(c)
            c = down(c)
        c = self.residual(cu.bottleneck, c, consume=True)[0]
        features = [c]
        for up, weights in zip(cu.ups, self.context_merges):
            merged = self.up_merge(c, skips.pop(), weights, up.merge.bias)  # the skip's last use
            c = self.residual(up.block, merged, consume=True)[0]
            features.append(c)
        return [fold_pairs(h, n) for h in features]

    def decode(self, bottleneck: Tensor, skips: List[Tensor], means: List[Tensor]) -> Tensor:
        """Target decoder on the mean context features -> ``[B, 1, D, H, W]``. ``bottleneck`` and
        ``skips`` are left intact (several structures decode from them)."""
        td = self.model.target_decoder
        t = self._fuse_context(0, bottleneck, means[0], consume=False)
        for level, (skip, weights, merge) in enumerate(
                zip(reversed(skips), self.target_merges, td.merges), start=1):
            t = self.up_merge(t, skip, weights, merge.bias)
            t = self._fuse_context(level, t, means[level], consume=True)
        return td.head(self.residual(td.output, t, consume=True)[0])
