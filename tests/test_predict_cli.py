"""``neuroverse3d-predict`` end to end on the small reference model, and its errors."""
import subprocess

import nibabel as nb
import numpy as np
import pytest
import torch

from neuroverse_bids.cli.predict import main
from neuroverse_bids.model import load_checkpoint
from neuroverse_bids.model.intensity import normalise_intensity

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


def _save(path, data, affine=AFFINE):
    nb.save(nb.Nifti1Image(np.asarray(data, dtype=np.float32), affine), str(path))
    return str(path)


@pytest.fixture
def volumes(tmp_path, official_io):
    rng = np.random.default_rng(0)
    target = _save(tmp_path / "target.nii.gz", official_io["target_in"][0, 0].numpy() * 800 + 100)
    images, labels = [], []
    for i in range(3):
        images.append(_save(tmp_path / f"img{i}.nii.gz", official_io["context_in"][0, i, 0].numpy() * 500))
        labels.append(_save(tmp_path / f"lab{i}.nii.gz", official_io["context_out"][0, i, 0].numpy()))
    return tmp_path, target, images, labels, rng


def test_predict_writes_a_mask_with_the_target_geometry(volumes, official_small_ckpt):
    tmp_path, target, images, labels, _ = volumes
    out = tmp_path / "out" / "mask.nii.gz"
    code = main(["--model", str(official_small_ckpt), "--target", target, "--context-images", *images,
                 "--context-labels", *labels, "--output", str(out), "--mini-context-size", "2",
                 "--precision", "float32", "--device", "cpu"])
    assert code == 0
    img = nb.load(str(out))
    assert np.allclose(img.affine, AFFINE) and img.shape == (32, 32, 32)
    assert img.get_data_dtype() == np.uint8
    # same computation by hand through the model API
    model = load_checkpoint(official_small_ckpt)
    t = torch.from_numpy(normalise_intensity(nb.load(target).get_fdata()))[None, None]
    ci = torch.stack([torch.from_numpy(normalise_intensity(nb.load(p).get_fdata())) for p in images])
    co = torch.stack([torch.from_numpy(nb.load(p).get_fdata().astype(np.float32)) for p in labels])
    with torch.inference_mode():
        expected = model(t.float(), ci[None, :, None], co[None, :, None])[0, 0].numpy() > 0.5
    assert np.array_equal(np.asarray(img.dataobj) > 0, expected)


def test_generation_output_is_float(volumes, official_small_ckpt):
    tmp_path, target, images, labels, _ = volumes
    out = tmp_path / "gen.nii.gz"
    assert main(["--model", str(official_small_ckpt), "--target", target, "--context-images", *images[:1],
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
        "odd.nii.gz": rng.random((30, 32, 32)),
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
    truncated.write_bytes((tmp_path / "odd.nii.gz").read_bytes()[:200])
    assert main(["--model", str(official_small_ckpt), "--target", str(truncated), "--context-images",
                 *images, "--context-labels", *labels, "--output", str(tmp_path / "o.nii.gz")]) == 65
    assert not (tmp_path / "o.nii.gz").exists()


def test_shape_not_divisible_is_refused(tmp_path, official_small_ckpt, capsys):
    paths = [_save(tmp_path / f"v{i}.nii.gz", np.random.rand(24, 24, 24)) for i in range(3)]
    code = main(["--model", str(official_small_ckpt), "--target", paths[0], "--context-images", paths[1],
                 "--context-labels", paths[2], "--output", str(tmp_path / "o.nii.gz")])
    assert code == 65 and "not divisible by 16" in capsys.readouterr().err


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
