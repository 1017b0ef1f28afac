"""Command-line parser of ``neuroverse3d`` (BIDS-Apps convention, fMRIPrep-style groups).

``--help``, ``--version`` and usage errors must not import torch, nibabel or Nipype (seconds
on a cold file system): this module imports none of them. The choices that live in torch
modules are spelled here; ``tests/test_fail_safe_run.py`` checks them against their registries
(and a spec's values are checked against the registries again when a run starts).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .. import __version__
from ..model.spaces import DEFAULT_TEMPLATE, OFFLINE_TEMPLATE
from ..model.strategies import strategies
from .boutiques import BoutiquesAction
from .options import ExitCode64Parser, add_inference_options, memory_size, positive_int

#: ``context_spec.DEFAULT_NUM_CONTEXTS``
DEFAULT_NUM_CONTEXTS = 8
#: the names of ``model.degradations.DEGRADATIONS`` (a torch module; a test checks them)
DEGRADATIONS = ("bias-field", "gaussian-noise", "salt-pepper", "inpainting", "downsample-x2")


def _strip_sub(value: str) -> str:
    return value[4:] if value.startswith("sub-") else value


def _strip_ses(value: str) -> str:
    return value[4:] if value.startswith("ses-") else value


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where there is one and the help does not already say it."""

    def _get_help_string(self, action):
        if action.default in (None, False, 0, argparse.SUPPRESS) or \
                "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = ExitCode64Parser(
        prog="neuroverse3d",
        description="Neuroverse3D: 3D in-context learning on BIDS datasets. Segments any structure "
                    "or performs any generation task that a small set of example pairs (the "
                    "context) shows, without retraining.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("bids_dir", type=Path, help="the root folder of a BIDS dataset (read only)")
    parser.add_argument("output_dir", type=Path,
                        help="the output folder (a BIDS derivatives dataset is written there)")
    parser.add_argument("analysis_level", choices=["participant", "group"],
                        help="processing stage: participant (per subject) or group")
    parser.add_argument("--version", action="version", version=f"neuroverse3d {__version__}")
    parser.add_argument("--boutiques", action=BoutiquesAction)

    bids = parser.add_argument_group("Options for filtering BIDS queries")
    bids.add_argument("--participant-label", "--participant_label", dest="participant_label",
                      nargs="+", type=_strip_sub, metavar="LABEL",
                      help="subjects to process, with or without 'sub-' (default: all)")
    bids.add_argument("--participant-label-file", type=Path, metavar="FILE",
                      help="a text file of subjects to process, one label a line ('sub-' "
                           "optional, '#' starts a comment); added to --participant-label")
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
    context.add_argument("--num-contexts", type=positive_int, metavar="N",
                         help=f"context pairs per target (default: {DEFAULT_NUM_CONTEXTS} or the spec's)")
    context.add_argument("--context-seed", type=int, metavar="SEED",
                         help="seed of the context choice (and of the run's other random "
                              "choices); wins over --random-seed and the spec's seed "
                              "(default: --random-seed, else the spec's, else 0)")

    ensemble = parser.add_argument_group(
        "Context selection and ensembles", "Which pool subjects each target gets as context, "
        "and how many predictions are averaged (their spread is written as an uncertainty map).")
    ensemble.add_argument("--context-selection", choices=tuple(strategies()),
                          help="; ".join(f"{s.name}: {s.summary}" for s in strategies().values())
                               + " (default: random, or the spec's \"selection\")")
    ensemble.add_argument("--ensemble", type=positive_int, metavar="K",
                          help="average K predictions from K distinct context sets and write "
                               "their per-voxel standard deviation (desc-spread) (default: 1, "
                               "or the spec's \"ensemble\")")

    derivatives = parser.add_argument_group(
        "Derivatives and the context cache", "Datasets a context spec can name, and where the "
        "registered context set is kept for later runs and the other jobs of an array.")
    derivatives.add_argument("-d", "--derivatives", action="append", metavar="NAME=PATH",
                             help="a derivatives dataset (e.g. fmriprep=/data/derivatives/"
                                  "fmriprep), referred to by NAME in the spec's \"dataset\" "
                                  "(repeatable)")
    derivatives.add_argument("--context-cache", type=Path, metavar="DIR",
                             help="folder of the context cache (default: "
                                  "<output_dir>/cache/context-sets); share it between jobs")
    derivatives.add_argument("--context-cache-max-gb", type=float, metavar="GB",
                             help="size limit of the context cache: the least recently used "
                                  "entries that no live run uses are removed (inf: no limit; "
                                  "default: $NEUROVERSE3D_CONTEXT_CACHE_MAX_GB, else 5); see "
                                  "neuroverse3d-cache")
    derivatives.add_argument("--icl-mem", dest="icl_mem_gb", type=memory_size, metavar="SIZE",
                             help="memory budget of each in-context prediction (8GB, 8000 = "
                                  "MB; default: the predictor's plan for the model grid)")

    workflow = parser.add_argument_group("Workflow configuration")
    workflow.add_argument("--model", type=Path, metavar="CKPT",
                          help="model checkpoint (.safetensors or the released .ckpt); default: "
                               "the model bundled with this package")
    workflow.add_argument("--template", metavar="ID",
                          help="TemplateFlow identifier of the template space (default: the "
                               f"space the model was trained in, else {DEFAULT_TEMPLATE}); "
                               f"{OFFLINE_TEMPLATE} is served offline from nilearn's copy")
    workflow.add_argument("--sloppy", action="store_true",
                          help="coarse, fast registration (for testing only)")
    workflow.add_argument("--random-seed", type=int, metavar="SEED",
                          help="seed of every random choice of the run: the context choice, "
                               "the synthetic degradations, the registration's metric sampling "
                               "(--context-seed, if given, wins; default: the spec's seed, else 0)")

    add_inference_options(parser)

    group = parser.add_argument_group("Group level")
    group.add_argument("--self-evaluation", choices=("auto", "on", "off"), default="auto",
                       help="segment each labelled subject of the context pool from the others "
                            "and write the expected Dice per structure (self_evaluation.tsv, "
                            "first in group.html), then predict each image's Dice "
                            "(quality.tsv) and write calibrated probability maps; auto: for "
                            "pools of up to 20 labelled subjects (one prediction each)")
    group.add_argument("--suggest-labels", type=positive_int, default=0, metavar="N",
                       help="rank the unlabelled participants by the expected gain of labelling "
                            "them (low predicted quality, far from the labelled subjects) and "
                            "write the best N to suggest_labels.tsv and group.html")

    perf = parser.add_argument_group("Options to handle performance")
    perf.add_argument("--nprocs", "--nthreads", "--n_cpus", dest="nprocs", type=positive_int,
                      metavar="N", help="maximum number of parallel processes (default: all CPUs)")
    perf.add_argument("--omp-nthreads", type=positive_int, metavar="N",
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
                       help="console: -v adds the app's and Nipype's INFO messages, -vv DEBUG "
                            "(the run's log file in logs/ always has them)")
    other.add_argument("--reports-only", action="store_true",
                       help="only rebuild the reports in output_dir (subject pages and, if "
                            "made before, the group page) from what the run saved there; "
                            "nothing else runs")
    other.add_argument("--config-file", type=Path, metavar="FILE",
                       help="rerun with the arguments a run saved in "
                            "<output_dir>/logs/neuroverse3d_<run id>_config.json; the flags "
                            "given here override them, the positional arguments may be omitted")
    return parser
