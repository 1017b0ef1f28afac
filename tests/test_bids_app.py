"""End to end: the real ``neuroverse3d`` command on a generated BIDS dataset, with the bundled
default model (no ``--model``, no ``--template``: both come from the package). The run itself
is the session fixture ``app_run`` (conftest.py), shared with the reports' tests."""
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest


TEMPLATE = "MNI152NLin2009aSym"  # the bundled model's space
STRUCTURES = ("brain", "GM", "WM")
#: Dice of the bundled model vs the demo's true labels (native space, 3 contexts, sloppy
#: registration); measured: brain 0.984, GM 0.848-0.850, WM 0.786-0.791 (chance: < 0.5)
MIN_DICE = {"brain": 0.95, "GM": 0.75, "WM": 0.75}


def _digest(folder: Path):
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and "logs" not in path.parts:
            data = path.read_bytes()
            if path.suffix == ".gz":  # compare the decompressed image data (gzip stores mtimes)
                img = nb.load(str(path))
                data = np.asanyarray(img.dataobj).tobytes() + img.affine.tobytes()
            out[str(path.relative_to(folder))] = hashlib.sha256(data).hexdigest()
    return out


def test_input_dataset_is_untouched(app_run):
    assert app_run["snapshot"](app_run["demo"] / "bids") == app_run["before"]


def test_every_expected_output_exists_with_sidecar_and_native_grid(app_run):
    out, demo = app_run["out"], app_run["demo"]
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert description["GeneratedBy"][0]["Name"].lower().startswith("neuroverse3d")
    assert (out / "dseg.tsv").is_file()
    for subject in ("01", "02"):
        anat = out / f"sub-{subject}" / "anat"
        source = nb.load(str(demo / "bids" / f"sub-{subject}" / "anat" / f"sub-{subject}_T1w.nii.gz"))
        expected = [f"sub-{subject}_desc-{s}_mask.nii.gz" for s in STRUCTURES]
        expected += [f"sub-{subject}_label-{s}_probseg.nii.gz" for s in STRUCTURES]
        expected += [f"sub-{subject}_dseg.nii.gz"]
        expected += [f"sub-{subject}_space-{TEMPLATE}_desc-{s}_mask.nii.gz" for s in STRUCTURES]
        expected += [f"sub-{subject}_space-{TEMPLATE}_label-{s}_probseg.nii.gz" for s in STRUCTURES]
        expected += [f"sub-{subject}_space-{TEMPLATE}_dseg.nii.gz"]
        for name in expected:
            path = anat / name
            assert path.is_file(), name
            sidecar = json.loads((anat / name.replace(".nii.gz", ".json")).read_text())
            assert sidecar["Sources"] == [f"bids:raw:sub-{subject}/anat/sub-{subject}_T1w.nii.gz"]
            assert sidecar["Model"]["SHA256"] and sidecar["Precision"] == "float32"
            assert len(sidecar["ContextSubjects"]) == 3 and subject not in sidecar["ContextSubjects"]
            img = nb.load(str(path))
            if "space-" not in name:
                assert img.shape == source.shape and np.allclose(img.affine, source.affine), name
            else:
                assert img.shape == app_run["grid"], name
            if name.endswith("_mask.nii.gz"):
                assert set(np.unique(np.asanyarray(img.dataobj))) <= {0, 1}
        for xfm in (f"sub-{subject}_from-T1w_to-{TEMPLATE}_mode-image_xfm.mat",
                    f"sub-{subject}_from-{TEMPLATE}_to-T1w_mode-image_xfm.mat"):
            assert (anat / xfm).is_file(), xfm
    assert not list(out.rglob(".*.nii.gz")), "temporary files left behind"


def _dice(a, b) -> float:
    return 2 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b))


def test_default_model_segments_the_synthetic_subjects(app_run):
    """The bundled model vs the true labels, in each subject's native space."""
    labels, out = app_run["demo"] / "derivatives" / "labels", app_run["out"]
    scores = {}
    for subject in ("01", "02"):
        def load(folder, name):
            path = folder / f"sub-{subject}" / "anat" / f"sub-{subject}_{name}.nii.gz"
            return np.asanyarray(nb.load(str(path)).dataobj)

        dseg = load(labels, "dseg")  # demo labels: 1 GM, 2 WM
        truth = {"brain": load(labels, "desc-brain_mask") > 0, "GM": dseg == 1, "WM": dseg == 2}
        for structure in STRUCTURES:
            predicted = load(out, f"desc-{structure}_mask") > 0
            scores[subject, structure] = _dice(predicted, truth[structure])
    print("Dice:", {f"sub-{k[0]} {k[1]}": round(v, 3) for k, v in scores.items()})
    for (subject, structure), value in scores.items():
        assert value >= MIN_DICE[structure], (subject, structure, value)


def test_subject_reports_reference_existing_figures(app_run):
    from neuroverse_bids.workflows.reports import is_nonempty_image, report_figures

    for subject in ("01", "02"):
        report = app_run["out"] / f"sub-{subject}.html"
        figures = report_figures(report)
        assert len(figures) >= 3, figures  # registration, structures, context
        assert all(is_nonempty_image(f) for f in figures)
        text = report.read_text()
        assert "Neuroverse3D" in text and "float32" in text


def test_run_log_and_configuration_are_saved(app_run):
    logs = app_run["out"] / "logs"
    configs = list(logs.glob("*_config.json"))
    assert configs and list(logs.glob("*.log"))
    config = json.loads(configs[0].read_text())
    assert "participant" in json.dumps(config)


def test_output_dataset_passes_the_bids_validator(app_run):
    validator = shutil.which("bids-validator-deno")
    if validator is None:
        pytest.skip("bids-validator-deno is not installed")
    result = subprocess.run([validator, str(app_run["out"]), "--json"], capture_output=True, text=True,
                            timeout=300)
    report = json.loads(result.stdout)
    errors = [i for i in report["issues"]["issues"] if i.get("severity") == "error"]
    assert not errors, errors[:5]


def test_second_run_reuses_the_work_dir_and_gives_identical_files(app_run):
    out = app_run["out"]
    before = _digest(out)
    second, seconds = app_run["run"](app_run["demo"], out, app_run["work"])
    assert second.returncode == 0, second.stderr[-3000:]
    assert _digest(out) == before
    print(f"first run {app_run['first_seconds']:.1f} s, second run {seconds:.1f} s")
    assert seconds < app_run["first_seconds"]


def test_group_level_tabulates_native_volumes(app_run):
    out = app_run["out"]
    env = dict(os.environ, TEMPLATEFLOW_HOME=str(app_run["demo"] / "templateflow"))
    result = subprocess.run(["neuroverse3d", str(app_run["demo"] / "bids"), str(out), "group",
                             "-w", str(app_run["work"]), "--suggest-labels", "1"],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    rows = (out / "group_volumes.tsv").read_text().splitlines()
    header = rows[0].split("\t")
    assert header[:3] == ["participant_id", "session_id", "source"] and set(STRUCTURES) <= set(header)
    assert len(rows) == 3
    first = dict(zip(header, rows[1].split("\t")))
    mask = nb.load(str(out / "sub-01" / "anat" / "sub-01_desc-brain_mask.nii.gz"))
    voxel = float(np.prod(mask.header.get_zooms()[:3]))
    assert float(first["brain"]) == pytest.approx(np.count_nonzero(np.asanyarray(mask.dataobj)) * voxel)
    from neuroverse_bids.workflows.reports import is_nonempty_image, report_figures

    figures = report_figures(out / "group.html")
    assert figures and all(is_nonempty_image(f) for f in figures)
    # the leave-one-out self-evaluation of the context pool, first on the page
    import csv
    import json

    with open(out / "self_evaluation.tsv", newline="") as handle:
        table = list(csv.DictReader(handle, delimiter="\t"))
    assert [r["structure"] for r in table] == list(STRUCTURES)
    assert all(0.0 <= float(r["interval_low"]) <= float(r["expected_dice"])
               <= float(r["interval_high"]) <= 1.0 for r in table)
    sidecar = json.loads((out / "self_evaluation.json").read_text())
    assert {"structure", "expected_dice"} <= set(sidecar) and sidecar["Method"]["LeaveOneOut"]
    with open(out / "self_evaluation_cases.tsv", newline="") as handle:
        cases = list(csv.DictReader(handle, delimiter="\t"))
    pool = sidecar["Method"]["PoolSubjects"]
    assert len(cases) == len(pool) * len(STRUCTURES)
    for structure in STRUCTURES:  # the table's expected Dice is the mean of its cases
        values = [float(c["dice"]) for c in cases if c["structure"] == structure]
        row = next(r for r in table if r["structure"] == structure)
        assert float(row["expected_dice"]) == pytest.approx(sum(values) / len(values), abs=1e-4)
    assert all(c["subject"] not in c["contexts"].split(",") for c in cases)
    page = (out / "group.html").read_text()
    assert page.index('id="self-evaluation"') < page.index('id="summary"')
    # the predicted Dice of every image and structure, fitted on those cases, and the
    # calibrated maps; every demo participant is labelled, so nobody is suggested
    with open(out / "quality.tsv", newline="") as handle:
        quality = list(csv.DictReader(handle, delimiter="\t"))
    assert sorted((r["participant_id"], r["structure"]) for r in quality) == sorted(
        (f"sub-{s}", n) for s in ("01", "02") for n in STRUCTURES)
    assert all(0.0 <= float(r["predicted_dice"]) <= 1.0 for r in quality)
    for subject in ("01", "02"):
        anat = out / f"sub-{subject}" / "anat"
        meta = json.loads((anat / f"sub-{subject}_desc-GM_mask.json").read_text())
        assert set(meta["QualitySignals"]) == set(STRUCTURES)
        calibrated = nb.load(str(anat / f"sub-{subject}_label-GM_desc-calibrated_probseg.nii.gz"))
        values = np.asanyarray(calibrated.dataobj)
        assert calibrated.shape == mask.shape and 0.0 <= values.min() <= values.max() <= 1.0
    assert (out / "suggest_labels.tsv").read_text().startswith("participant_id\texpected_gain")
    assert page.index('id="quality"') < page.index('id="suggest"') < page.index('id="summary"')
