"""Inference options shared by ``neuroverse3d`` and ``neuroverse3d-predict``."""
from __future__ import annotations

import argparse


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


def add_inference_options(parser: argparse.ArgumentParser):
    group = parser.add_argument_group("Inference")
    group.add_argument("--device", default="auto",
                       help="auto (CUDA when present), cpu, cuda or cuda:N (default: auto)")
    group.add_argument("--precision", default="auto",
                       choices=("auto", "float32", "bfloat16", "float16"),
                       help="auto picks bfloat16 where the hardware runs it natively and the "
                            "model's bfloat16 output agrees with float32 (the agreement recorded "
                            "in the checkpoint, if any, and a quick check), else float32; "
                            "float16 is CUDA only (default: auto)")
    group.add_argument("--mini-context-size", type=mini_context_size, default="auto",
                       metavar="N|auto",
                       help="context pairs processed at once (APSP); auto picks the largest that "
                            "fits in --mem (default: auto)")
    group.add_argument("--mem", "--mem-gb", dest="mem_gb", type=positive_float, default=None,
                       metavar="GB", help="memory budget for inference in GB (default: a safe "
                                          "fraction of free RAM or GPU memory)")
    return group


def inference_settings(args) -> dict:
    """Keyword arguments for :class:`Predictor` from parsed options."""
    return {"device": args.device, "precision": args.precision,
            "mini_context_size": args.mini_context_size,
            "memory_gb": getattr(args, "mem_gb", None)}
