"""The fast inference engine beside the reference network; ``Predictor`` is its one user.

* :mod:`.network` - :class:`Engine`: the reference network's forward with fused CPU kernels,
  ``channels_last_3d``, in-place sums and target terms computed once per target;
* :mod:`.kernels` - the oneDNN fused convolutions and the bfloat16 3-pass upsampling;
* :mod:`.precision` - device and precision policy (``auto``: bfloat16 only where it agrees
  with float32), with the per-checkpoint cache of the bfloat16 self-check;
* :mod:`.memory` - the memory budget, the traced peak and the CPU heap setting.

The APSP chunk loop and its float32 accumulator are shared with training (:mod:`..apsp`).
"""
from .network import Engine

__all__ = ["Engine"]
