"""``neuroverse3d-train``: train or fine-tune Neuroverse3D from a manifest.

    neuroverse3d-train --config configs/train_small.json --manifest data/manifest.json \\
        --output-dir runs/small
    torchrun --nproc_per_node 4 -m neuroverse_bids.model.training.cli --config ...   # data parallel

Fine-tuning: ``--init-from neuroverse3D.ckpt --lr 1e-5`` starts from any checkpoint that
``load_checkpoint`` reads (the architecture comes from the checkpoint). Re-running a command
with the same ``--output-dir`` resumes from ``state.pt`` exactly.

Exit codes: 0 ok, 1 unexpected failure, 64 usage error, 65 bad configuration or data,
66 missing input.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..exit_codes import ExitCode
from .config import TrainConfig

#: flag -> (config field, type); only given flags override the config file
FLAGS = {
    "--manifest": ("manifest", str), "--val-manifest": ("val_manifest", str),
    "--output-dir": ("output_dir", str), "--init-from": ("init_from", str),
    "--steps": ("steps", int), "--stage1-steps": ("stage1_steps", int),
    "--batch-size": ("batch_size", int), "--lr": ("lr", float), "--grad-clip": ("grad_clip", float),
    "--lr-patience": ("lr_patience", int), "--gradient-weight": ("gradient_weight", float),
    "--mini-context-size": ("mini_context_size", int), "--device": ("device", str),
    "--seed": ("seed", int), "--val-every": ("val_every", int),
    "--val-episodes": ("val_episodes", int), "--ckpt-every": ("ckpt_every", int),
    "--log-every": ("log_every", int), "--stop-after": ("stop_after", int),
    "--lr-schedule": ("lr_schedule", str), "--warmup-steps": ("warmup_steps", int),
    "--dice-weight": ("dice_weight", float), "--structures": ("structures", str),
    "--structure-prob": ("structure_prob", float),
    "--targets-per-group": ("targets_per_group", int),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="neuroverse3d-train", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, help="JSON or TOML file with TrainConfig fields")
    for flag, (dest, kind) in FLAGS.items():
        parser.add_argument(flag, dest=dest, type=kind, default=None)
    parser.add_argument("--channels", type=int, nargs="+", default=None, help="stage channels")
    parser.add_argument("--grid", type=int, nargs=3, default=None, metavar=("D", "H", "W"))
    parser.add_argument("--tasks", nargs="+", default=None, help="train only these tasks")
    parser.add_argument("--bf16", nargs="?", const="on", default=None, choices=("auto", "on", "off"),
                        help="bfloat16 autocast: auto (where the hardware runs it natively, "
                             "else float32), on (required: exit 64 where it cannot run) or off "
                             "(float32, the default unless --config says otherwise); --bf16 "
                             "alone means on")
    parser.add_argument("--tensorboard", action="store_true", default=None)
    parser.add_argument("--no-augment", dest="no_augment", action="store_true", default=None)
    parser.add_argument("--no-progress", dest="progress", action="store_false", default=None)
    parser.add_argument("--no-precision-record", dest="record_precision_agreement",
                        action="store_false", default=None,
                        help="skip measuring bfloat16 against float32 on the validation "
                             "episodes at the last step (recorded in the model for --precision "
                             "auto)")
    return parser


def config_from_args(args) -> TrainConfig:
    base = TrainConfig.from_file(args.config).to_dict() if args.config else {}
    overrides = {k: v for k, v in vars(args).items() if k != "config" and v is not None}
    if "bf16" in overrides:
        overrides["bf16"] = {"on": True, "off": False}.get(overrides["bf16"], overrides["bf16"])
    config = TrainConfig.from_dict({**base, **overrides})
    if not config.manifest:
        raise SystemExit("neuroverse3d-train: error: give --manifest or 'manifest' in --config")
    return config


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from .distributed import cleanup, init_distributed
    from .trainer import Trainer

    try:
        config = config_from_args(args)
        context = init_distributed(config.device)
    except FileNotFoundError as error:
        print(f"neuroverse3d-train: error: {error}", file=sys.stderr)
        return ExitCode.MISSING_INPUT
    except (ValueError, TypeError) as error:
        print(f"neuroverse3d-train: error: {error}", file=sys.stderr)
        return ExitCode.USAGE
    try:
        trainer = Trainer(config, context)
        if context.is_main:
            print(f"neuroverse3d-train: precision {'bfloat16 autocast' if trainer.bf16 else 'float32'}"
                  f" ({trainer.precision_reason})", file=sys.stderr)
        if context.is_main and (trainer.out / "state.pt").is_file():
            print(f"neuroverse3d-train: resuming from {trainer.out / 'state.pt'}", file=sys.stderr)
        metrics = trainer.fit()
        if context.is_main:
            print(f"neuroverse3d-train: step {trainer.step}; model written to "
                  f"{trainer.out / 'model.safetensors'}; last validation {metrics}")
        return ExitCode.OK
    except FileNotFoundError as error:
        print(f"neuroverse3d-train: error: {error}", file=sys.stderr)
        return ExitCode.MISSING_INPUT
    except ValueError as error:  # bad data: 65; PrecisionUnavailableError: usage, 64
        print(f"neuroverse3d-train: error: {error}", file=sys.stderr)
        return getattr(error, "exit_code", ExitCode.BAD_INPUT)
    finally:
        cleanup(context)


if __name__ == "__main__":
    sys.exit(main())
