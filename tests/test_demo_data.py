"""The synthetic demo dataset: layout, labels, validity, determinism and its command."""
import json
import shutil
import subprocess
from pathlib import Path

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
    a = make_demo_dataset(tmp_path / "a", subjects=2, seed=3, voxel_size=4.0)
    b = make_demo_dataset(tmp_path / "b", subjects=2, seed=3, voxel_size=4.0)
    c = make_demo_dataset(tmp_path / "c", subjects=2, seed=4, voxel_size=4.0)
    for path_a, path_b, path_c in zip(_files(a, "sub-01"), _files(b, "sub-01"),
                                      _files(c, "sub-01")):
        img_a, img_b = nb.load(str(path_a)), nb.load(str(path_b))
        assert np.array_equal(np.asanyarray(img_a.dataobj), np.asanyarray(img_b.dataobj))
        assert np.array_equal(img_a.affine, img_b.affine)
        assert not np.array_equal(img_a.affine, nb.load(str(path_c)).affine)
    truth = [json.loads((x / "sourcedata/demo_truth.json").read_text()) for x in (a, b)]
    assert truth[0] == truth[1]
    assert json.loads((a / "context-spec.json").read_text()) == dict(CONTEXT_SPEC, num_contexts=1)


def test_command(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main([str(out), "--subjects", "2", "--seed", "1", "--voxel-size", "4"]) == 0
    assert all(p.is_file() for p in _files(out, "sub-01"))
    assert "TEMPLATEFLOW_HOME" in capsys.readouterr().out
    assert main([str(out), "--subjects", "2"]) == 73  # refuses to overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert main([str(out), "--subjects", "0"]) == 64
    # one subject has no other subject to take contexts from: refused before writing anything
    assert main([str(tmp_path / "one"), "--subjects", "1"]) == 64
    assert "subjects >= 2" in capsys.readouterr().err and not (tmp_path / "one").exists()
    assert main([str(out), "--subjects", "2", "--voxel-size", "4", "--overwrite"]) == 0
    assert sorted(p.name for p in (out / "bids").glob("sub-*")) == ["sub-01", "sub-02"]


@pytest.mark.parametrize("subjects", [2, 3, 4, 7])
def test_written_spec_leaves_every_target_enough_contexts(tmp_path, subjects):
    """A target's contexts are the other subjects: the spec asks for at most subjects - 1."""
    from neuroverse_bids.context_spec import load_context_spec, pick_context_pool
    from neuroverse_bids.demo import demo_context_spec

    for folder in ("bids", "derivatives/labels"):  # the spec's datasets, beside it
        (tmp_path / folder).mkdir(parents=True)
    path = tmp_path / "context-spec.json"
    path.write_text(json.dumps(demo_context_spec(subjects)))
    spec = load_context_spec(path, {})
    assert spec.num_contexts == min(3, subjects - 1)
    labels = [f"{i:02d}" for i in range(1, subjects + 1)]
    pool = pick_context_pool(labels, spec, labels)  # raises (exit 65) when a target falls short
    assert len(pool) == min(subjects, spec.num_contexts + 1)


def test_participant_level_runs_on_a_three_subject_demo(tmp_path):
    """``neuroverse3d-demo-data --subjects 3`` then the participant level (one target, whose
    contexts are the two other subjects; with ``--context-cache-max-gb 0``: an old entry of
    the cache goes, the run's own stays)."""
    import os

    demo = tmp_path / "demo"
    assert main([str(demo), "--subjects", "3", "--voxel-size", "4"]) == 0
    assert json.loads((demo / "context-spec.json").read_text())["num_contexts"] == 2
    out = tmp_path / "out"
    old = out / "cache" / "context-sets" / ("0" * 20)  # an unused entry of an earlier run
    old.mkdir(parents=True)
    (old / "manifest.json").write_text("{}")
    command = ["neuroverse3d", str(demo / "bids"), str(out), "participant", "--context-spec",
               str(demo / "context-spec.json"), "--sloppy", "-w", str(tmp_path / "work"),
               "--nprocs", "2", "--precision", "float32", "--device", "cpu",
               "--context-cache-max-gb", "0", "--participant-label", "02"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1200,
                            env=dict(os.environ, TEMPLATEFLOW_HOME=str(demo / "templateflow")))
    assert result.returncode == 0, result.stderr[-3000:]
    sidecar = json.loads((out / "sub-02" / "anat" / "sub-02_desc-brain_mask.json").read_text())
    assert sorted(sidecar["ContextSubjects"]) == ["01", "03"]
    status = json.loads(next((out / "logs").glob("context-set_*.json")).read_text())
    assert status["Evicted"] == [old.name] and not old.exists()
    assert Path(status["Entry"]).is_dir()  # in use while the run ran, so kept
