"""Label-map training data: the builder (splits, sha256, transforms) and per-episode
SynthSeg-style synthesis (shared contrast, different anatomy, determinism, task masks), the
sampler and two training steps. Toy "brains" are nested spheres with FreeSurfer codes."""
import json
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest
import torch

from neuroverse_bids.anatomy.labelmaps import (block_majority, build_labelmap_data,
                                               find_label_maps, main as build_main)
from neuroverse_bids.model.hashing import file_sha256
from neuroverse_bids.model.training.augment import AugmentConfig
from neuroverse_bids.model.training.cli import main as train_main
from neuroverse_bids.model.training.labelmap_synthesis import (
    TISSUES, LabelmapConfig, choose_segmentation, draw_protocol, is_brain, labelmap_episode,
    synthesize)
from neuroverse_bids.model.training.manifest import LABELMAP, load_manifest, save_manifest
from neuroverse_bids.model.training.sampling import EpisodeSampler
from neuroverse_bids.model.training.synthesis import TASKS
from neuroverse_bids.workflows.geometry import resample

GRID = (16, 16, 16)
#: no deformation, blur, bias, noise, gamma or texture: each label is one value
FLAT = LabelmapConfig(scale=(1.0, 1.0), rotation_deg=0.0, deform_voxels=0.0, blur=(0.0, 0.0),
                      thick_prob=0.0, log_gamma=0.0, bias_scale=(0.0, 0.0),
                      noise_std=(0.0, 0.0), std=(0.0, 0.0), random_std=(0.0, 0.0))


def toy_brain(n: int = 24, scale: float = 1.0, shift: float = 0.0) -> np.ndarray:
    """An ``n``^3 int16 map: head 507, CSF 24, cortex 3/42, WM 2/41, ventricles 4/43,
    thalami 10/49, hippocampi 17/53 (left: x below the midline). ``scale`` and ``shift``
    (voxels) make different people."""
    axes = [np.arange(n) - (n - 1) / 2] * 3
    z, y, x = np.meshgrid(*axes, indexing="ij")
    r = np.sqrt(z ** 2 + y ** 2 + (x - shift) ** 2) / (n / 2)
    left = x < shift
    side = lambda l, rt: np.where(left, l, rt)  # noqa: E731
    labels = np.zeros((n,) * 3, np.int16)
    for radius, value in ((0.95, 507), (0.85 * scale, 24), (0.75 * scale, side(3, 42)),
                          (0.6 * scale, side(2, 41)), (0.22 * scale, side(4, 43))):
        labels = np.where(r < radius, value, labels)
    for cx, code in ((-0.3, 10), (0.3, 49)):
        labels[np.sqrt(z ** 2 + (y + 0.25 * n) ** 2 + (x - shift - cx * n / 2) ** 2) < 0.1 * n * scale] = code
    labels[np.sqrt((z + 0.25 * n) ** 2 + y ** 2 + (x - shift) ** 2) < 0.08 * n * scale] = 17
    return labels


def write_toy_maps(folder: Path, count: int = 6) -> Path:
    """``count`` toy maps, 6 mm voxels in LIA order like SynthSeg's, centred on the MNI brain."""
    folder.mkdir(parents=True, exist_ok=True)
    affine = np.array([[-6.0, 0, 0, 69], [0, 0, 6.0, -87], [0, -6.0, 0, 87], [0, 0, 0, 1]])
    for index in range(count):
        data = toy_brain(24, 0.9 + 0.02 * index, (index % 3) - 1.0)
        nb.save(nb.Nifti1Image(data.astype(np.float32), affine),
                str(folder / f"training_seg_{index + 1:02d}.nii.gz"))
    return folder


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("labelmaps")
    source = write_toy_maps(root / "source", 10)
    manifests = build_labelmap_data(source, root / "out", GRID, 9.0, held_out=[9, 10],
                                    validation=[5, 6, 7, 8], registration="none",
                                    log=lambda *_: None)
    return source, root / "out", manifests


def maps_tensor(count=3, n=24):
    return [torch.from_numpy(toy_brain(n, 0.9 + 0.05 * i, i - 1.0)) for i in range(count)]


def test_builder_splits_sha256_and_grid(built):
    source, out, manifests = built
    train, val, held = (load_manifest(manifests[k]) for k in ("train", "validation", "heldout"))
    ids = {name: [s.id for s in m.datasets[0].subjects] for name, m in
           (("train", train), ("val", val), ("held", held))}
    assert ids == {"train": ["map-01", "map-02", "map-03", "map-04"],
                   "val": ["map-05", "map-06", "map-07", "map-08"], "held": ["map-09", "map-10"]}
    for manifest in (train, val, held):
        assert manifest.datasets[0].kind == LABELMAP
        assert manifest.datasets[0].supported_tasks() == list(TASKS)
    generation = json.loads((out / "generation.json").read_text())
    files = find_label_maps(source)
    assert generation["source"]["files"] == {p.name: file_sha256(p) for p in files.values()}
    assert generation["splits"]["heldout"] == ["map-09", "map-10"]
    dseg = nb.load(str(out / "maps" / "map-01_dseg.nii.gz"))
    assert dseg.shape == GRID and dseg.get_data_dtype() == np.int16
    codes = set(np.unique(np.asanyarray(dseg.dataobj)).tolist())
    assert {0, 2, 3, 41, 42, 507} <= codes  # thin shells survive the block majority
    structures = json.loads((out / "structures.json").read_text())["*"]
    assert structures["cortex"] == [3, 42] and structures["Hippocampus"] == [17, 53]
    with pytest.raises(ValueError, match="JSON"):
        save_manifest(train, out / "copy.tsv")


def test_held_out_maps_never_train_or_validate(tmp_path):
    source = write_toy_maps(tmp_path / "source", 4)
    code = build_main([str(source), str(tmp_path / "out"), "--grid", "8", "--voxel-size", "18",
                       "--held-out", "4", "--validation", "4", "--registration", "none"])
    assert code == 64  # a map cannot be both
    assert build_main([str(source), str(tmp_path / "out"), "--grid", "8", "--voxel-size", "18",
                       "--held-out", "4", "--validation", "--registration", "none"]) == 0
    train = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [s["id"] for s in train["datasets"][0]["subjects"]] == ["map-01", "map-02", "map-03"]
    assert not (tmp_path / "out" / "manifest-validation.json").exists()


def test_block_majority():
    fine = np.zeros((4, 4, 2), np.int16)
    fine[:2, :2, :] = 3
    fine[0, 0, 0] = 5
    assert block_majority(fine, 2).tolist() == [[[3], [0]], [[0], [0]]]


def test_one_contrast_per_episode_different_anatomy():
    maps = maps_tensor(3)
    inputs, outputs, classes, protocol = labelmap_episode(
        "segmentation", maps, torch.Generator().manual_seed(3), FLAT)
    for code in (2, 3, 24, 41, 507):   # same label, same intensity in every member
        values = [float(inputs[i][maps[i] == code].mean()) for i in range(3)]
        assert max(values) - min(values) < 1e-5, (code, values)
    assert not torch.equal(inputs[0], inputs[1])  # different people
    # hemispheres share their generation class
    assert abs(float(inputs[0][maps[0] == 2].mean()) - float(inputs[0][maps[0] == 41].mean())) < 1e-5
    assert torch.equal(outputs, torch.stack([torch.isin(m, torch.tensor(classes)) for m in maps]).float())


def test_intensities_vary_between_episodes_and_seeds_repeat():
    maps = maps_tensor(3)
    draws = [labelmap_episode("segmentation", maps, torch.Generator().manual_seed(s))
             for s in (0, 0, 1)]
    assert torch.equal(draws[0][0], draws[1][0]) and torch.equal(draws[0][1], draws[1][1])
    assert not torch.equal(draws[0][0], draws[2][0])
    means = [draw_protocol([0, 2, 3, 24], torch.Generator().manual_seed(s), FLAT).means["wm"]
             for s in range(8)]
    assert max(means) - min(means) > 0.1
    modes = {draw_protocol([2], torch.Generator().manual_seed(s), FLAT).mode for s in range(60)}
    assert modes == {"random", "t1", "t2", "pd"}


def test_contrast_priors_order_tissues():
    maps = maps_tensor(1)[0]
    g = torch.Generator().manual_seed(0)
    flat = LabelmapConfig(**{**FLAT.__dict__, "mean_jitter": 0.0})
    codes = torch.unique(maps).tolist()
    t1 = synthesize(maps, draw_protocol(codes, g, flat, "t1"), g)
    t2 = synthesize(maps, draw_protocol(codes, g, flat, "t2"), g)
    level = lambda img, code: float(img[maps == code].mean())  # noqa: E731
    assert level(t1, 2) > level(t1, 3) > level(t1, 24)
    assert level(t2, 24) > level(t2, 3) > level(t2, 2)


def test_segmentation_choices_are_tissues_structures_or_merges():
    labels = torch.from_numpy(toy_brain())
    present = set(torch.unique(labels).tolist()) - {0}
    kinds = set()
    for seed in range(80):
        name, codes = choose_segmentation(labels, torch.Generator().manual_seed(seed), FLAT)
        assert codes and set(codes) <= present
        if name in TISSUES:
            assert codes == sorted(present & set(TISSUES[name]))
            kinds.add("tissue")
        elif "+" in name:
            kinds.add("merge")
        else:
            kinds.add("structure")
        if name == "Cerebral-Cortex":
            assert codes == [3, 42]
    assert kinds == {"tissue", "merge", "structure"}


def test_skull_stripping_and_modality_transform():
    maps = maps_tensor(2)
    inputs, outputs, _, _ = labelmap_episode("skull-stripping", maps,
                                             torch.Generator().manual_seed(1), FLAT)
    for i in range(2):
        assert float(outputs[i][~is_brain(maps[i])].abs().max()) == 0
        assert float(outputs[i][is_brain(maps[i])].max()) > 0
    inputs, outputs, _, _ = labelmap_episode("modality-transform", maps,
                                             torch.Generator().manual_seed(1), FLAT)
    assert not torch.allclose(inputs, outputs)


def test_sampler_draws_every_task_and_training_runs(built, tmp_path):
    _, out, manifests = built
    sampler = EpisodeSampler(load_manifest(manifests["train"]), GRID, augment=AugmentConfig())
    assert sampler.tasks == list(TASKS)
    for index, task in enumerate(TASKS):
        episode = sampler.sample(torch.Generator().manual_seed(index), 2, task=task)
        assert episode.inputs.shape == (3, *GRID) and len(set(episode.subjects)) == 3
        assert 0 <= float(episode.inputs.min()) and float(episode.inputs.max()) <= 1
    again = EpisodeSampler(load_manifest(manifests["train"]), GRID).sample(
        torch.Generator().manual_seed(0), 3, task="segmentation")
    twice = EpisodeSampler(load_manifest(manifests["train"]), GRID).sample(
        torch.Generator().manual_seed(0), 3, task="segmentation")
    assert torch.equal(again.inputs, twice.inputs) and again.classes == twice.classes
    code = train_main(["--manifest", str(manifests["train"]), "--val-manifest",
                       str(manifests["validation"]), "--output-dir", str(tmp_path / "run"),
                       "--channels", "4", "8", "--grid", "16", "16", "16", "--steps", "2",
                       "--stage1-steps", "1", "--val-every", "2", "--val-episodes", "2",
                       "--no-progress", "--no-precision-record"])
    assert code == 0 and (tmp_path / "run" / "model.safetensors").is_file()


def test_registration_keeps_and_reuses_transforms(tmp_path):
    """The (sloppy) registration of a map's synthetic T1 puts its brain on the template's;
    the transforms are kept, and a second build reuses those of the same files."""
    source = write_toy_maps(tmp_path / "source", 2)
    build_labelmap_data(source, tmp_path / "a", GRID, 9.0, [], [], "sloppy", log=lambda *_: None)
    generation = json.loads((tmp_path / "a" / "generation.json").read_text())
    record = generation["maps"]["map-01"]
    assert (tmp_path / "a" / record["transform"]).is_file()
    assert (tmp_path / "a" / record["inverse"]).is_file() and not record["reused"]
    build_labelmap_data(source, tmp_path / "b", GRID, 9.0, [], [], "sloppy",
                        transforms=tmp_path / "a" / "transforms", log=lambda *_: None)
    assert json.loads((tmp_path / "b" / "generation.json").read_text())["maps"]["map-01"]["reused"]
    # the affine brings the (smaller) toy brain onto the template's brain mask
    dseg = tmp_path / "a" / "maps" / "map-01_dseg.nii.gz"
    mask = next((tmp_path / "a" / "sourcedata").rglob("*_res-1_desc-brain_mask.nii.gz"))
    resample(mask, dseg, None, tmp_path / "mask.nii.gz", "linear")
    template = np.asanyarray(nb.load(str(tmp_path / "mask.nii.gz")).dataobj) > 0.5
    labels = np.asanyarray(nb.load(str(dseg)).dataobj)
    brain = (labels > 0) & (labels < 500)
    assert 2 * (brain & template).sum() / (brain.sum() + template.sum()) > 0.8
