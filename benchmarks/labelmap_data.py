"""Images and masks of real anatomy for the benchmarks: the grid label maps of
``neuroverse3d-make-labelmap-data``, with intensities drawn from one contrast."""
from __future__ import annotations

import numpy as np
import torch


def images_of(data, ids, contrast, seed: int) -> torch.Tensor:
    """``[N,D,H,W]`` normalised images of the grid label maps ``ids`` in one contrast."""
    from neuroverse_bids.anatomy.synth import subject_seed
    from neuroverse_bids.evaluation.heldout_methods import synthesize
    from neuroverse_bids.model.intensity import normalise_intensity

    return torch.stack([torch.from_numpy(normalise_intensity(synthesize(
        data.grid_labels(i), contrast, subject_seed(seed, "image", n))))
        for n, i in enumerate(ids)])


def labels_of(data, ids, codes) -> torch.Tensor:
    """``[K,N,D,H,W]`` binary masks: structure k is the union of the codes ``codes[k]``."""
    return torch.stack([torch.stack([torch.from_numpy(np.isin(data.grid_labels(i), values)
                                                      .astype(np.float32))
                                     for i in ids]) for values in codes])   # [K, N, ...]
