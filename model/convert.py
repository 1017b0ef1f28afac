"""``neuroverse3d-convert``: write a released checkpoint in the project's safetensors format."""
from __future__ import annotations

import argparse
import sys

from .checkpoint import RELEASED_GRID, CheckpointError, convert_released
from .exit_codes import ExitCode


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="neuroverse3d-convert",
        description="Convert the authors' neuroverse3D.ckpt (Lightning) into a .safetensors file "
                    "with architecture and grid metadata, loadable with --model.",
    )
    parser.add_argument("source", help="released checkpoint (e.g. neuroverse3D.ckpt)")
    parser.add_argument("destination", help="output file (e.g. neuroverse3D.safetensors)")
    parser.add_argument("--grid-shape", type=int, nargs=3, default=RELEASED_GRID["shape"],
                        metavar=("X", "Y", "Z"), help="input grid the model expects (voxels)")
    parser.add_argument("--voxel-size", type=float, default=RELEASED_GRID["voxel_size_mm"],
                        help="voxel size of that grid in mm")
    args = parser.parse_args(argv)
    grid = dict(RELEASED_GRID, shape=list(args.grid_shape), voxel_size_mm=args.voxel_size)
    try:
        out = convert_released(args.source, args.destination, grid=grid)
    except CheckpointError as error:
        print(f"neuroverse3d-convert: error: {error}", file=sys.stderr)
        return error.exit_code
    print(f"wrote {out}")
    return ExitCode.OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
