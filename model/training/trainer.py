"""The training loop: APSP steps, two stages, validation, atomic exact-resume checkpoints.

Randomness: every group of every step draws from its own generator seeded by
``(seed, step, group)``, and the chunk that keeps its graph is drawn from it too. A run stopped
and resumed therefore reproduces the uninterrupted run exactly (model, optimizer, scheduler and
step are restored), and N data-parallel ranks reproduce one process with the same global batch.
Several processes (``torchrun``) train through ``DistributedDataParallel`` (``self.engine``);
``self.model`` is always the bare network, so checkpoints carry no ``module.`` prefix.

Files in ``output_dir``: ``state.pt`` (resume state), ``model.safetensors`` (latest weights in
the project format), ``best.safetensors`` (best validation loss), ``config.json``, and what
:class:`.training_log.TrainingLog` writes (``log.csv``, ``tensorboard/`` when asked).
"""
from __future__ import annotations

import json
import math
import sys
import time
from contextlib import nullcontext
from dataclasses import fields
from pathlib import Path
from typing import Dict, Optional

import torch

from ..capability import bfloat16_support
from ..checkpoint import load_checkpoint, record_precision_agreement, save_checkpoint
from ..engine.precision import training_bfloat16
from ..fileio import write_atomic
from ..network import Neuroverse3D
from .agreement import precision_agreement
from .augment import AugmentConfig
from .labelmap_synthesis import LabelmapConfig
from .config import TrainConfig
from .distributed import DistContext, all_reduce_sum_, barrier, is_ddp, wrap_for_training
from .losses import dice, psnr, task_loss
from .manifest import load_manifest, read_structures, structures_file
from .sampling import EpisodeSampler, rotations
from ..degradations import SynthesisConfig
from .synthesis import SEGMENTATION
from .training_log import TrainingLog

STATE_FILE = "state.pt"
VAL_SEED_OFFSET = 10_000_019


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (deterministic, order sensitive)."""
    value = 0x9E3779B97F4A7C15
    for part in parts:
        value = (value ^ (int(part) + 0x632BE59BD9B4E019 + (value << 6) + (value >> 2))) % (1 << 63)
    return value


def generator_for(*parts: int) -> torch.Generator:
    return torch.Generator().manual_seed(mix_seed(*parts))


def _dataclass_with(cls, overrides: dict):
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} option(s): {', '.join(unknown)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()})


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig):
    """The learning-rate schedule of ``cfg.lr_schedule``.

    ``plateau`` halves the rate when validation stops improving (stepped by validation);
    ``cosine`` and ``constant`` are functions of the step alone (stepped every step), so a
    resumed run follows the same rates: linear warm-up over ``warmup_steps``, then constant or
    a half cosine from ``lr`` down to ``min_lr`` at the last step.
    """
    if cfg.lr_schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=cfg.lr_factor, patience=cfg.lr_patience, min_lr=cfg.min_lr)
    floor = min(cfg.min_lr / cfg.lr, 1.0) if cfg.lr > 0 else 0.0

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.lr_schedule == "constant":
            return 1.0
        span = max(cfg.steps - cfg.warmup_steps - 1, 1)
        progress = min((step - cfg.warmup_steps) / span, 1.0)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class Trainer:
    """Train (or fine-tune) a Neuroverse3D network from a manifest; see the module doc."""

    def __init__(self, config: TrainConfig, context: Optional[DistContext] = None):
        config.check()
        self.cfg, self.ctx = config, context or DistContext()
        self.out = Path(config.output_dir)
        if self.ctx.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        self.device = self.ctx.device
        #: bfloat16 autocast in training steps, and why (``cfg.bf16`` on this device)
        self.bf16, self.precision_reason = training_bfloat16(config.bf16, self.device)
        torch.manual_seed(config.seed)
        self.model = self._build_model().to(self.device)
        if config.channels_last:  # 3D convolutions are much faster in this layout (15x on CPU)
            self.model = self.model.to(memory_format=torch.channels_last_3d)
        config.check()  # again: a fine-tuned checkpoint may bring another depth
        if config.batch_size < self.ctx.world_size:
            raise ValueError(f"batch_size ({config.batch_size}) must be at least the number of "
                             f"processes ({self.ctx.world_size})")
        # what the training step calls: DistributedDataParallel when several processes run
        self.engine = wrap_for_training(self.model, self.ctx)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        self.scheduler = make_scheduler(self.optimizer, config)
        synthesis = _dataclass_with(SynthesisConfig, config.synthesis)
        augment = AugmentConfig.disabled() if config.no_augment else _dataclass_with(AugmentConfig, config.augment)
        manifest = load_manifest(config.manifest)
        structures = self._structures()
        labelmap = _dataclass_with(LabelmapConfig, config.labelmap)
        self.sampler = EpisodeSampler(manifest, config.grid, synthesis, augment, config.rates,
                                      config.tasks, config.cache_size, structures,
                                      config.structure_prob, labelmap)
        val_manifest = load_manifest(config.val_manifest) if config.val_manifest else manifest
        self.val_sampler = EpisodeSampler(val_manifest, config.grid, synthesis,
                                          AugmentConfig.disabled(), config.rates, config.tasks,
                                          config.cache_size, structures, config.structure_prob,
                                          labelmap)
        self.step = 0
        self.best = float("inf")
        self._val_episodes = None

    # ---------------------------------------------------------------------------- set-up
    def _build_model(self) -> Neuroverse3D:
        cfg = self.cfg
        if cfg.init_from:
            model = load_checkpoint(cfg.init_from)
            cfg.channels = list(model.config.channels)
            cfg.convs_per_block = model.config.convs_per_block
            return model.train()
        return Neuroverse3D(cfg.channels, cfg.convs_per_block).train()

    def _structures(self):
        """Named structures for ``structure_prob`` (given file, or structures.json beside the manifest)."""
        cfg = self.cfg
        if cfg.structures is None and not cfg.structure_prob:
            return None
        path = structures_file(cfg.manifest, cfg.structures)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: structures file not found (structure_prob > 0 needs "
                                    f"one; neuroverse3d-make-training-data writes it beside the manifest)")
        return read_structures(path)

    def plan(self, step: int):
        """(stage, context size L, mini-context size m) of ``step``; same on every rank."""
        cfg = self.cfg
        if step < cfg.stage1_steps:
            size = cfg.stage1_context_size
            return 1, size, size
        lo, hi = cfg.stage2_context_sizes
        size = lo + int(torch.randint(hi - lo + 1, (1,), generator=generator_for(cfg.seed, step, -1)))
        return 2, size, min(cfg.mini_context_size, size)

    # ------------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "step": torch.tensor(self.step),
                "best": torch.tensor(self.best, dtype=torch.float64),
                "rng_cpu": torch.get_rng_state(),
                "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "config": json.dumps(self.cfg.to_dict())}

    def save(self) -> None:
        """Resume state and the project-format model, both written atomically (rank 0)."""
        if not self.ctx.is_main:
            return
        state = self.state_dict()
        write_atomic(self.out / STATE_FILE, lambda tmp: torch.save(state, tmp))
        save_checkpoint(self.model, self.out / "model.safetensors", grid=self.grid_metadata(),
                        provenance=self.provenance())

    def record_precision_agreement(self) -> None:
        """bfloat16 vs float32 on this process's validation episodes, written into the final
        ``model.safetensors`` (the Predictor's ``auto`` precision honours it)."""
        support = bfloat16_support(self.device)
        if not support.runs:
            print(f"neuroverse3d-train: bfloat16 agreement not recorded: {support.describe()}",
                  file=sys.stderr)
            return
        episodes = self.validation_episodes()
        if not episodes:
            return
        record = precision_agreement(self.model, episodes, "bfloat16", str(self.device))
        record_precision_agreement(self.out / "model.safetensors", "bfloat16", record)
        print(f"neuroverse3d-train: bfloat16 vs float32 on {len(episodes)} validation "
              f"episodes: {record}", file=sys.stderr)

    def grid_metadata(self) -> dict:
        return {"shape": list(self.cfg.grid), "voxel_size_mm": self.cfg.voxel_size_mm,
                "template": self.cfg.template}

    def provenance(self) -> dict:
        return {"trained_with": "neuroverse3d-train", "step": self.step, "seed": self.cfg.seed,
                "manifest": str(self.cfg.manifest), "init_from": self.cfg.init_from,
                "best_val_loss": self.best,
                "precision": "bfloat16 autocast" if self.bf16 else "float32",
                "precision_reason": self.precision_reason}

    def resume(self) -> bool:
        """Load ``state.pt`` from the output folder when present; True when resumed."""
        path = self.out / STATE_FILE
        if not path.is_file():
            return False
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.best = int(state["step"]), float(state["best"])
        torch.set_rng_state(state["rng_cpu"])
        if torch.cuda.is_available() and len(state["rng_cuda"]):
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        return True

    # -------------------------------------------------------------------------- training
    def _autocast(self, training: bool = True):
        # validation on the CPU runs in float32, the reference precision; training may autocast
        if not self.bf16 or (not training and self.device.type == "cpu"):
            return nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def _to_device(self, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        out = {k: v.to(self.device) for k, v in batch.items()}
        if self.cfg.channels_last:
            for key in ("target_in", "target_out"):
                out[key] = out[key].contiguous(memory_format=torch.channels_last_3d)
        return out

    def train_step(self) -> Dict[str, object]:
        """One optimizer step over the global batch; this rank does its share of groups."""
        cfg, step = self.cfg, self.step
        stage, size, mini = self.plan(step)
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        local_loss, tasks = torch.zeros((), dtype=torch.float64), []
        groups = range(self.ctx.rank, cfg.batch_size, self.ctx.world_size)
        for index, group in enumerate(groups):
            generator = generator_for(cfg.seed, step, group)
            episode = self.sampler.sample(generator, size)
            batch = self._to_device(rotations(episode.inputs, episode.outputs, cfg.targets_per_group))
            # DDP: accumulate locally, all-reduce in the step's last backward only
            last = index == len(groups) - 1
            with (nullcontext() if last or not is_ddp(self.engine) else self.engine.no_sync()):
                with self._autocast():
                    pred = self.engine(batch["target_in"], batch["context_in"],
                                       batch["context_out"], mini, generator)
                loss = task_loss(pred, batch["target_out"], episode.task, cfg.gradient_weight,
                                 cfg.loss_beta, cfg.task_weights, cfg.dice_weight) / cfg.batch_size
                # DDP averages over ranks; the sum over ranks is the global-batch mean
                (loss * self.ctx.world_size if self.ctx.enabled else loss).backward()
            local_loss += loss.detach().double().cpu()
            tasks.append(episode.task)
        all_reduce_sum_(local_loss, self.ctx)
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        if cfg.lr_schedule != "plateau":
            self.scheduler.step()
        self.step += 1
        return {"step": self.step, "stage": stage, "context_size": size, "mini_context_size": mini,
                "tasks": "+".join(tasks), "loss": float(local_loss), "grad_norm": float(norm),
                "lr": lr}

    # ------------------------------------------------------------------------ validation
    @property
    def val_episode_count(self) -> int:
        """``val_episodes`` rounded up to a multiple of the number of tasks (at least one each)."""
        per_task = -(-max(self.cfg.val_episodes, 1) // len(self.val_sampler.tasks))
        return per_task * len(self.val_sampler.tasks)

    def validation_episodes(self):
        """Fixed episodes, stratified by task: episode i shows task ``i mod (number of tasks)``,
        so every validation measures every task equally often."""
        if self._val_episodes is None:
            cfg, tasks = self.cfg, self.val_sampler.tasks
            self._val_episodes = [
                self.val_sampler.sample(generator_for(cfg.seed + VAL_SEED_OFFSET, i),
                                        cfg.val_context_size, tasks[i % len(tasks)])
                for i in range(self.ctx.rank, self.val_episode_count, self.ctx.world_size)]
        return self._val_episodes

    @torch.no_grad()
    def validate(self) -> Dict[str, float]:
        """Mean loss over fixed episodes (first member as target); Dice for segmentation, PSNR else."""
        self.model.eval()
        sums = torch.zeros(5, dtype=torch.float64)  # loss, dice sum, n seg, psnr sum, n gen
        for episode in self.validation_episodes():
            batch = self._to_device(rotations(episode.inputs, episode.outputs, 1))
            with self._autocast(training=False):
                pred = self.model(batch["target_in"], batch["context_in"], batch["context_out"],
                                  mini_context_size=min(self.cfg.mini_context_size, batch["context_in"].shape[1]))
            pred = pred.float()
            sums[0] += float(task_loss(pred, batch["target_out"], episode.task, self.cfg.gradient_weight,
                                       self.cfg.loss_beta, self.cfg.task_weights, self.cfg.dice_weight))
            if episode.task == SEGMENTATION:
                sums[1] += dice(pred, batch["target_out"])
                sums[2] += 1
            else:
                sums[3] += min(psnr(pred, batch["target_out"]), 100.0)
                sums[4] += 1
        all_reduce_sum_(sums, self.ctx)
        self.model.train()
        nan = float("nan")
        return {"val_loss": float(sums[0]) / self.val_episode_count,
                "val_dice": float(sums[1] / sums[2]) if sums[2] else nan,
                "val_psnr": float(sums[3] / sums[4]) if sums[4] else nan}

    # ------------------------------------------------------------------------------- run
    def fit(self) -> Dict[str, float]:
        """Train until ``steps`` (or ``stop_after``); returns the last validation metrics."""
        cfg = self.cfg
        self.resume()
        last_step = cfg.steps if cfg.stop_after is None else min(cfg.steps, cfg.stop_after)
        log = None
        if self.ctx.is_main:
            (self.out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1) + "\n")
            log = TrainingLog(self.out, cfg, self.step, last_step)
        metrics: Dict[str, float] = {}
        try:
            while self.step < last_step:
                start = time.perf_counter()
                row = self.train_step()
                if cfg.val_every and (self.step % cfg.val_every == 0 or self.step == cfg.steps):
                    metrics = self.validate()
                    if cfg.lr_schedule == "plateau":
                        self.scheduler.step(metrics["val_loss"])
                    row.update(metrics)
                    if metrics["val_loss"] < self.best:
                        self.best = metrics["val_loss"]
                        if self.ctx.is_main:
                            save_checkpoint(self.model, self.out / "best.safetensors",
                                            grid=self.grid_metadata(), provenance=self.provenance())
                row["seconds"] = round(time.perf_counter() - start, 4)
                if log is not None:
                    log.write(row, self.step)
                if cfg.ckpt_every and self.step % cfg.ckpt_every == 0:
                    self.save()
            if not (cfg.ckpt_every and self.step % cfg.ckpt_every == 0):
                self.save()
            if self.ctx.is_main and self.step == cfg.steps and cfg.record_precision_agreement:
                self.record_precision_agreement()
            barrier(self.ctx)
        finally:
            if log is not None:
                log.close()
        return metrics
