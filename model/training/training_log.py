"""What a training run reports, step by step: ``log.csv``, TensorBoard scalars, progress.

Only the main process logs (:class:`~.trainer.Trainer` opens a :class:`TrainingLog` on rank 0).
A resumed run rewrites ``log.csv`` with its rows up to the resumed step, so the file holds each
step once however often the run was stopped.
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path

from .config import TrainConfig

LOG_FILE = "log.csv"
LOG_COLUMNS = ("step", "stage", "context_size", "mini_context_size", "tasks", "loss", "grad_norm",
               "lr", "val_loss", "val_dice", "val_psnr", "seconds")
#: the columns also written to TensorBoard
SCALARS = ("loss", "grad_norm", "lr", "val_loss", "val_dice", "val_psnr")


class TrainingLog:
    """``output_dir/log.csv`` (every ``log_every`` steps and every validation), TensorBoard
    (``tensorboard/``, when ``cfg.tensorboard`` and installed), and a tqdm bar (else a line on
    stderr every ``log_every`` steps) when ``cfg.progress``. ``step``: where the run starts;
    ``total``: where it stops."""

    def __init__(self, out: Path, cfg: TrainConfig, step: int, total: int):
        self.cfg = cfg
        self._handle = self._csv = self._tensorboard = self._bar = None
        try:
            self._handle, self._csv = _open_csv(Path(out) / LOG_FILE, step)
            self._tensorboard = _tensorboard(Path(out) / "tensorboard") if cfg.tensorboard else None
            self._bar = _progress(step, total) if cfg.progress else None
        except BaseException:
            self.close()
            raise

    def write(self, row: dict, step: int) -> None:
        """Log the row of ``step`` (a train step's fields, plus validation metrics if any)."""
        every = max(self.cfg.log_every, 1)
        if step % every == 0 or "val_loss" in row:
            self._csv.writerow(row)
            self._handle.flush()
        if self._tensorboard is not None:
            for key in SCALARS:
                if key in row:
                    self._tensorboard.add_scalar(key, row[key], step)
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(loss=f"{row['loss']:.4f}", stage=row["stage"], L=row["context_size"])
        elif step % every == 0 and self.cfg.progress:
            print(f"step {step}/{self.cfg.steps} loss {row['loss']:.4f}", file=sys.stderr)

    def close(self) -> None:
        for thing in (self._handle, self._bar, self._tensorboard):
            if thing is not None:
                thing.close()
        self._handle = self._csv = self._tensorboard = self._bar = None


def _open_csv(path: Path, step: int):
    """``path`` opened for writing, holding its previous rows up to ``step`` (a resumed run)."""
    rows = []
    if path.is_file():
        with open(path, newline="") as handle:
            rows = [r for r in csv.DictReader(handle) if int(r["step"]) <= step]
    handle = open(path, "w", newline="")
    writer = csv.DictWriter(handle, fieldnames=LOG_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    handle.flush()
    return handle, writer


def _tensorboard(folder: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        print("neuroverse3d-train: tensorboard is not installed; logging to log.csv only",
              file=sys.stderr)
        return None
    return SummaryWriter(str(folder))


def _progress(step: int, total: int):
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=step, unit="step", dynamic_ncols=True)
