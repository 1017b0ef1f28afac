"""Context pairs from real-looking derivatives: an fMRIPrep-like dataset selected by entities.

The fMRIPrep-like dataset has, per subject, ``desc-preproc_T1w``, ``desc-brain_mask``,
``desc-aseg_dseg`` and ``desc-aparcaseg_dseg`` (dataset-level ``desc-aseg_dseg.tsv`` and
``desc-aparcaseg_dseg.tsv`` with quoted names and a color column), ``label-*_probseg`` and
``space-MNI152NLin2009cAsym_res-2_*`` files beside them, as fMRIPrep writes them.
"""
import json
import os
import shutil
import subprocess
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from neuroverse_bids.bids import load_layout, validator_issues
from neuroverse_bids.context_set import Datasets, check_pair, find_context_pairs
from neuroverse_bids.context_spec import load_context_spec
from neuroverse_bids.workflows.errors import BadInputError, MissingInputError

ASEG = {0: "Unknown", 2: "Left-Cerebral-White-Matter", 3: "Left-Cerebral-Cortex",
        41: "Right-Cerebral-White-Matter", 42: "Right-Cerebral-Cortex"}
WM_UNION = ["Left-Cerebral-White-Matter", "Right-Cerebral-White-Matter"]
MNI = "space-MNI152NLin2009cAsym_res-2"
#: Dice of the bundled model's WM (union of both hemispheres) vs the demo truth, native space,
#: 2 contexts, sloppy registration; measured 0.786 (chance: < 0.5)
MIN_WM_DICE = 0.75


def _save(data, affine, path: Path, dtype):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nb.Nifti1Image(np.asarray(data).astype(dtype), affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    img.header.set_xyzt_units("mm")
    nb.save(img, str(path))


def _table(path: Path, names: dict):
    rows = [f'{index}\t"{name}"\t#{index * 40 % 256:02x}{index * 90 % 256:02x}80'
            for index, name in names.items()]
    path.write_text("index\tname\tcolor\n" + "\n".join(rows) + "\n")


def make_fmriprep_like(root: Path, raw: Path, labels: Path) -> Path:
    """An fMRIPrep-like derivatives dataset at ``root`` from the demo's raw T1w and labels."""
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps({
        "Name": "fMRIPrep-like", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "fMRIPrep", "Version": "24.1.1"}]}))
    _table(root / "desc-aseg_dseg.tsv", ASEG)
    _table(root / "desc-aparcaseg_dseg.tsv", {0: "Unknown", 1002: "ctx-lh-caudalanteriorcingulate",
                                             2002: "ctx-rh-caudalanteriorcingulate"})
    for t1w in sorted(raw.glob("sub-*/anat/sub-*_T1w.nii.gz")):
        sub = t1w.name.split("_")[0]
        anat = root / sub / "anat"
        anat.mkdir(parents=True)
        shutil.copyfile(t1w, anat / f"{sub}_desc-preproc_T1w.nii.gz")
        shutil.copyfile(labels / sub / "anat" / f"{sub}_desc-brain_mask.nii.gz",
                        anat / f"{sub}_desc-brain_mask.nii.gz")
        img = nb.load(str(labels / sub / "anat" / f"{sub}_dseg.nii.gz"))
        dseg = np.asanyarray(img.dataobj)
        ijk = np.indices(dseg.shape).reshape(3, -1)
        left = ((img.affine[:3, :3] @ ijk)[0] + img.affine[0, 3] < 0).reshape(dseg.shape)
        aseg = np.select([(dseg == 2) & left, dseg == 2, (dseg == 1) & left, dseg == 1],
                         [2, 41, 3, 42], 0)
        _save(aseg, img.affine, anat / f"{sub}_desc-aseg_dseg.nii.gz", np.int16)
        _save(np.where(dseg == 1, np.where(left, 1002, 2002), 0), img.affine,
              anat / f"{sub}_desc-aparcaseg_dseg.nii.gz", np.int16)
        for index, label in ((1, "GM"), (2, "WM")):
            _save(dseg == index, img.affine, anat / f"{sub}_label-{label}_probseg.nii.gz",
                  np.float32)
        mni = np.diag([2.0, 2.0, 2.0, 1.0])
        _save(np.ones((6, 6, 6)), mni, anat / f"{sub}_{MNI}_desc-preproc_T1w.nii.gz", np.int16)
        _save(np.full((6, 6, 6), 2), mni, anat / f"{sub}_{MNI}_desc-aseg_dseg.nii.gz", np.int16)
    return root


@pytest.fixture(scope="module")
def fmriprep(demo_dataset, tmp_path_factory):
    return make_fmriprep_like(tmp_path_factory.mktemp("deriv") / "fmriprep",
                              demo_dataset / "bids", demo_dataset / "derivatives" / "labels")


def _spec(folder: Path, labels=None, images=None, structures=None, **extra) -> Path:
    spec = {"task": "segmentation",
            "images": images or {"dataset": "fmriprep", "desc": "preproc", "suffix": "T1w"},
            "labels": labels or {"dataset": "fmriprep", "desc": "aseg", "suffix": "dseg"},
            "structures": structures or [{"name": "WM", "dseg": WM_UNION}],
            "num_contexts": 2, **extra}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "spec.json"
    path.write_text(json.dumps(spec))
    return path


def _pairs(spec_path, raw, fmriprep, tmp_path):
    spec = load_context_spec(spec_path, {"fmriprep": fmriprep})
    layout = load_layout(raw, database_dir=tmp_path / "db")
    return find_context_pairs(spec, Datasets(raw, tmp_path / "db", raw_layout=layout))


def test_fmriprep_pairs_by_entities_and_union_of_names(demo_dataset, fmriprep, tmp_path):
    pairs = _pairs(_spec(tmp_path), demo_dataset / "bids", fmriprep, tmp_path)
    assert sorted(pairs) == ["01", "02", "03", "04"]
    pair = pairs["02"]
    assert pair.image.name == "sub-02_desc-preproc_T1w.nii.gz"  # not the space-MNI one
    assert [p.name for p in pair.outputs] == ["sub-02_desc-aseg_dseg.nii.gz"]
    assert pair.label_values == [[2, 41]]  # quoted names of desc-aseg_dseg.tsv, not aparcaseg's
    check_pair(pair)
    # indices and a mask structure work too; the template-space files are chosen explicitly
    spec = _spec(tmp_path / "b", structures=[{"name": "cortex", "dseg": [3, 42]},
                                             {"name": "brain", "mask": "brain"}])
    pair = _pairs(spec, demo_dataset / "bids", fmriprep, tmp_path)["03"]
    assert pair.label_values == [[3, 42], None]
    assert pair.outputs[1].name == "sub-03_desc-brain_mask.nii.gz"
    spec = _spec(tmp_path / "c", images={"dataset": "fmriprep", "space": "MNI152NLin2009cAsym",
                                         "res": "2", "desc": "preproc"},
                 labels={"dataset": "fmriprep", "space": "MNI152NLin2009cAsym", "res": "2",
                         "desc": "aseg"})
    pair = _pairs(spec, demo_dataset / "bids", fmriprep, tmp_path)["01"]
    assert [p.name for p in (pair.image, *pair.outputs)] == [
        f"sub-01_{MNI}_desc-preproc_T1w.nii.gz", f"sub-01_{MNI}_desc-aseg_dseg.nii.gz"]


def test_dseg_table_lookup_follows_bids_inheritance(demo_dataset, fmriprep, tmp_path):
    derivs = tmp_path / "fmriprep"
    shutil.copytree(fmriprep, derivs)
    (derivs / "desc-aseg_dseg.tsv").unlink()
    (derivs / "dseg.tsv").write_text("index\tname\n2\tWM-left\n41\tWM-right\n")
    _table(derivs / "sub-02" / "anat" / "sub-02_desc-aseg_dseg.tsv", {7: "Left-Cerebral-White-Matter",
                                                                      8: "Right-Cerebral-White-Matter"})
    spec = _spec(tmp_path / "s", structures=[{"name": "WM", "dseg": ["WM-left", "WM-right"]}])
    with pytest.raises(BadInputError) as error:  # sub-02's own table comes first and lacks them
        _pairs(spec, demo_dataset / "bids", derivs, tmp_path)
    message = str(error.value)
    assert "sub-02_desc-aseg_dseg.tsv" in message and "Left-Cerebral-White-Matter" in message
    (derivs / "sub-02" / "anat" / "sub-02_desc-aseg_dseg.tsv").unlink()
    pairs = _pairs(spec, demo_dataset / "bids", derivs, tmp_path)  # dseg.tsv for everyone
    assert pairs["02"].label_values == [[2, 41]]


@pytest.mark.parametrize("labels,structures,error,words", [
    ({"dataset": "fmriprep", "suffix": "dseg"}, None, BadInputError,
     ["sub-01", "desc-aparcaseg_dseg", "desc-aseg_dseg", "desc:", "'aparcaseg' or 'aseg'",
      "Add the entity"]),
    ({"dataset": "fmriprep", "desc": "asegx", "suffix": "dseg"}, None, MissingInputError,
     ["no file of", "desc=asegx", "desc there:", "aparcaseg", "aseg"]),
    (None, [{"name": "hippocampus", "dseg": ["Left-Hippocampus", "Right-Hippocampus"]}],
     BadInputError, ["'Left-Hippocampus'", "desc-aseg_dseg.tsv", "Left-Cerebral-Cortex",
                     "Fix the name"]),
])
def test_bad_specs_name_the_files_and_the_fix(demo_dataset, fmriprep, tmp_path, labels,
                                              structures, error, words):
    spec = _spec(tmp_path, labels=labels, structures=structures)
    with pytest.raises(error) as info:
        _pairs(spec, demo_dataset / "bids", fmriprep, tmp_path)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_labels_dataset_without_description_and_label_on_another_grid(demo_dataset, fmriprep,
                                                                      tmp_path):
    derivs = tmp_path / "fmriprep"
    shutil.copytree(fmriprep, derivs)
    (derivs / "dataset_description.json").unlink()
    with pytest.raises(BadInputError, match="no dataset_description.json.*DatasetType") as info:
        _pairs(_spec(tmp_path), demo_dataset / "bids", derivs, tmp_path)
    assert str(derivs) in str(info.value)
    shutil.copyfile(fmriprep / "dataset_description.json", derivs / "dataset_description.json")
    label = derivs / "sub-03" / "anat" / "sub-03_desc-aseg_dseg.nii.gz"
    img = nb.load(str(label))
    _save(np.asanyarray(img.dataobj)[::2, ::2, ::2], img.affine * [[2], [2], [2], [1]], label,
          np.int16)
    pairs = _pairs(_spec(tmp_path), demo_dataset / "bids", derivs, tmp_path)
    with pytest.raises(BadInputError, match="differs from its image.*resample it") as info:
        check_pair(pairs["03"])
    assert str(label) in str(info.value)


def _nifti(path: Path, seed: int, shape=(8, 8, 8)):
    data = np.random.default_rng(seed).random(shape).astype(np.float32) + 1
    _save(data, np.diag([2.0, 2.0, 2.0, 1.0]), path, np.float32)


def test_several_images_per_subject_rule_and_override(tmp_path):
    """Sessions/runs: the documented rule picks one, entities choose another; the label
    follows the image's session."""
    raw, labels = tmp_path / "raw", tmp_path / "labels"
    for root, kind in ((raw, "raw"), (labels, "derivative")):
        root.mkdir()
        (root / "dataset_description.json").write_text(json.dumps(
            {"Name": root.name, "BIDSVersion": "1.9.0", "DatasetType": kind,
             "GeneratedBy": [{"Name": "test"}]}))
    names = ["sub-01/ses-2/anat/sub-01_ses-2_T1w", "sub-01/ses-1/anat/sub-01_ses-1_run-2_T1w",
             "sub-01/ses-1/anat/sub-01_ses-1_acq-fast_T1w", "sub-01/ses-1/anat/sub-01_ses-1_run-1_T1w",
             "sub-02/anat/sub-02_T1w"]
    for seed, name in enumerate(names):
        _nifti(raw / f"{name}.nii.gz", seed)
    for seed, name in enumerate(["sub-01/ses-1/anat/sub-01_ses-1_desc-brain_mask",
                                 "sub-01/ses-2/anat/sub-01_ses-2_desc-brain_mask",
                                 "sub-02/anat/sub-02_desc-brain_mask"]):
        _nifti(labels / f"{name}.nii.gz", seed)
    spec = {"task": "segmentation", "labels": {"dataset": "labels"},
            "structures": [{"name": "brain", "mask": "brain"}], "num_contexts": 1}
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    pairs = _pairs(path, raw, labels, tmp_path)
    assert pairs["01"].image.name == "sub-01_ses-1_run-1_T1w.nii.gz"  # ses-1, no acq, run 1
    assert pairs["01"].outputs[0].name == "sub-01_ses-1_desc-brain_mask.nii.gz"
    path.write_text(json.dumps(dict(spec, images={"ses": "2"})))
    pairs = _pairs(path, raw, labels, tmp_path)
    assert pairs["01"].image.name == "sub-01_ses-2_T1w.nii.gz"
    assert pairs["01"].outputs[0].name == "sub-01_ses-2_desc-brain_mask.nii.gz"
    path.write_text(json.dumps(dict(spec, images={"acq": "fast"})))
    assert sorted(_pairs(path, raw, labels, tmp_path)) == ["01"]  # sub-02 has no acq-fast


def _run_app(raw, out, work, spec, fmriprep, *extra, env=None):
    command = ["neuroverse3d", str(raw), str(out), "participant", "--context-spec", str(spec),
               "-d", f"fmriprep={fmriprep}", "--sloppy", "-w", str(work), "--nprocs", "2",
               "--precision", "float32", "--device", "cpu", *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=1200,
                          env=dict(os.environ, **(env or {})))


def test_cli_refuses_bad_specs_before_any_work(demo_dataset, fmriprep, tmp_path):
    raw = demo_dataset / "bids"
    spec = _spec(tmp_path / "a", structures=[{"name": "hip", "dseg": "Left-Hippocampus"}])
    result = _run_app(raw, tmp_path / "out", tmp_path / "work", spec, fmriprep,
                      "--participant-label", "01", "--skip-bids-validation")
    assert result.returncode == 65, result.stderr[-2000:]
    assert "Left-Hippocampus" in result.stderr and "Left-Cerebral-Cortex" in result.stderr
    assert not (tmp_path / "out" / "cache").exists() and not (tmp_path / "work" / "grid").exists()
    spec = _spec(tmp_path / "b", labels={"dataset": "fmriprep", "description": "aseg"})
    result = _run_app(raw, tmp_path / "out", tmp_path / "work", spec, fmriprep,
                      "--skip-bids-validation")
    assert result.returncode == 64 and "'description'" in result.stderr


@pytest.fixture(scope="module")
def fmriprep_run(demo_dataset, fmriprep, tmp_path_factory):
    root = tmp_path_factory.mktemp("fmriprep_run")
    spec = _spec(root, structures=[{"name": "WM", "dseg": WM_UNION},
                                   {"name": "cortex", "dseg": ["Left-Cerebral-Cortex",
                                                               "Right-Cerebral-Cortex"]}])
    result = _run_app(demo_dataset / "bids", root / "out", root / "work", spec, fmriprep,
                      "--participant-label", "01",
                      env={"TEMPLATEFLOW_HOME": str(demo_dataset / "templateflow")})
    assert result.returncode == 0, result.stderr[-4000:]
    return root / "out"


def test_fmriprep_derivatives_segment_a_union_of_aseg_structures(fmriprep_run, demo_dataset,
                                                                  fmriprep):
    anat = fmriprep_run / "sub-01" / "anat"
    meta = json.loads((anat / "sub-01_desc-WM_mask.json").read_text())
    assert "01" not in meta["ContextSubjects"] and len(meta["ContextSubjects"]) == 2
    status = json.loads(next((fmriprep_run / "logs").glob("context-set_*.json")).read_text())
    assert status["Reused"] is False and meta["ContextSet"]["CacheKey"] == status["CacheKey"]
    mask = np.asanyarray(nb.load(str(anat / "sub-01_desc-WM_mask.nii.gz")).dataobj) > 0
    truth = np.asanyarray(nb.load(str(demo_dataset / "derivatives/labels/sub-01/anat/"
                                      "sub-01_dseg.nii.gz")).dataobj) == 2
    dice = 2 * (mask & truth).sum() / (mask.sum() + truth.sum())
    print("WM Dice:", round(float(dice), 3))
    assert dice > MIN_WM_DICE, dice
    entries = [p for p in (fmriprep_run / "cache" / "context-sets").iterdir() if p.is_dir()]
    assert len(entries) == 1
    manifest = json.loads((entries[0] / "manifest.json").read_text())
    sources = [files[1] for files in manifest["Sources"].values()]  # image, then its label
    assert len(sources) == 3 and all(
        Path(p).parent.parent.parent == fmriprep and p.endswith("_desc-aseg_dseg.nii.gz")
        for p in sources)
    assert all(len(o["sha256"]) == 64 for pair in manifest["Request"]["Pairs"]
               for o in pair["outputs"])


def test_fmriprep_outputs_pass_the_bids_validator(fmriprep_run):
    errors = [i for i in validator_issues(fmriprep_run, timeout=300) if i["severity"] == "error"]
    assert errors == [], errors[:5]
