"""``neuroverse3d-manifest``: BIDS datasets + derivatives -> a training manifest."""
import json

import nibabel as nib
import numpy as np
import pytest

from neuroverse_bids.cli.manifest import entities, main
from neuroverse_bids.model.training.manifest import load_manifest
from neuroverse_bids.model.training.sampling import EpisodeSampler


def _save(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))


@pytest.fixture
def bids(tmp_path):
    root = tmp_path / "ds"
    root.mkdir()
    (root / "dataset_description.json").write_text(json.dumps({"Name": "Toy data", "BIDSVersion": "1.9.0"}))
    rng = np.random.default_rng(0)
    deriv = root / "derivatives" / "prep"
    space = "MNI152NLin2009cAsym"
    for sub in ("01", "02", "03"):
        vol = rng.random((8, 8, 8)).astype(np.float32)
        _save(root / f"sub-{sub}" / "anat" / f"sub-{sub}_T1w.nii.gz", vol)
        anat = deriv / f"sub-{sub}" / "anat"
        _save(anat / f"sub-{sub}_space-{space}_desc-preproc_T1w.nii.gz", vol)
        _save(anat / f"sub-{sub}_space-{space}_desc-preproc_T2w.nii.gz", 1 - vol)
        _save(anat / f"sub-{sub}_space-{space}_desc-brain_mask.nii.gz", (vol > 0.3).astype(np.uint8))
        if sub != "03":
            _save(anat / f"sub-{sub}_space-{space}_dseg.nii.gz", (vol * 4).astype(np.int16))
        _save(anat / f"sub-{sub}_desc-preproc_T1w.nii.gz", vol)  # native space: not picked
    return root


def test_entities():
    from pathlib import Path

    assert entities(Path("sub-01_ses-2_space-MNI_desc-brain_mask.nii.gz")) == \
        {"sub": "01", "ses": "2", "space": "MNI", "desc": "brain"}


def test_manifest_from_derivatives_in_template_space(bids, tmp_path):
    out = tmp_path / "out" / "manifest.json"
    code = main([str(bids), "--space", "MNI152NLin2009cAsym", "--paired", "T2w", "-o", str(out)])
    assert code == 0
    manifest = load_manifest(out)
    (dataset,) = manifest.datasets
    assert dataset.name == "Toy_data" and len(dataset.subjects) == 3
    first = dataset.subjects[0]
    assert first.id == "sub-01" and "space-MNI152NLin2009cAsym_desc-preproc_T1w" in first.image
    assert first.paired["T2w"].endswith("desc-preproc_T2w.nii.gz") and first.brain_mask
    tasks = dataset.supported_tasks()
    assert "segmentation" not in tasks  # sub-03 has no label map
    assert {"2d-to-3d", "skull-stripping", "modality-transform"} <= set(tasks)
    EpisodeSampler(manifest, (8, 8, 8)).sample(__import__("torch").Generator().manual_seed(0), 2)


def test_raw_images_and_tsv_output(bids, tmp_path):
    out = tmp_path / "m.tsv"
    assert main([str(bids), "-o", str(out)]) == 0
    (dataset,) = load_manifest(out).datasets
    assert all("/derivatives/" not in s.image and s.image.endswith("_T1w.nii.gz") for s in dataset.subjects)
    assert dataset.space is None and "2d-to-3d" not in dataset.supported_tasks()


def test_errors(bids, tmp_path):
    assert main([str(tmp_path / "nope"), "-o", str(tmp_path / "m.json")]) == 66
    assert main([str(bids), "-o", str(bids / "m.json")]) == 64  # never write into the input
    assert not (bids / "m.json").exists()
    assert main([str(bids), "--suffix", "FLAIR", "-o", str(tmp_path / "m.json")]) == 18
