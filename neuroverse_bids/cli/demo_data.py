"""``neuroverse3d-demo-data OUT``: write a small synthetic BIDS dataset for demos and tests.

Writes OUT/bids (raw T1w), OUT/derivatives/labels (brain masks, GM/WM dseg), OUT/templateflow
(a TEMPLATEFLOW_HOME with MNI152NLin2009aSym), OUT/context-spec.json and
OUT/sourcedata/demo_truth.json, all offline from files shipped with nilearn. The spec's
``num_contexts`` is min(3, subjects - 1), so the participant level runs on every subject.

Exit codes: 0 success, 64 usage error, 73 cannot write the output.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import __version__
from ..errors import ExitCode, run_with_exit_codes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="neuroverse3d-demo-data",
        description="Write a synthetic BIDS dataset (subjects made from the MNI152 2009a "
                    "template by the training data's subject generator: random pose, smooth "
                    "deformation, bias, noise) with labels, "
                    "a TemplateFlow home and a context spec. Runs offline.")
    parser.add_argument("--version", action="version", version=f"neuroverse3d {__version__}")
    parser.add_argument("out", type=Path, help="output folder")
    parser.add_argument("--subjects", type=int, default=4,
                        help="number of subjects, at least 2: each subject's contexts are the "
                             "others, and the spec asks for min(3, subjects - 1) (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--voxel-size", type=float, default=2.0,
                        help="native voxel size in mm (default 2.0; 1.0 is realistic but slower)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace OUT/bids and OUT/derivatives/labels if they exist")
    return parser


def run(args) -> int:
    from ..demo import make_demo_dataset

    path = make_demo_dataset(args.out, subjects=args.subjects, seed=args.seed,
                             voxel_size=args.voxel_size, overwrite=args.overwrite)
    print(f"neuroverse3d-demo-data: wrote {args.subjects} subjects to {path}; use "
          f"TEMPLATEFLOW_HOME={path / 'templateflow'} and --context-spec "
          f"{path / 'context-spec.json'}")
    return ExitCode.OK


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_with_exit_codes("neuroverse3d-demo-data", run, args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
