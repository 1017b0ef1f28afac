"""Command-line parser of ``neuroverse3d`` (BIDS-Apps convention, fMRIPrep-style groups)."""
from __future__ import annotations

import argparse
from pathlib import Path

from .. import __version__
from ..context_spec import DEFAULT_NUM_CONTEXTS, DEGRADATIONS
from .options import add_inference_options

DEFAULT_TEMPLATE = "MNI152NLin2009cAsym"


def _strip_sub(value: str) -> str:
    return value[4:] if value.startswith("sub-") else value


def _strip_ses(value: str) -> str:
    return value[4:] if value.startswith("ses-") else value


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return number


class _ExitCode64Parser(argparse.ArgumentParser):
    """argparse exits with 2 on usage errors; the BIDS-App spec (sysexits) says 64."""

    def error(self, message):
        self.print_usage()
        self.exit(64, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _ExitCode64Parser(
        prog="neuroverse3d",
        description="Neuroverse3D: 3D in-context learning on BIDS datasets. Segments any structure "
                    "or performs any generation task that a small set of example pairs (the "
                    "context) shows, without retraining.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("bids_dir", type=Path, help="the root folder of a BIDS dataset (read only)")
    parser.add_argument("output_dir", type=Path,
                        help="the output folder (a BIDS derivatives dataset is written there)")
    parser.add_argument("analysis_level", choices=["participant", "group"],
                        help="processing stage: participant (per subject) or group")
    parser.add_argument("--version", action="version", version=f"neuroverse3d {__version__}")

    bids = parser.add_argument_group("Options for filtering BIDS queries")
    bids.add_argument("--participant-label", "--participant_label", dest="participant_label",
                      nargs="+", type=_strip_sub, metavar="LABEL",
                      help="subjects to process, with or without 'sub-' (default: all)")
    bids.add_argument("--session-label", "--session_label", dest="session_label", nargs="+",
                      type=_strip_ses, metavar="LABEL", help="sessions to process (default: all)")
    bids.add_argument("--bids-filter-file", dest="bids_filters", type=Path, metavar="FILE",
                      help="JSON file of PyBIDS filters per input kind, e.g. "
                           '{"t1w": {"acquisition": "mprage"}}')
    bids.add_argument("--skip-bids-validation", "--skip_bids_validation", action="store_true",
                      help="do not run the BIDS validator on the input")

    context = parser.add_argument_group(
        "Context set", "What task the context shows and where its pairs come from. A JSON spec "
                       "(--context-spec) or the flags below; flags override the spec.")
    context.add_argument("--context-spec", type=Path, metavar="FILE",
                         help="JSON context specification (see the README)")
    context.add_argument("--labels-dataset", type=Path, metavar="DIR",
                         help="segmentation: BIDS derivatives holding the context labels")
    context.add_argument("--mask", action="append", metavar="NAME",
                         help="segment the structure of the context masks desc-NAME_mask "
                              "(repeatable)")
    context.add_argument("--dseg-label", action="append", metavar="NAME",
                         help="segment the structure NAME of the context _dseg files (named in "
                              "dseg.tsv; repeatable)")
    context.add_argument("--output-suffix", metavar="SUFFIX",
                         help="generation with explicit pairs: the context output suffix (e.g. T2w)")
    context.add_argument("--degradation", choices=DEGRADATIONS,
                         help="generation with synthetic pairs: restore this degradation")
    context.add_argument("--num-contexts", type=_positive_int, metavar="N",
                         help=f"context pairs per target (default: {DEFAULT_NUM_CONTEXTS} or the spec's)")
    context.add_argument("--context-seed", type=int, metavar="SEED",
                         help="seed of the context choice (default: 0 or the spec's)")

    workflow = parser.add_argument_group("Workflow configuration")
    workflow.add_argument("--model", type=Path, metavar="CKPT",
                          help="model checkpoint (.safetensors or the released .ckpt); default: "
                               "the model bundled with this package")
    workflow.add_argument("--template", metavar="ID",
                          help="TemplateFlow identifier of the template space (default: the "
                               f"space the model was trained in, else {DEFAULT_TEMPLATE}); "
                               "MNI152NLin2009aSym is served offline from nilearn's copy")
    workflow.add_argument("--sloppy", action="store_true",
                          help="coarse, fast registration (for testing only)")

    add_inference_options(parser)

    perf = parser.add_argument_group("Options to handle performance")
    perf.add_argument("--nprocs", "--nthreads", "--n_cpus", dest="nprocs", type=_positive_int,
                      metavar="N", help="maximum number of parallel processes (default: all CPUs)")
    perf.add_argument("--omp-nthreads", type=_positive_int, metavar="N",
                      help="maximum threads per process (default: --nprocs)")
    perf.add_argument("--use-plugin", type=Path, metavar="FILE",
                      help="Nipype plugin settings file (YAML or JSON), e.g. for SLURM or SGE")
    perf.add_argument("--stop-on-first-crash", action="store_true",
                      help="stop at the first failing node instead of running what still can")

    other = parser.add_argument_group("Other options")
    other.add_argument("-w", "--work-dir", type=Path, metavar="DIR",
                       help="working folder for intermediate results; rerun with the same folder "
                            "to reuse finished steps (default: ./work in the current folder)")
    other.add_argument("-v", "--verbose", dest="verbose_count", action="count", default=0,
                       help="more messages (repeat for more)")
    return parser
