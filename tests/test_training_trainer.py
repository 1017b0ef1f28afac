"""Trainer: exact resume, a short run that learns, the CLI, fine-tuning from a checkpoint."""
import csv
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from neuroverse_bids.model import load_checkpoint, save_checkpoint
from neuroverse_bids.model.capability import bfloat16_support
from neuroverse_bids.model.network import Neuroverse3D
from neuroverse_bids.model.training import TrainConfig, Trainer
from neuroverse_bids.model.training.cli import main as train_main
from neuroverse_bids.model.training.training_log import TrainingLog
from synthetic import make_toy_dataset


@pytest.fixture(scope="module")
def toy8(tmp_path_factory):
    return make_toy_dataset(tmp_path_factory.mktemp("toy8"), subjects=4, shape=(8, 8, 8), seed=2)


def _config(manifest, out, **overrides):
    base = dict(manifest=str(manifest), output_dir=str(out), channels=[4, 8], grid=[8, 8, 8],
                steps=4, stage1_steps=2, stage2_context_sizes=[1, 3], batch_size=2,
                targets_per_group=2, val_every=2, val_episodes=2, val_context_size=2,
                ckpt_every=0, lr=1e-3, progress=False, log_every=1, seed=5)
    base.update(overrides)
    return TrainConfig(**base)


@pytest.mark.parametrize("schedule", [{}, {"lr_schedule": "cosine", "warmup_steps": 1, "min_lr": 1e-5}])
def test_stopped_and_resumed_run_matches_uninterrupted_run(toy8, tmp_path, schedule):
    straight = Trainer(_config(toy8, tmp_path / "a", **schedule))
    straight.fit()
    first = Trainer(_config(toy8, tmp_path / "b", stop_after=2, **schedule))
    first.fit()
    assert first.step == 2
    second = Trainer(_config(toy8, tmp_path / "b", **schedule))  # same folder: resumes from state.pt
    assert second.resume() and second.step == 2
    second.fit()
    assert second.step == 4
    a = load_file(str(tmp_path / "a" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    torch.manual_seed(5)  # the run's seed: the same initial weights
    init = Neuroverse3D((4, 8)).state_dict()
    assert any(not torch.equal(init[k], a[k]) for k in a)  # training moved them
    sa, sb = straight.optimizer.state_dict(), second.optimizer.state_dict()
    assert all(torch.equal(sa["state"][i]["exp_avg_sq"], sb["state"][i]["exp_avg_sq"]) for i in sa["state"])
    # the log holds each step once, with the validation rows
    with open(tmp_path / "b" / "log.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert rows[1]["val_loss"] and rows[3]["val_loss"]
    assert {r["stage"] for r in rows} == {"1", "2"}
    with open(tmp_path / "a" / "log.csv") as handle:
        assert [r["lr"] for r in rows] == [r["lr"] for r in csv.DictReader(handle)]


def test_cosine_and_constant_schedules_follow_the_step(toy8, tmp_path):
    def rates(**overrides):
        trainer = Trainer(_config(toy8, tmp_path, steps=11, lr=1e-3, min_lr=1e-5, warmup_steps=2,
                                  **overrides))
        out = []
        for _ in range(11):
            out.append(trainer.optimizer.param_groups[0]["lr"])
            trainer.optimizer.step()
            trainer.scheduler.step()
        return out

    cosine = rates(lr_schedule="cosine")
    assert cosine[:3] == pytest.approx([5e-4, 1e-3, 1e-3])  # linear warm-up, then the peak
    assert cosine[-1] == pytest.approx(1e-5)                # the floor at the last step
    assert cosine[6] == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi * 4 / 8)))
    assert all(a >= b for a, b in zip(cosine[1:], cosine[2:]))
    assert rates(lr_schedule="constant")[1:] == pytest.approx([1e-3] * 10)
    with pytest.raises(ValueError, match="lr_schedule"):
        Trainer(_config(toy8, tmp_path, lr_schedule="linear"))


def test_stage_plan(toy8, tmp_path):
    trainer = Trainer(_config(toy8, tmp_path, steps=60, stage1_steps=10, stage2_context_sizes=[1, 8],
                              mini_context_size=3))
    assert all(trainer.plan(s) == (1, 3, 3) for s in range(10))
    sizes = [trainer.plan(s) for s in range(10, 60)]
    assert {st for st, _, _ in sizes} == {2}
    assert all(1 <= size <= 8 and mini == min(3, size) for _, size, mini in sizes)
    assert len({size for _, size, _ in sizes}) >= 5


def test_short_run_lowers_validation_loss_and_writes_a_loadable_checkpoint(tmp_path):
    manifest = make_toy_dataset(tmp_path / "data", subjects=5, shape=(16, 16, 16), seed=3)
    cfg = _config(manifest, tmp_path / "run", channels=[4, 8], grid=[16, 16, 16], steps=24,
                  stage1_steps=24, stage1_context_size=2, batch_size=1, targets_per_group=1,
                  tasks=["segmentation", "skull-stripping"], no_augment=True, val_every=24,
                  val_episodes=4, lr=3e-3, ckpt_every=12, seed=0)
    trainer = Trainer(cfg)
    initial = trainer.validate()["val_loss"]
    final = trainer.fit()["val_loss"]
    print(f"validation loss {initial:.4f} -> {final:.4f}")
    assert final < initial
    model = load_checkpoint(tmp_path / "run" / "model.safetensors")
    assert model.config.channels == (4, 8)
    assert model.metadata["grid"]["shape"] == [16, 16, 16]
    assert model.metadata["provenance"]["step"] == 24
    if bfloat16_support("cpu").runs:
        # the last step measured bfloat16 against float32 on the 4 validation episodes
        record = model.metadata["precision_agreement"]["bfloat16"]
        assert record["measured_by"] == "neuroverse3d-train"
        assert {"dice_min", "psnr_min_db"} & set(record)
        assert 0 <= record.get("dice_min", 1) <= 1 and 0 < record.get("psnr_min_db", 100) <= 100
    else:  # nothing to measure where bfloat16 cannot run: no record, and the run finishes
        assert "precision_agreement" not in model.metadata
    assert (tmp_path / "run" / "best.safetensors").is_file()
    assert not list((tmp_path / "run").glob(".*"))  # no temporary files left behind


def test_cli_config_file_flags_and_fine_tuning(toy8, tmp_path):
    torch.manual_seed(1)
    start = Neuroverse3D((4, 8))
    save_checkpoint(start, tmp_path / "start.safetensors", grid={"shape": [8, 8, 8]})
    config = {"manifest": str(toy8), "channels": [32, 64], "grid": [8, 8, 8], "steps": 2,
              "stage1_steps": 1, "batch_size": 1, "targets_per_group": 2, "val_every": 0,
              "ckpt_every": 0, "stage2_context_sizes": [1, 2]}
    (tmp_path / "cfg.json").write_text(json.dumps(config))
    out = tmp_path / "ft"
    code = train_main(["--config", str(tmp_path / "cfg.json"), "--output-dir", str(out),
                       "--init-from", str(tmp_path / "start.safetensors"), "--lr", "1e-5",
                       "--no-progress"])
    assert code == 0
    tuned = load_checkpoint(out / "model.safetensors")
    assert tuned.config.channels == (4, 8)  # the architecture comes from the checkpoint
    assert tuned.metadata["provenance"]["init_from"].endswith("start.safetensors")
    saved = json.loads((out / "config.json").read_text())
    assert saved["lr"] == 1e-5 and saved["steps"] == 2
    delta = max((a - b).abs().max().item() for a, b in
                zip(start.state_dict().values(), tuned.state_dict().values()))
    assert 0 < delta < 1e-3  # moved, a little (two steps at lr 1e-5)
    assert train_main(["--manifest", str(tmp_path / "missing.json"), "--output-dir",
                       str(tmp_path / "x"), "--no-progress"]) == 66
    (tmp_path / "bad.json").write_text(json.dumps({"manifest": str(toy8), "colour": 1}))
    assert train_main(["--config", str(tmp_path / "bad.json")]) == 64


def test_bf16_autocast_step_and_validation_metrics(toy8, tmp_path, needs_bf16):
    trainer = Trainer(_config(toy8, tmp_path, bf16=True, steps=1, val_episodes=4,
                              tasks=["segmentation", "inpainting"]))
    before = [p.detach().clone() for p in trainer.model.parameters()]
    row = trainer.train_step()
    assert torch.isfinite(torch.tensor(row["loss"])) and row["loss"] > 0
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # master weights
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    metrics = trainer.validate()
    assert metrics["val_loss"] > 0
    assert 0 <= metrics["val_dice"] <= 1 and metrics["val_psnr"] > 0


def test_validation_is_stratified_by_task(toy8, tmp_path):
    trainer = Trainer(_config(toy8, tmp_path, val_episodes=5, tasks=["segmentation", "inpainting",
                                                                     "gaussian-noise"]))
    tasks = [e.task for e in trainer.validation_episodes()]
    assert trainer.val_episode_count == 6  # 5 rounded up to 2 per task
    assert sorted(tasks) == sorted(["segmentation", "inpainting", "gaussian-noise"] * 2)
    small = Trainer(_config(toy8, tmp_path / "one", val_episodes=1, tasks=["segmentation", "inpainting"]))
    metrics = small.validate()  # one episode asked for, still every task measured
    assert {e.task for e in small.validation_episodes()} == {"segmentation", "inpainting"}
    assert math.isfinite(metrics["val_dice"]) and math.isfinite(metrics["val_psnr"])


def test_named_structure_episodes_and_dice_loss_train(toy8, tmp_path):
    structures = tmp_path / "structures.json"
    structures.write_text(json.dumps({"*": {"pair": [1, 2], "single": [3]}}))
    trainer = Trainer(_config(toy8, tmp_path / "run", structures=str(structures), structure_prob=1.0,
                              dice_weight=1.0, tasks=["segmentation"], steps=2))
    shown = [trainer.sampler.sample(torch.Generator().manual_seed(i), 2).classes for i in range(12)]
    assert {tuple(c) for c in shown} <= {(1, 2), (3,)} and len({tuple(c) for c in shown}) == 2
    trainer.fit()
    assert trainer.step == 2
    with pytest.raises(FileNotFoundError, match="structures file not found"):
        Trainer(_config(toy8, tmp_path / "x", structure_prob=0.5))


def test_training_log_writes_every_log_every_steps_and_trims_on_resume(tmp_path, capsys):
    cfg = TrainConfig(manifest="unused.json", output_dir=str(tmp_path), steps=6, log_every=2,
                      progress=False)

    def row(step, **extra):
        return dict(step=step, stage=1, context_size=2, loss=0.5, lr=1e-3, **extra)

    log = TrainingLog(tmp_path, cfg, 0, 4)
    for step in range(1, 5):  # validation at step 3: logged although 3 is not a multiple of 2
        log.write(row(step, **({"val_loss": 0.4} if step == 3 else {})), step)
    log.close()
    log = TrainingLog(tmp_path, cfg, 2, 6)  # resumed from step 2: rows 3 and 4 are redone
    for step in range(3, 7):
        log.write(row(step), step)
    log.close()
    with open(tmp_path / "log.csv") as handle:
        assert [int(r["step"]) for r in csv.DictReader(handle)] == [2, 4, 6]
    assert capsys.readouterr().err == ""  # progress off: nothing on stderr


def test_every_shipped_training_config_is_valid():
    files = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.json"))
    assert len(files) >= 9  # train_released, train_small, finetune, default_model, 5 ablations
    for path in files:
        TrainConfig.from_file(path).check()
