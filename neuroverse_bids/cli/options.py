"""Command-line pieces shared by the programs: the exit-64 parser, argument types and the
inference options of ``neuroverse3d`` and ``neuroverse3d-predict``."""
from __future__ import annotations

import argparse

from ..model.exit_codes import ExitCode
from ..model.options import InferenceOptions, Precision


class ExitCode64Parser(argparse.ArgumentParser):
    """argparse exits with 2 on usage errors; the BIDS-App spec (sysexits) says 64."""

    def error(self, message):
        self.print_usage()
        self.exit(ExitCode.USAGE, f"{self.prog}: error: {message}\n")


def positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return number


def mini_context_size(value: str):
    if value == "auto":
        return value
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {value!r}")
    if number < 1:
        raise argparse.ArgumentTypeError("mini-context size must be >= 1")
    return number


def positive_float(value: str) -> float:
    number = float(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value!r}")
    return number


_UNITS = {"": 1 / 1024, "k": 1 / 1024 ** 2, "m": 1 / 1024, "g": 1.0, "t": 1024.0}


def memory_size(value: str) -> float:
    """A memory size in GB from ``8GB``, ``8G``, ``512MB``, ``1.5T`` or a plain number of MB
    (``8000``, as fMRIPrep's ``--mem``)."""
    import re

    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgGtT]?)(?:i?[bB])?\s*", str(value))
    if not match or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"expected a memory size such as 8GB, 16G, 512MB or "
                                         f"8000 (MB), got {value!r}")
    gigabytes = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if not match.group(2) and gigabytes < 0.25:
        raise argparse.ArgumentTypeError(f"{value!r} is read as {value} MB (a plain number is MB, "
                                         f"as in fMRIPrep); write {value}GB for gigabytes")
    return gigabytes


def add_grid_option(parser: argparse.ArgumentParser) -> None:
    """``--grid``: the model grid's size in voxels, one side (a cube) or D H W."""
    parser.add_argument("--grid", type=int, nargs="+", default=[64],
                        help="grid voxels: one side or D H W (default 64; e.g. 72 88 72)")


def grid_size(values) -> list:
    """The parsed ``--grid`` values (1 or 3 sizes), else a usage error (exit 64)."""
    from ..workflows.errors import UsageError

    if len(values) not in (1, 3):
        raise UsageError("--grid takes one side or three sizes (D H W)")
    return list(values)


def add_inference_options(parser: argparse.ArgumentParser):
    group = parser.add_argument_group("Inference")
    group.add_argument("--device", default="auto",
                       help="auto (CUDA when present), cpu, cuda or cuda:N (default: auto)")
    group.add_argument("--precision", default="auto",
                       choices=Precision.names(),
                       help="auto picks bfloat16 where the hardware runs it natively and the "
                            "model's bfloat16 output agrees with float32 (the agreement recorded "
                            "in the checkpoint, if any, and a quick check), else float32; "
                            "float16 is CUDA only (default: auto)")
    group.add_argument("--mini-context-size", type=mini_context_size, default="auto",
                       metavar="N|auto",
                       help="context pairs processed at once (APSP); auto picks the largest that "
                            "fits in --mem (default: auto)")
    group.add_argument("--mem", dest="mem_gb", type=memory_size, default=None, metavar="SIZE",
                       help="memory budget: 8GB, 16G, 512MB, or a plain number of MB (8000, as "
                            "in fMRIPrep); for neuroverse3d the scheduler's total (default: a "
                            "safe fraction of free RAM or GPU memory)")
    group.add_argument("--mem-gb", dest="mem_gb", type=positive_float, default=None,
                       metavar="GB", help="the same as --mem, in GB")
    return group


def inference_options(args) -> InferenceOptions:
    """The :class:`~..model.options.InferenceOptions` of parsed :func:`add_inference_options`."""
    return InferenceOptions(device=args.device, precision=args.precision,
                            mini_context_size=args.mini_context_size, memory_gb=args.mem_gb)
