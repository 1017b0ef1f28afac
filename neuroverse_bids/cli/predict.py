"""``neuroverse3d-predict``: run the model on one target volume with explicit context pairs.

All volumes must already be on one grid (same shape, each size divisible by the model's
divisor, 16 for the released model): no resampling is done here. Images are normalised
(0.5-99.5 percentile clip, min-max to [0, 1]); labels are used as given (masks in {0, 1}).
The output keeps the target's header and affine; segmentation is thresholded at 0.5.
Every file is checked before any work; context pairs are then read one chunk at a time.

Exit codes: 0 ok, 64 usage error, 65 bad input data, 66 missing input, 73 cannot write output.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import EXIT_OK, NeuroverseError, run_with_exit_codes
from ..model import load_checkpoint
from ..model.intensity import normalise_intensity
from ..model.predictor import Predictor
from ..workflows.niftiio import load_volume, write_nifti_atomic
from .options import add_inference_options, inference_settings


class ContextFiles:
    """Context volumes read from their files when the predictor reaches their pair, so that
    memory stays flat in the number of contexts. Images are normalised; labels as given."""

    def __init__(self, paths, labels: bool):
        self.paths, self.labels = list(paths), labels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> np.ndarray:
        _, data = load_volume(self.paths[index])
        return data.astype(np.float32) if self.labels else normalise_intensity(data)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="neuroverse3d-predict",
        description="Neuroverse3D in-context prediction for one target volume.",
    )
    parser.add_argument("--version", action="version", version=f"neuroverse3d {__version__}")
    io = parser.add_argument_group("Inputs and outputs")
    io.add_argument("--model", required=True, type=Path, help="checkpoint (.ckpt or .safetensors)")
    io.add_argument("--target", required=True, type=Path, help="target volume (NIfTI)")
    io.add_argument("--context-images", required=True, nargs="+", type=Path, metavar="IMG",
                    help="context input volumes")
    io.add_argument("--context-labels", required=True, nargs="+", type=Path, metavar="LAB",
                    help="context output volumes, one per context image (masks for segmentation)")
    io.add_argument("--output", required=True, type=Path, help="output NIfTI path")
    io.add_argument("--task", choices=("seg", "gen"), default="seg",
                    help="seg: threshold the output at 0.5 (uint8 mask); gen: write float32")
    add_inference_options(parser)
    return parser


def run(args) -> int:
    if len(args.context_images) != len(args.context_labels):
        raise NeuroverseError(
            f"{len(args.context_images)} context images but {len(args.context_labels)} context "
            "labels: give one label volume per context image, in the same order", exit_code=64)
    settings = inference_settings(args)
    model = load_checkpoint(args.model)
    target_img, target = load_volume(args.target)
    shape, divisor = target.shape, model.divisor
    if any(s % divisor for s in shape):
        raise NeuroverseError(f"{args.target}: shape {shape} is not divisible by {divisor}; pad or "
                              f"resample the volumes to a multiple of {divisor}", exit_code=65)
    for path in [*args.context_images, *args.context_labels]:  # every file, before any work
        _, data = load_volume(path)
        if data.shape != shape:
            raise NeuroverseError(f"{path}: shape {data.shape} differs from the target "
                                  f"{args.target} {shape}; resample all volumes to one grid "
                                  "first", exit_code=65)
        del data
    import torch

    predictor = Predictor(model, **settings)
    out = predictor.predict(torch.from_numpy(normalise_intensity(target)),
                            ContextFiles(args.context_images, labels=False),
                            ContextFiles(args.context_labels, labels=True))
    result = out.numpy()
    if args.task == "seg":
        result = (result > 0.5).astype(np.uint8)
    write_nifti_atomic(result, target_img, args.output)
    print(f"wrote {args.output}")
    return EXIT_OK


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_with_exit_codes("neuroverse3d-predict", run, args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
