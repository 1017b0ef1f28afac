"""``neuroverse3d-make-training-data OUT``: synthetic subjects from real anatomy, offline.

    neuroverse3d-make-training-data data/train --subjects 200 --seed 0 --grid 64 --voxel-size 3 \\
        --exclude-structure Putamen
    neuroverse3d-make-training-data data/heldout --subjects 20 --seed 1000   # never-trained seeds

Sources: MNI152 2009a (nilearn's wheel) and Colin27 + AAL (Debian's mricron-data). Writes
OUT/manifest.json for ``neuroverse3d-train`` and OUT/structures.json for ``neuroverse3d-eval``.

Exit codes: 0 success, 64 usage error, 66 a source is missing, 73 cannot write the output.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .. import __version__
from ..errors import ExitCode, run_with_exit_codes
from ..cli.options import add_grid_option, grid_size


def build_parser() -> argparse.ArgumentParser:
    from .dataset import SOURCES
    from .synth import KINDS

    parser = argparse.ArgumentParser(prog="neuroverse3d-make-training-data",
                                     description=__doc__.split("\n")[0].split(": ", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.split("\n")[2:]))
    parser.add_argument("--version", action="version", version=f"neuroverse3d {__version__}")
    parser.add_argument("out", type=Path, help="output folder")
    parser.add_argument("--subjects", type=int, default=50,
                        help="subjects per dataset (source x kind; default 50)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    add_grid_option(parser)
    parser.add_argument("--voxel-size", type=float, default=3.0, help="voxel size in mm (default 3)")
    parser.add_argument("--sources", nargs="+", choices=list(SOURCES), default=list(SOURCES))
    parser.add_argument("--kinds", nargs="+", choices=list(KINDS), default=list(KINDS),
                        help="t1: the warped real T1w; synth: SynthSeg-style images (default both)")
    parser.add_argument("--exclude-structure", dest="exclude", action="append", default=[],
                        metavar="NAME", help="leave a structure out entirely (e.g. Putamen; "
                        "repeatable): its voxels take the tissue class beneath")
    return parser


def run(args) -> int:
    from .dataset import make_training_data

    grid = grid_size(args.grid)  # one side (broadcast to a cube) or D H W
    start = time.perf_counter()
    manifest = make_training_data(args.out, args.subjects, args.seed, grid, args.voxel_size,
                                  args.sources, args.kinds, args.exclude)
    count = args.subjects * len(args.sources) * len(args.kinds)
    print(f"neuroverse3d-make-training-data: wrote {count} subjects in "
          f"{time.perf_counter() - start:.0f} s; manifest {manifest}")
    return ExitCode.OK


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_with_exit_codes("neuroverse3d-make-training-data", run, args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
