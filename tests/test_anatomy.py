"""Anatomy-based training data: sources on the grid, synthetic subjects, the written set."""
import json

import nibabel as nb
import numpy as np
import pytest
import torch

from neuroverse_bids.anatomy.cli import main as make_data_main
from neuroverse_bids.anatomy.dataset import write_dataset
from neuroverse_bids.anatomy.sources import (BRAIN_LABELS, TISSUE, Source, atlas_on_grid,
                                             kmeans_1d, mricron_dir, resolve_structure,
                                             structure_groups)
from neuroverse_bids.anatomy.synth import make_subject, subject_seed
from neuroverse_bids.model.training.manifest import load_manifest
from neuroverse_bids.model.training.sampling import EpisodeSampler
from neuroverse_bids.workflows.errors import MissingInputError
from synthetic import ball, phantom_atlas

SHAPE = (16, 16, 16)


def test_labels_and_image_align_and_are_deterministic():
    atlas = phantom_atlas()
    for kind in ("t1", "synth"):
        a = make_subject(atlas, kind, torch.Generator().manual_seed(7))
        b = make_subject(atlas, kind, torch.Generator().manual_seed(7))
        c = make_subject(atlas, kind, torch.Generator().manual_seed(8))
        for key in a:
            assert torch.equal(a[key], b[key]), (kind, key)
        assert not torch.equal(a["dseg"], c["dseg"])  # another seed, another deformation
        assert a["image"].min() >= 0 and a["image"].max() <= 1 and a["image"].dtype == torch.float32
        # the brain mask is the brain labels of the warped label map
        brain = torch.isin(a["dseg"], torch.tensor(BRAIN_LABELS, dtype=torch.int16))
        assert torch.equal(a["brain_mask"].bool(), brain) and brain.sum() > 100
        # image and labels align: the mean intensity differs between tissues far more than
        # within one (each label is one Gaussian in 'synth', one intensity in 't1')
        if kind == "synth":
            means = [a["image"][a["dseg"] == v].mean().item() for v in (0, 3, 4, 5)]
            stds = [a["image"][a["dseg"] == v].std().item() for v in (0, 3, 4, 5)]
            gaps = np.diff(sorted(means))
            assert gaps.max() > 2 * np.mean(stds)
        else:
            inside = a["image"][a["dseg"] == TISSUE["WM"]].mean()
            outside = a["image"][a["dseg"] == 0].mean()
            assert inside > outside + 0.3


def test_excluded_structure_is_gone_before_synthesis():
    atlas = phantom_atlas()
    subject = make_subject(atlas, "synth", torch.Generator().manual_seed(3), exclude=[16])
    assert not (subject["dseg"] == 16).any() and (subject["dseg"] == 15).any()
    assert resolve_structure("Putamen") == [16, 17] and resolve_structure("putamen_l") == [16]
    with pytest.raises(ValueError, match="unknown structure"):
        resolve_structure("cerebellum")


def test_structure_groups():
    groups = structure_groups([3, 4, 5, 14, 15, 16])
    assert groups["brain"] == [3, 4, 5, 14, 15, 16]
    assert groups["GM"] == [4] and groups["Caudate"] == [14, 15] and groups["Putamen"] == [16]
    assert "Thalamus" not in groups


def test_write_dataset_manifest_trains(tmp_path):
    manifest_path = write_dataset(tmp_path, {"tiny": phantom_atlas()}, subjects=3, seed=5,
                                  exclude=["Putamen"])
    manifest = load_manifest(manifest_path)
    assert [d.name for d in manifest.datasets] == ["tiny-t1", "tiny-synth"]
    dataset = manifest.datasets[1]
    assert {"segmentation", "skull-stripping", "gaussian-noise"} <= set(dataset.supported_tasks())
    first = dataset.subjects[0]
    image, dseg = (nb.load(str(manifest.resolve(p))) for p in (first.image, first.label))
    assert image.shape == SHAPE and np.allclose(image.affine, dseg.affine)
    labels = np.asanyarray(dseg.dataobj)
    assert 16 not in labels and 15 in labels  # Putamen left out entirely
    structures = json.loads((tmp_path / "structures.json").read_text())
    assert "Putamen" not in structures["tiny-synth"] and structures["tiny-synth"]["Caudate"] == [15]
    generation = json.loads((tmp_path / "generation.json").read_text())
    assert generation["subject_seeds"]["tiny-synth/sub-002"] == subject_seed(5, "tiny-synth", 1)
    assert generation["excluded_labels"] == [16, 17]
    # the same seed writes the same subject; the trainer's sampler reads the set
    again = write_dataset(tmp_path / "again", {"tiny": phantom_atlas()}, subjects=2, seed=5,
                          exclude=["Putamen"])
    twin = load_manifest(again).datasets[1].subjects[0]
    assert np.array_equal(np.asanyarray(image.dataobj),
                          np.asanyarray(nb.load(str(again.parent / twin.image)).dataobj))
    episode = EpisodeSampler(manifest, SHAPE).sample(torch.Generator().manual_seed(0), 2,
                                                     task="segmentation")
    assert episode.inputs.shape == (3, *SHAPE)
    # other seeds never reuse a subject's generator seed
    assert subject_seed(6, "tiny-synth", 1) != subject_seed(5, "tiny-synth", 1)


def test_atlas_on_grid_keeps_small_structures():
    """A 1 mm source on a 4 mm grid: tissue argmax, structures where they cover half a voxel."""
    shape, c = (48, 48, 48), np.array([23.5, 23.5, 23.5])
    tissue = np.where(ball(shape, c, 20), 4, 0).astype(np.int16)
    tissue[ball(shape, c, 12)] = 5
    structures = np.where(ball(shape, c + [0, 14, 0], 4), 20, 0).astype(np.int16)
    affine = np.eye(4)
    affine[:3, 3] = -c
    source = Source("Balls", (tissue * 20.0).astype(np.float32), tissue, structures, affine)
    atlas = atlas_on_grid(source, nb.Nifti1Image(np.zeros((12, 12, 12), np.uint8),
                                                 np.array([[4, 0, 0, -22], [0, 4, 0, -22],
                                                           [0, 0, 4, -22], [0, 0, 0, 1.0]])))
    volumes = {v: int((atlas.dseg == v).sum()) for v in (4, 5, 20)}
    # expected voxel counts from the source's 1 mm^3 voxels (4 mm voxels: 64 mm^3); the
    # structure is painted over WM and GM, so WM loses the overlap
    true_structure = (structures == 20).sum() / 64
    true_wm = ((tissue == 5) & (structures == 0)).sum() / 64
    assert abs(volumes[20] - true_structure) <= 3
    # a 3-voxel-radius ball loses part of its partial-volume rim to the argmax (convex shapes
    # shrink under smoothing); it must not vanish or swell
    assert 0.7 < volumes[5] / true_wm <= 1.05
    assert 0 <= atlas.image.min() and atlas.image.max() <= 1
    assert np.allclose(kmeans_1d(np.r_[np.full(50, 1.0), np.full(50, 5.0), np.full(50, 9.0)], 3),
                       [1, 5, 9])


def test_missing_mricron_is_exit_66(tmp_path, monkeypatch):
    monkeypatch.setenv("NEUROVERSE3D_MRICRON_DIR", str(tmp_path))
    monkeypatch.setattr("neuroverse_bids.anatomy.sources.MRICRON_DIRS", ())
    with pytest.raises(MissingInputError, match="mricron-data"):
        mricron_dir()
    assert make_data_main([str(tmp_path / "out"), "--subjects", "1", "--sources", "colin27",
                           "--grid", "16", "--voxel-size", "12"]) == 66


def test_real_sources_on_a_coarse_grid(tmp_path):
    """MNI152 (nilearn) and Colin27/AAL (mricron-data) end to end, 16x20x16 at 12 mm."""
    try:
        mricron_dir()
    except MissingInputError:
        pytest.skip("Debian's mricron-data is not installed")
    assert make_data_main([str(tmp_path / "bad"), "--grid", "16", "20"]) == 64  # 1 or 3 sizes
    assert not (tmp_path / "bad").exists()
    assert make_data_main([str(tmp_path), "--subjects", "1", "--grid", "16", "20", "16",
                           "--voxel-size", "12", "--kinds", "synth"]) == 0
    manifest = load_manifest(tmp_path / "manifest.json")
    assert [d.name for d in manifest.datasets] == ["mni152-synth", "colin27-synth"]
    colin = np.asanyarray(nb.load(str(tmp_path / "atlas" / "atlas-Colin27_dseg.nii.gz")).dataobj)
    assert colin.shape == (16, 20, 16)
    assert {1, 2, 3, 4, 5} <= set(np.unique(colin).tolist())
    mni = np.asanyarray(nb.load(str(tmp_path / "atlas" / "atlas-MNI152NLin2009aSym_dseg.nii.gz"))
                        .dataobj)
    assert set(np.unique(mni).tolist()) == {0, 3, 4, 5}
    # both brains in MNI space: their brain masks overlap well on the grid
    a, b = np.isin(colin, BRAIN_LABELS), mni > 0
    assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.8
