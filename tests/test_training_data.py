"""Manifest I/O, task support, the episode sampler and target rotations."""
import json
from collections import Counter

import pytest
import torch

from neuroverse_bids.model.training.augment import AugmentConfig
from neuroverse_bids.model.training.manifest import (DatasetEntry, Manifest, Subject,
                                                     load_manifest, save_manifest)
from neuroverse_bids.model.training.sampling import (DEFAULT_RATES, EpisodeSampler,
                                                     choose_classes, choose_structure, rotations)
from neuroverse_bids.model.training.synthesis import GENERATION_TASKS, TASKS
from synthetic import make_toy_dataset

SHAPE = (16, 16, 16)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_dataset(tmp_path_factory.mktemp("toy"), subjects=5, shape=SHAPE, seed=1)


def test_json_and_tsv_round_trip(toy, tmp_path):
    manifest = load_manifest(toy)
    assert manifest.datasets[0].supported_tasks() == list(TASKS)
    tsv = save_manifest(Manifest(manifest.datasets, manifest.root), toy.parent / "copy.tsv")
    again = load_manifest(tsv)
    assert again.to_dict() == manifest.to_dict()
    assert json.loads(toy.read_text())["format"] == "neuroverse3d-manifest"
    (toy.parent / "copy.tsv").unlink()


def test_supported_tasks_follow_the_files():
    plain = DatasetEntry("a", [Subject("s1", "x.nii"), Subject("s2", "y.nii")])
    assert plain.supported_tasks() == ["bias-field", "gaussian-noise", "salt-pepper",
                                       "inpainting", "super-resolution"]
    mixed = DatasetEntry("b", [Subject("s1", "x", label="l"), Subject("s2", "y")], space="MNI152NLin6Asym")
    assert "segmentation" not in mixed.supported_tasks() and "2d-to-3d" in mixed.supported_tasks()
    declared = DatasetEntry("c", plain.subjects, tasks=["inpainting", "segmentation"])
    assert declared.supported_tasks() == ["inpainting"]


def test_missing_files_and_unknown_tasks_are_reported(tmp_path):
    manifest = Manifest([DatasetEntry("d", [Subject("s1", "nope.nii.gz")])], tmp_path)
    path = save_manifest(manifest, tmp_path / "m.json")
    with pytest.raises(ValueError, match="file not found"):
        load_manifest(path)
    manifest.datasets[0].tasks = ["colourise"]
    with pytest.raises(ValueError, match="unknown tasks"):
        manifest.check()


def test_task_rates():
    assert DEFAULT_RATES["segmentation"] == 2
    assert all(DEFAULT_RATES[t] == 1 for t in GENERATION_TASKS)


def test_task_sampling_follows_the_rates(toy):
    sampler = EpisodeSampler(load_manifest(toy), SHAPE)
    g = torch.Generator().manual_seed(0)
    counts = Counter(sampler.sample_task(g) for _ in range(5000))
    share = counts["segmentation"] / 5000
    assert share == pytest.approx(2 / 10, abs=0.03)  # 2 out of 2 + 8 * 1
    assert counts["inpainting"] / 5000 == pytest.approx(1 / 10, abs=0.02)


def test_choose_classes_single_or_union():
    label = torch.arange(15).view(15, 1, 1).expand(15, 2, 2)
    g = torch.Generator().manual_seed(0)
    draws = [choose_classes(label, g) for _ in range(400)]
    assert all(1 <= len(d) <= 10 and 0 not in d for d in draws)
    singles = sum(len(d) == 1 for d in draws) / 400
    assert 0.5 < singles < 0.65  # 0.5 single + 0.5 * P(union of size 1) = 0.55
    assert max(len(d) for d in draws) == 10


def test_choose_structure_takes_a_named_structure_present_in_the_label():
    label = torch.tensor([0, 3, 4, 5, 10, 11]).view(6, 1, 1)
    named = {"brain": [3, 4, 5], "Hippocampus": [10, 11], "Putamen": [16, 17]}
    g = torch.Generator().manual_seed(0)
    draws = Counter(tuple(choose_structure(label, named, g)) for _ in range(300))
    assert set(draws) == {(3, 4, 5), (10, 11)}  # the putamen is absent from this label map
    assert min(draws.values()) > 100
    assert choose_structure(label, {"Putamen": [16, 17]}, g) == []


def test_episode_shapes_values_and_determinism(toy):
    sampler = EpisodeSampler(load_manifest(toy), SHAPE)
    for task in TASKS:
        a = sampler.sample(torch.Generator().manual_seed(3), 3, task=task)
        b = sampler.sample(torch.Generator().manual_seed(3), 3, task=task)
        assert a.task == task and len(set(a.subjects)) == 4
        assert a.inputs.shape == a.outputs.shape == (4, *SHAPE)
        assert torch.equal(a.inputs, b.inputs) and torch.equal(a.outputs, b.outputs)
        assert a.inputs.min() >= 0 and a.inputs.max() <= 1
    plain = EpisodeSampler(load_manifest(toy), SHAPE, augment=AugmentConfig.disabled())
    seg = plain.sample(torch.Generator().manual_seed(3), 3, task="segmentation")
    label = plain.load(f"{seg.subjects[0]}/anat/{seg.subjects[0]}_dseg.nii.gz", "label")
    assert seg.classes and torch.equal(seg.outputs[0], torch.isin(label, torch.tensor(seg.classes)).float())
    # a group larger than the dataset: every subject once
    big = sampler.sample(torch.Generator().manual_seed(4), 7)
    assert big.inputs.shape[0] == 5 and len(set(big.subjects)) == 5


def test_grid_resampling(toy):
    sampler = EpisodeSampler(load_manifest(toy), (8, 8, 8))
    episode = sampler.sample(torch.Generator().manual_seed(5), 2, task="segmentation")
    assert episode.inputs.shape == (3, 8, 8, 8)


def test_rotations_every_member_is_target_once():
    inputs = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 2, 2, 2)
    batch = rotations(inputs, inputs * 10)
    assert batch["target_in"].shape == (4, 1, 2, 2, 2)
    assert batch["context_in"].shape == (4, 3, 1, 2, 2, 2)
    for t in range(4):
        assert batch["target_in"][t].unique().item() == t
        ctx = sorted(batch["context_in"][t, :, 0, 0, 0, 0].tolist())
        assert ctx == [i for i in range(4) if i != t]
        assert torch.equal(batch["context_out"][t], batch["context_in"][t] * 10)
    assert rotations(inputs, inputs, targets=2)["target_in"].shape[0] == 2
    with pytest.raises(ValueError):
        rotations(inputs[:1], inputs[:1])
