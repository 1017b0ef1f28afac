"""Training configuration: one dataclass, read from JSON (or TOML) and overridden by flags."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Dict, List, Optional, Union

from ..network import RELEASED_CHANNELS
from ..spaces import DEFAULT_TEMPLATE

LR_SCHEDULES = ("plateau", "cosine", "constant")


@dataclass
class TrainConfig:
    """Everything a training run needs; defaults follow the paper where it gives a value."""

    manifest: str = ""                      # training manifest (JSON/TSV)
    val_manifest: Optional[str] = None      # default: the training manifest
    output_dir: str = "neuroverse3d-train"
    # model and grid
    channels: List[int] = field(default_factory=lambda: list(RELEASED_CHANNELS))
    convs_per_block: int = 2
    grid: List[int] = field(default_factory=lambda: [128, 128, 128])
    voxel_size_mm: float = 1.5
    template: str = DEFAULT_TEMPLATE
    init_from: Optional[str] = None         # fine-tuning: any checkpoint load_checkpoint reads
    # schedule
    steps: int = 100000                     # total optimizer steps (both stages)
    stage1_steps: int = 50000               # stage 1: context size = mini-context size = 3
    stage1_context_size: int = 3
    stage2_context_sizes: List[int] = field(default_factory=lambda: [1, 8])  # uniform, inclusive
    mini_context_size: int = 3              # stage 2 chunk size (capped by the context size)
    batch_size: int = 1                     # groups per step, global (split over ranks)
    targets_per_group: Optional[int] = None  # members taking a turn as target (None: all)
    # optimisation
    lr: float = 1e-4
    lr_schedule: str = "plateau"            # plateau (halve on validation), cosine or constant
    warmup_steps: int = 0                   # cosine/constant: linear warm-up from lr / warmup
    grad_clip: float = 0.25
    lr_factor: float = 0.5
    lr_patience: int = 10                   # evaluations without improvement before halving
    min_lr: float = 1e-7                    # plateau floor; cosine decays to it at the last step
    gradient_weight: float = 1.0            # generation tasks: gradient-loss weight
    loss_beta: float = 1.0
    dice_weight: float = 0.0                # segmentation: + dice_weight * soft Dice loss
    task_weights: Dict[str, float] = field(default_factory=dict)  # overrides of 50 / 1 / 0.5
    # bfloat16 autocast: "auto" (where the hardware runs it natively), true (required), false;
    # default false: float32 gives the same run on every CPU
    bf16: Union[bool, str] = False
    channels_last: bool = True              # channels_last_3d layout (faster convolutions)
    device: str = "auto"
    seed: int = 0
    # data
    tasks: Optional[List[str]] = None       # restrict to these tasks
    rates: Dict[str, float] = field(default_factory=dict)       # task sampling-rate overrides
    augment: Dict[str, float] = field(default_factory=dict)     # AugmentConfig overrides
    synthesis: Dict[str, object] = field(default_factory=dict)  # SynthesisConfig overrides
    labelmap: Dict[str, object] = field(default_factory=dict)   # LabelmapConfig overrides
    no_augment: bool = False
    cache_size: int = 64
    structures: Optional[str] = None        # named structures (default: beside the manifest)
    structure_prob: float = 0.0             # segmentation: share of named-structure episodes
    # validation, logging, checkpoints
    val_every: int = 500
    val_episodes: int = 16                  # split evenly over the tasks (every task, every time)
    val_context_size: int = 3
    ckpt_every: int = 500
    log_every: int = 10
    tensorboard: bool = False
    progress: bool = True
    stop_after: Optional[int] = None        # stop (with a checkpoint) after this step
    record_precision_agreement: bool = True  # at the last step: bf16 vs float32 into the model

    @classmethod
    def from_file(cls, path) -> "TrainConfig":
        path = Path(path)
        if path.suffix.lower() == ".toml":
            import tomllib

            data = tomllib.loads(path.read_text())
        else:
            data = json.loads(path.read_text())
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training option(s): {', '.join(unknown)}")
        return cls(**data)

    def to_dict(self) -> dict:
        return asdict(self)

    def check(self) -> None:
        if self.batch_size < 1 or self.steps < 0 or self.stage1_steps < 0:
            raise ValueError("batch_size must be >= 1 and steps, stage1_steps >= 0")
        lo, hi = self.stage2_context_sizes
        if not 1 <= lo <= hi:
            raise ValueError(f"stage2_context_sizes must be [lo, hi] with 1 <= lo <= hi, got {[lo, hi]}")
        if self.bf16 not in (True, False, "auto"):
            raise ValueError(f"bf16 must be true, false or \"auto\", got {self.bf16!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if not 0.0 <= self.structure_prob <= 1.0 or self.warmup_steps < 0 or self.dice_weight < 0:
            raise ValueError("structure_prob must be in [0, 1]; warmup_steps, dice_weight >= 0")
        divisor = 2 ** (len(self.channels) - 1)
        if any(g % divisor for g in self.grid):
            raise ValueError(f"grid {self.grid} must be divisible by {divisor} for {len(self.channels)} stages")
