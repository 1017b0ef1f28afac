"""``neuroverse3d-predict`` end to end on the small reference model, and its errors."""
import subprocess

import nibabel as nb
import numpy as np
import pytest
import torch

from neuroverse_bids.cli.predict import main
from neuroverse_bids.model import load_checkpoint
from neuroverse_bids.model.intensity import normalise_intensity
from neuroverse_bids.model.predictor import Predictor

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


def _save(path, data, affine=AFFINE):
    nb.save(nb.Nifti1Image(np.asarray(data, dtype=np.float32), affine), str(path))
    return str(path)


@pytest.fixture(scope="module")
def grid_ckpt(tmp_path_factory, official_small_ckpt):
    """The small reference model with its grid recorded as the test volumes' (32^3, 2 mm): the
    volumes are then used as they are."""
    from neuroverse_bids.model import save_checkpoint

    return save_checkpoint(load_checkpoint(official_small_ckpt),
                           tmp_path_factory.mktemp("grid") / "small.safetensors",
                           grid={"shape": [32, 32, 32], "voxel_size_mm": 2.0})


@pytest.fixture
def volumes(tmp_path, official_io):
    rng = np.random.default_rng(0)
    target = _save(tmp_path / "target.nii.gz", official_io["target_in"][0, 0].numpy() * 800 + 100)
    images, labels = [], []
    for i in range(3):
        images.append(_save(tmp_path / f"img{i}.nii.gz", official_io["context_in"][0, i, 0].numpy() * 500))
        labels.append(_save(tmp_path / f"lab{i}.nii.gz", official_io["context_out"][0, i, 0].numpy()))
    return tmp_path, target, images, labels, rng


def test_predict_writes_a_mask_with_the_target_geometry(volumes, grid_ckpt):
    tmp_path, target, images, labels, _ = volumes
    out = tmp_path / "out" / "mask.nii.gz"
    code = main(["--model", str(grid_ckpt), "--target", target, "--context-images", *images,
                 "--context-labels", *labels, "--output", str(out), "--mini-context-size", "2",
                 "--precision", "float32", "--device", "cpu"])
    assert code == 0
    img = nb.load(str(out))
    assert np.allclose(img.affine, AFFINE) and img.shape == (32, 32, 32)
    assert img.get_data_dtype() == np.uint8
    # same computation by hand through the model API
    model = load_checkpoint(grid_ckpt)
    t = torch.from_numpy(normalise_intensity(nb.load(target).get_fdata()))[None, None]
    ci = torch.stack([torch.from_numpy(normalise_intensity(nb.load(p).get_fdata())) for p in images])
    co = torch.stack([torch.from_numpy(nb.load(p).get_fdata().astype(np.float32)) for p in labels])
    with torch.inference_mode():
        expected = model(t.float(), ci[None, :, None], co[None, :, None])[0, 0].numpy() > 0.5
    assert np.array_equal(np.asarray(img.dataobj) > 0, expected)


def test_generation_output_is_float(volumes, grid_ckpt):
    tmp_path, target, images, labels, _ = volumes
    out = tmp_path / "gen.nii.gz"
    assert main(["--model", str(grid_ckpt), "--target", target, "--context-images", *images[:1],
                 "--context-labels", *labels[:1], "--output", str(out), "--task", "gen",
                 "--precision", "float32"]) == 0
    assert nb.load(str(out)).get_data_dtype() == np.float32


def test_mismatched_list_lengths_are_a_usage_error(volumes, official_small_ckpt, capsys):
    tmp_path, target, images, labels, _ = volumes
    code = main(["--model", str(official_small_ckpt), "--target", target, "--context-images", *images,
                 "--context-labels", *labels[:2], "--output", str(tmp_path / "o.nii.gz")])
    assert code == 64
    assert "3 context images but 2 context labels" in capsys.readouterr().err


def test_bad_volumes_give_exit_65_naming_the_file(volumes, official_small_ckpt, capsys):
    tmp_path, target, images, labels, rng = volumes
    cases = {
        "four_d.nii.gz": rng.random((32, 32, 32, 2)),
        "nan.nii.gz": np.full((32, 32, 32), np.nan),
    }
    for name, data in cases.items():
        bad = _save(tmp_path / name, data)
        code = main(["--model", str(official_small_ckpt), "--target", bad, "--context-images", *images,
                     "--context-labels", *labels, "--output", str(tmp_path / "o.nii.gz")])
        assert code == 65, name
        assert name in capsys.readouterr().err
    truncated = tmp_path / "trunc.nii.gz"
    truncated.write_bytes((tmp_path / "nan.nii.gz").read_bytes()[:200])
    assert main(["--model", str(official_small_ckpt), "--target", str(truncated), "--context-images",
                 *images, "--context-labels", *labels, "--output", str(tmp_path / "o.nii.gz")]) == 65
    assert not (tmp_path / "o.nii.gz").exists()


def test_missing_model_and_missing_input(volumes, tmp_path, capsys, official_small_ckpt):
    _, target, images, labels, _ = volumes
    code = main(["--model", str(tmp_path / "none.ckpt"), "--target", target, "--context-images", *images,
                 "--context-labels", *labels, "--output", str(tmp_path / "o.nii.gz")])
    assert code == 66 and "none.ckpt" in capsys.readouterr().err
    code = main(["--model", str(official_small_ckpt), "--target", str(tmp_path / "no.nii.gz"),
                 "--context-images", *images, "--context-labels", *labels, "--output", "o.nii.gz"])
    assert code == 66


def test_console_script_is_installed(volumes, official_small_ckpt):
    result = subprocess.run(["neuroverse3d-predict", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "--mini-context-size" in result.stdout


def test_usage_errors_exit_64(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--target"])
    assert info.value.code == 64
    from neuroverse_bids.cli.manifest import main as manifest

    with pytest.raises(SystemExit) as info:
        manifest(["--no-such-option"])
    assert info.value.code == 64


# --- volumes as they come --------------------------------------------------------------------

def _rotation(degrees, shift):
    angle = np.deg2rad(degrees)
    affine = np.eye(4)
    affine[:3, :3] = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0],
                               [0, 0, 1]]) * 2.0
    affine[:3, 3] = shift
    return affine


def _blob(shape, affine, radius_mm=25.0):
    """A bright ball at world (0, 0, 0) and its mask, sampled on the grid ``affine``."""
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    inside = np.linalg.norm(world, axis=-1) < radius_mm
    return inside * 800.0 + 100.0, inside.astype(np.uint8)


@pytest.fixture(scope="module")
def small_grid_model(tmp_path_factory):
    from neuroverse_bids.model import Neuroverse3D, save_checkpoint

    torch.manual_seed(0)
    return save_checkpoint(Neuroverse3D(channels=(4, 8, 8)), tmp_path_factory.mktemp("sm") / "m.safetensors",
                           grid={"shape": [32, 32, 32], "voxel_size_mm": 4.0})


def test_raw_sized_volumes_on_different_grids(tmp_path, small_grid_model):
    """A 45x54x45 target (not divisible by 8) and contexts on other grids (rotated, shifted,
    other shapes): brought onto the model grid, the result written on the target's grid."""
    target_affine = _rotation(0, [-45.0, -54.0, -45.0])
    target = _save(tmp_path / "t.nii.gz", _blob((45, 54, 45), target_affine)[0], target_affine)
    images, labels = [], []
    for i, (shape, degrees) in enumerate((((40, 48, 44), 10), ((50, 50, 50), -15))):
        affine = _rotation(degrees, [-40.0 - i, -48.0, -44.0])
        image, mask = _blob(shape, affine)
        images.append(_save(tmp_path / f"i{i}.nii.gz", image, affine))
        labels.append(_save(tmp_path / f"l{i}.nii.gz", mask, affine))
    out = tmp_path / "o.nii.gz"
    assert main(["--model", str(small_grid_model), "--target", target, "--context-images", *images,
                 "--context-labels", *labels, "--output", str(out), "--precision", "float32",
                 "--device", "cpu"]) == 0
    img = nb.load(str(out))
    assert img.shape == (45, 54, 45) and np.allclose(img.affine, target_affine)
    assert img.get_data_dtype() == np.uint8


def test_the_model_grid_round_trip_keeps_the_anatomy(tmp_path, small_grid_model):
    """What the model sees lies where the anatomy is: the target's ball, taken onto the model
    grid and back with the same code, overlaps the original."""
    import argparse

    from neuroverse_bids.cli.predict import OnModelGrid

    affine = _rotation(20, [-45.0, -50.0, -40.0])
    image, mask = _blob((45, 54, 45), affine)
    target = _save(tmp_path / "t.nii.gz", image, affine)
    grid = OnModelGrid(argparse.Namespace(register=False), [32, 32, 32], 4.0, None, tmp_path)
    on_grid, reference, xfm = grid.image(nb.load(target), "target")
    assert on_grid.shape == (32, 32, 32) and np.allclose(np.linalg.norm(reference.affine[:3, :3], axis=0), 4.0)
    back = grid.back(on_grid[None] > 450, reference, nb.load(target), xfm)[0] > 0.5
    dice = 2 * np.sum(back & (mask > 0)) / (back.sum() + mask.sum())
    assert dice > 0.9, dice


def test_structures_are_picked_out_of_label_maps(volumes, grid_ckpt, monkeypatch):
    """``--dseg-label NAME`` (through the dseg table beside the labels) and ``--label-value N``:
    the model sees one mask per structure; the output carries the structures' values."""
    tmp_path, target, images, _, _ = volumes
    rng = np.random.default_rng(1)
    label_maps = [_save(tmp_path / f"dseg{i}.nii.gz", rng.integers(0, 4, (32, 32, 32))) for i in range(3)]
    (tmp_path / "dseg.tsv").write_text("index\tname\n1\tGM\n2\tWM\n3\tCSF\n")
    seen = {}
    real = Predictor.predict

    def spy(self, target_volume, context_images, context_labels, *rest, **kwargs):
        seen["labels"] = [[np.asarray(volume) for volume in structure] for structure in context_labels]
        return real(self, target_volume, context_images, context_labels, *rest, **kwargs)

    monkeypatch.setattr(Predictor, "predict", spy)
    out = tmp_path / "picked.nii.gz"
    assert main(["--model", str(grid_ckpt), "--target", target, "--context-images", *images,
                 "--context-labels", *label_maps, "--dseg-label", "WM", "--label-value", "3",
                 "--output", str(out), "--precision", "float32"]) == 0
    wm, csf = seen["labels"]
    for i, path in enumerate(label_maps):
        data = nb.load(path).get_fdata()
        assert np.array_equal(wm[i], (data == 2).astype(np.float32))
        assert np.array_equal(csf[i], (data == 3).astype(np.float32))
    assert set(np.unique(np.asarray(nb.load(str(out)).dataobj))) <= {0, 2, 3}


def test_unknown_structure_names_the_table(volumes, grid_ckpt, capsys):
    tmp_path, target, images, labels, _ = volumes
    (tmp_path / "dseg.tsv").write_text("index\tname\n1\tGM\n")
    code = main(["--model", str(grid_ckpt), "--target", target, "--context-images", *images,
                 "--context-labels", *labels, "--dseg-label", "Thalamus", "--output",
                 str(tmp_path / "o.nii.gz")])
    assert code == 65 and "dseg.tsv" in capsys.readouterr().err


def test_bundled_model_registers_demo_volumes(demo_dataset, templateflow_home, tmp_path, monkeypatch):
    """The default model (no --model) with --register on raw-sized demo T1w images (75x105x82,
    2.5 mm): the brain of sub-01 from two context subjects. Measured Dice 0.984."""
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(templateflow_home))
    bids, labels = demo_dataset / "bids", demo_dataset / "derivatives" / "labels"
    out = tmp_path / "brain.nii.gz"
    assert main(["--target", str(bids / "sub-01" / "anat" / "sub-01_T1w.nii.gz"),
                 "--context-images", *[str(bids / f"sub-0{i}" / "anat" / f"sub-0{i}_T1w.nii.gz") for i in (2, 3)],
                 "--context-labels", *[str(labels / f"sub-0{i}" / "anat" / f"sub-0{i}_desc-brain_mask.nii.gz")
                                       for i in (2, 3)],
                 "--register", "--sloppy", "--output", str(out), "--precision", "float32",
                 "--device", "cpu", "--mem", "3GB"]) == 0
    truth = nb.load(str(labels / "sub-01" / "anat" / "sub-01_desc-brain_mask.nii.gz"))
    predicted = nb.load(str(out))
    assert predicted.shape == truth.shape and np.allclose(predicted.affine, truth.affine)
    a, b = np.asarray(predicted.dataobj) > 0, np.asarray(truth.dataobj) > 0
    dice = 2 * np.sum(a & b) / (a.sum() + b.sum())
    print("brain Dice:", round(float(dice), 3))
    assert dice > 0.9


# --- refused inputs and reading each file once ----------------------------------------------

def test_a_label_map_without_a_picked_structure_is_refused(volumes, grid_ckpt, capsys):
    """Labels {0, 1, 3} used as given would be read as a mask with a 3 in it: exit 65 before any
    work, one line naming the file, the labels found and the option that picks one; a {0, 1}
    mask and a picked structure (by value) run."""
    tmp_path, target, images, labels, rng = volumes
    label_map = _save(tmp_path / "dseg.nii.gz", rng.choice([0, 1, 3], (32, 32, 32)))
    args = ["--model", str(grid_ckpt), "--target", target, "--context-images", *images,
            "--context-labels", labels[0], label_map, labels[2], "--precision", "float32"]
    out = tmp_path / "o.nii.gz"
    assert main(args + ["--output", str(out)]) == 65
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "dseg.nii.gz" in err and "0, 1, 3" in err
    assert "--dseg-label N" in err and not out.exists()
    assert main(args + ["--output", str(out), "--dseg-label", "3"]) == 0
    assert set(np.unique(np.asarray(nb.load(str(out)).dataobj))) <= {0, 3}


@pytest.mark.parametrize("shape", [(32, 32, 1), (32, 32)])
def test_a_2d_or_one_slice_image_is_refused_with_the_right_hint(volumes, grid_ckpt, capsys, shape):
    """A one-slice volume or a 2D image cannot be segmented in 3D: exit 65 naming the file, its
    shape and the fix (a 3D volume with several slices in each direction), as target or context."""
    tmp_path, target, images, labels, rng = volumes
    flat = _save(tmp_path / "flat.nii.gz", rng.random(shape) * 500)
    for target_file, context in ((flat, images[0]), (target, flat)):
        code = main(["--model", str(grid_ckpt), "--target", target_file, "--context-images", context,
                     "--context-labels", labels[0], "--output", str(tmp_path / "o.nii.gz")])
        err = capsys.readouterr().err
        assert code == 65, err
        assert "flat.nii.gz" in err and str(shape) in err and "several slices in each direction" in err
        assert "4D" not in err and "extract one volume" not in err


def test_each_input_file_is_decoded_once(volumes, grid_ckpt, monkeypatch):
    """The target and every context file are read (decoded) once, whatever the geometry path;
    the network still gets each context pair only when its chunk runs."""
    import nibabel.arrayproxy

    tmp_path, target, images, labels, _ = volumes
    reads = []
    real = nibabel.arrayproxy.ArrayProxy.__array__

    def counting(self, *args, **kwargs):
        reads.append(str(self.file_like))
        return real(self, *args, **kwargs)

    shifted = AFFINE.copy()
    shifted[:3, 3] = 3.0  # another grid: every volume goes through the resampler
    moved = [_save(tmp_path / f"moved{i}.nii.gz", nb.load(p).get_fdata(), shifted) for i, p in enumerate(images)]
    monkeypatch.setattr(nibabel.arrayproxy.ArrayProxy, "__array__", counting)
    for context_images in (images, moved):
        reads.clear()
        assert main(["--model", str(grid_ckpt), "--target", target, "--context-images", *context_images,
                     "--context-labels", *labels, "--output", str(tmp_path / "o.nii.gz"),
                     "--precision", "float32", "--mini-context-size", "1"]) == 0
        inputs = [target, *context_images, *labels]
        assert sorted(r for r in reads if r in inputs) == sorted(inputs), context_images
