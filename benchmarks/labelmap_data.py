"""Images and masks of real anatomy for the benchmarks: the grid label maps of
``neuroverse3d-make-labelmap-data``, with intensities drawn from one contrast."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch


def common_arguments(parser: argparse.ArgumentParser, out: str) -> argparse.ArgumentParser:
    """The data, model and output options every label-map benchmark takes."""
    parser.add_argument("--labelmaps", type=Path, required=True,
                        help="output folder of neuroverse3d-make-labelmap-data")
    parser.add_argument("--native", type=Path, required=True,
                        help="the native label maps it was built from")
    parser.add_argument("--model", type=Path, default=None, help="default: the bundled model")
    parser.add_argument("--precision", default="float32")
    parser.add_argument("--out", type=Path, default=Path(out),
                        help="result files without extension (.json and .md are written)")
    return parser


def write_result(out: Path, data, text: str):
    """``<out>.json`` (the measurements) and ``<out>.md`` (the table); prints the table."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(data, indent=1) + "\n")
    out.with_suffix(".md").write_text(text.rstrip() + "\n")
    print(text)


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


def run_measured(args, measure, markdown):
    """``measure(args, save=...)``, writing ``<args.out>.json/.md`` after each step it saves
    (a long run keeps what it measured) and at the end."""
    result = measure(args, save=lambda partial: write_result(args.out, partial, markdown(partial)))
    write_result(args.out, result, markdown(result))


def segmentation_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Context size, selection and seeds of the label-map segmentation benchmarks."""
    parser.add_argument("--size", type=int, default=8, help="context size L")
    parser.add_argument("--selection", default="random")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    return parser
