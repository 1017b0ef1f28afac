"""Data-parallel training: 2 gloo processes on CPU under DistributedDataParallel == 1 process
with the same global batch.

The test launches this file with ``torchrun``; run as a script it is the worker.
"""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

# batch 3 over 2 ranks: rank 0 accumulates two groups (one under ``no_sync``), rank 1 one
CONFIG = dict(channels=[4, 8], grid=[8, 8, 8], steps=3, stage1_steps=2,
              stage2_context_sizes=[1, 3], batch_size=3, targets_per_group=2, val_every=2,
              val_episodes=2, val_context_size=2, ckpt_every=0, lr=1e-3, progress=False,
              seed=11, device="cpu")


def worker(manifest: str, out: str) -> None:
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
    from torch.nn.parallel import DistributedDataParallel

    from neuroverse_bids.model.training import TrainConfig, Trainer
    from neuroverse_bids.model.training.distributed import cleanup, init_distributed

    context = init_distributed("cpu")
    trainer = Trainer(TrainConfig(manifest=manifest, output_dir=out, **CONFIG), context)
    synced = []  # one entry per all-reduced backward (bucket 0 of each)
    if context.enabled:
        assert isinstance(trainer.engine, DistributedDataParallel)
        assert trainer.engine.module.net is trainer.model

        def counting_hook(state, bucket):
            if bucket.index() == 0:
                synced.append(trainer.step)
            return allreduce_hook(state, bucket)

        trainer.engine.register_comm_hook(None, counting_hook)
    trainer.fit()
    torch.save({"state": trainer.model.state_dict(), "world": context.world_size,
                "lr": trainer.optimizer.param_groups[0]["lr"],
                "engine": type(trainer.engine).__name__, "synced_steps": synced},
               Path(out) / f"rank{context.rank}.pt")
    cleanup(context)


def _torchrun(nproc: int, manifest: Path, out: Path) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", __file__, str(manifest), str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_two_gloo_ranks_match_one_process(tmp_path):
    from synthetic import make_toy_dataset

    manifest = make_toy_dataset(tmp_path / "data", subjects=4, shape=(8, 8, 8), seed=4)
    _torchrun(2, manifest, tmp_path / "two")
    _torchrun(1, manifest, tmp_path / "one")
    rank0 = torch.load(tmp_path / "two" / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "two" / "rank1.pt", weights_only=True)
    single = torch.load(tmp_path / "one" / "rank0.pt", weights_only=True)
    assert rank0["world"] == 2 and single["world"] == 1
    assert rank0["engine"] == rank1["engine"] == "DistributedDataParallel"
    assert single["engine"] == "APSPTrainingModule"  # one process: no wrapper, no sync
    # one gradient all-reduce per step on both ranks, although rank 0 ran two backwards
    assert rank0["synced_steps"] == rank1["synced_steps"] == [0, 1, 2]
    torch.manual_seed(11)
    from neuroverse_bids.model.network import Neuroverse3D

    init = Neuroverse3D((4, 8)).state_dict()
    moved = max((rank0["state"][k] - init[k]).abs().max().item() for k in init)
    assert moved > 1e-4  # the weights did train
    for key, value in rank0["state"].items():
        assert torch.equal(value, rank1["state"][key]), key  # ranks agree exactly
        assert (value - single["state"][key]).abs().max().item() <= 1e-5, key
    assert rank0["lr"] == single["lr"]
    # the checkpoints hold the bare network's keys (no "module." prefix)
    saved = load_file(str(tmp_path / "two" / "model.safetensors"))
    assert set(saved) == set(init)
    assert all(torch.equal(saved[k], rank0["state"][k]) for k in init)
    resume = torch.load(tmp_path / "two" / "state.pt", weights_only=True)
    assert set(resume["model"]) == set(init) and int(resume["step"]) == 3


if __name__ == "__main__":
    worker(sys.argv[1], sys.argv[2])
