"""The synthetic demo dataset: layout, labels, validity, determinism and its command."""
import json
import shutil
import subprocess

import nibabel as nb
import numpy as np
import pytest

from neuroverse_bids.cli.demo_data import main
from neuroverse_bids.demo import CONTEXT_SPEC, make_demo_dataset

SUBJECTS = ["sub-01", "sub-02", "sub-03", "sub-04"]


def _files(out, sub):
    labels = out / "derivatives" / "labels" / sub / "anat"
    return (out / "bids" / sub / "anat" / f"{sub}_T1w.nii.gz",
            labels / f"{sub}_desc-brain_mask.nii.gz", labels / f"{sub}_dseg.nii.gz")


def test_layout_and_spec(demo_dataset):
    spec = json.loads((demo_dataset / "context-spec.json").read_text())
    assert spec == {
        "task": "segmentation", "images": {"dataset": "bids", "suffix": "T1w"},
        "labels": {"dataset": "derivatives/labels"},
        "structures": [{"name": "brain", "mask": "brain"}, {"name": "GM", "dseg": "GM"},
                       {"name": "WM", "dseg": "WM"}],
        "num_contexts": 3, "seed": 0}
    assert (demo_dataset / "derivatives/labels/dseg.tsv").read_text() == \
        "index\tname\n1\tGM\n2\tWM\n"
    description = json.loads((demo_dataset / "derivatives/labels/dataset_description.json")
                             .read_text())
    assert description["DatasetType"] == "derivative"
    rows = (demo_dataset / "bids/participants.tsv").read_text().splitlines()
    assert [r.split("\t")[0] for r in rows[1:]] == SUBJECTS
    assert sorted(p.name for p in (demo_dataset / "bids").glob("sub-*")) == SUBJECTS
    tpl = demo_dataset / "templateflow/tpl-MNI152NLin2009aSym"
    assert (tpl / "tpl-MNI152NLin2009aSym_res-1_T1w.nii.gz").is_file()


def test_subjects_and_labels(demo_dataset):
    truth = json.loads((demo_dataset / "sourcedata/demo_truth.json").read_text())["per_subject"]
    orientations = []
    for sub in SUBJECTS:
        t1w, mask, dseg = (nb.load(str(p)) for p in _files(demo_dataset, sub))
        for label in (mask, dseg):  # labels live on the T1w's grid
            assert label.shape == t1w.shape and np.allclose(label.affine, t1w.affine)
            assert label.get_data_dtype() == np.uint8
        assert t1w.get_data_dtype() == np.int16
        assert np.allclose(np.linalg.norm(t1w.affine[:3, :3], axis=0), 2.5)
        brain = np.asanyarray(mask.dataobj) > 0
        classes = np.asanyarray(dseg.dataobj)
        assert set(np.unique(classes)) == {0, 1, 2}
        assert not np.any(classes[~brain])  # GM and WM inside the brain
        scale = abs(np.linalg.det(truth[sub]["template_from_subject_world"]))
        volume_ml = brain.sum() * 2.5 ** 3 / 1000 * scale
        assert 1400 < volume_ml < 2200  # the template brain volume, warped
        image = np.asanyarray(t1w.dataobj).astype(float)
        gm, wm = image[classes == 1].mean(), image[classes == 2].mean()
        background = image[~brain].mean()
        assert wm > 1.1 * gm > 1.1 * background  # T1w contrast
        assert np.std(image[~brain]) > 0  # noise
        orientations.append("".join(nb.aff2axcodes(t1w.affine)))
        assert orientations[-1] == truth[sub]["orientation"]
        assert 0 < truth[sub]["max_displacement_mm"] <= 3.0 + 1e-4
    assert len(set(orientations)) == 4  # several axis orders on disk


def _validate(folder):
    exe = shutil.which("bids-validator-deno")
    if exe is None:
        pytest.skip("bids-validator-deno is not installed (pip install bids-validator-deno)")
    result = subprocess.run([exe, "--format", "json", str(folder)], capture_output=True,
                            text=True, timeout=300)
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        pytest.skip(f"bids-validator-deno could not run here: {result.stderr[-300:]}")
    return [i for i in report["issues"]["issues"] if i["severity"] == "error"], result


def test_raw_dataset_passes_bids_validator(demo_dataset):
    errors, result = _validate(demo_dataset / "bids")
    assert errors == [] and result.returncode == 0


def test_labels_dataset_passes_bids_validator(demo_dataset):
    errors, _ = _validate(demo_dataset / "derivatives" / "labels")
    assert errors == []


def test_generation_is_deterministic(tmp_path):
    a = make_demo_dataset(tmp_path / "a", subjects=1, seed=3, voxel_size=4.0)
    b = make_demo_dataset(tmp_path / "b", subjects=1, seed=3, voxel_size=4.0)
    c = make_demo_dataset(tmp_path / "c", subjects=1, seed=4, voxel_size=4.0)
    for path_a, path_b, path_c in zip(_files(a, "sub-01"), _files(b, "sub-01"),
                                      _files(c, "sub-01")):
        img_a, img_b = nb.load(str(path_a)), nb.load(str(path_b))
        assert np.array_equal(np.asanyarray(img_a.dataobj), np.asanyarray(img_b.dataobj))
        assert np.array_equal(img_a.affine, img_b.affine)
        assert not np.array_equal(img_a.affine, nb.load(str(path_c)).affine)
    truth = [json.loads((x / "sourcedata/demo_truth.json").read_text()) for x in (a, b)]
    assert truth[0] == truth[1]
    assert json.loads((a / "context-spec.json").read_text()) == CONTEXT_SPEC


def test_command(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main([str(out), "--subjects", "1", "--seed", "1", "--voxel-size", "4"]) == 0
    assert all(p.is_file() for p in _files(out, "sub-01"))
    assert "TEMPLATEFLOW_HOME" in capsys.readouterr().out
    assert main([str(out), "--subjects", "1"]) == 73  # refuses to overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert main([str(out), "--subjects", "0"]) == 64
    assert main([str(out), "--subjects", "2", "--voxel-size", "4", "--overwrite"]) == 0
    assert sorted(p.name for p in (out / "bids").glob("sub-*")) == ["sub-01", "sub-02"]
