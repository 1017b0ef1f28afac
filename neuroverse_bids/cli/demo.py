"""``neuroverse3d-demo OUT``: the main job end to end on synthetic data, offline.

Writes the demo BIDS dataset (``neuroverse3d-demo-data``) to OUT/data, runs
``neuroverse3d OUT/data/bids OUT/neuroverse3d participant`` on every subject (each target's
context pairs come from the other subjects' labels in OUT/data/derivatives/labels), then the
``group`` level, and prints where the outputs and reports are. Uses the bundled default
model unless ``--model`` is given; templates come from OUT/data/templateflow.

Exit codes: those of ``neuroverse3d`` (0 success, 64 usage, 73 cannot write, ...).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from .. import __version__
from ..errors import ExitCode, run_with_exit_codes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="neuroverse3d-demo", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.split("\n")[2:]))
    parser.add_argument("--version", action="version", version=f"neuroverse3d {__version__}")
    parser.add_argument("out", type=Path, help="output folder (data, derivatives, work dir)")
    parser.add_argument("--subjects", type=int, default=4,
                        help="subjects, at least 2 (default 4); each is segmented with "
                             "min(3, subjects - 1) of the others as contexts")
    parser.add_argument("--voxel-size", type=float, default=2.0,
                        help="native voxel size in mm (default 2.0)")
    parser.add_argument("--model", type=Path, help="checkpoint (default: the bundled model)")
    parser.add_argument("--nprocs", type=int,
                        help="processes for the workflow (default: the app's, all CPUs)")
    parser.add_argument("--sloppy", action="store_true", help="fast, coarse registration")
    return parser


def run(args) -> int:
    from ..demo import make_demo_dataset
    from .run import main as app

    start = time.perf_counter()
    out = args.out.absolute()
    data = make_demo_dataset(out / "data", subjects=args.subjects, voxel_size=args.voxel_size,
                             overwrite=True)
    # the demo's own TemplateFlow home: nothing is written to the user's cache
    os.environ["TEMPLATEFLOW_HOME"] = str(data / "templateflow")
    derivatives = out / "neuroverse3d"
    common = [str(data / "bids"), str(derivatives)]
    participant = [*common, "participant", "--context-spec", str(data / "context-spec.json"),
                   "-w", str(out / "work")]
    participant += ["--nprocs", str(args.nprocs)] if args.nprocs else []
    participant += ["--model", str(args.model)] if args.model else []
    participant += ["--sloppy"] if args.sloppy else []
    for argv in (participant, [*common, "group"]):
        code = app(argv)
        if code != ExitCode.OK:
            return code
    reports = sorted(derivatives.glob("sub-*.html"))
    print(f"\nneuroverse3d-demo: done in {time.perf_counter() - start:.0f} s\n"
          f"  input dataset:  {data / 'bids'}\n"
          f"  derivatives:    {derivatives}\n"
          f"  subject reports: {', '.join(str(r) for r in reports)}\n"
          f"  group report:   {derivatives / 'group.html'}\n"
          f"  volumes table:  {derivatives / 'group_volumes.tsv'}\n"
          f"  true labels:    {data / 'derivatives' / 'labels'}")
    return ExitCode.OK


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_with_exit_codes("neuroverse3d-demo", run, args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
