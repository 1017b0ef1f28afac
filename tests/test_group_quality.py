"""The group level's quality estimate, calibrated maps and label suggestions
(neuroverse_bids/quality.py) on a fake output folder, and their report sections."""
import csv
import json
import random

import nibabel as nb
import numpy as np
import pytest
import torch

from neuroverse_bids.model.quality import ProbabilityCalibration
from neuroverse_bids.model.self_evaluation import Case
from neuroverse_bids.quality import run_quality
from neuroverse_bids.self_evaluation import SelfEvaluation
from neuroverse_bids.workflows.reports import build_group_report

POOL = ["01", "02", "03", "04", "05", "06"]
TARGETS = {"sub-07": 0.9, "sub-08": 0.5, "sub-09": 0.7}   # soft_dice signal of each target


def _evaluation():
    rng = random.Random(0)
    cases = [Case(s, "brain", 0.6 + 0.5 * (soft - 0.7), "", {"soft_dice": soft})
             for s in POOL for soft in [rng.uniform(0.5, 0.9)]]
    calibration = ProbabilityCalibration()
    p = torch.rand(100_000, generator=torch.Generator().manual_seed(0))
    calibration.add("brain", p, torch.rand(100_000, generator=torch.Generator().manual_seed(1)) < p ** 2)
    return SelfEvaluation([], cases, calibration.fit(), POOL, ["brain"])


@pytest.fixture()
def output(tmp_path):
    out = tmp_path / "out"
    for participant, soft in TARGETS.items():
        anat = out / participant / "anat"
        anat.mkdir(parents=True)
        probability = np.linspace(0, 1, 64, dtype=np.float32).reshape(4, 4, 4)
        nb.save(nb.Nifti1Image((probability > 0.5).astype(np.uint8), np.eye(4)),
                str(anat / f"{participant}_desc-brain_mask.nii.gz"))
        nb.save(nb.Nifti1Image(probability, np.eye(4)),
                str(anat / f"{participant}_label-brain_probseg.nii.gz"))
        (anat / f"{participant}_label-brain_probseg.json").write_text('{"Task": "segmentation"}')
        (anat / f"{participant}_desc-brain_mask.json").write_text(json.dumps({
            "QualitySignals": {"brain": {"soft_dice": soft}},
            "ContextSimilarityNCC": {"01": soft, "02": soft - 0.1}}))
    return out


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def test_predicted_quality_calibrated_maps_and_suggestions(output):
    evaluation = _evaluation()
    written = run_quality(output, evaluation, suggest=2)
    rows = {r["participant_id"]: r for r in _rows(written["quality"])}
    assert set(rows) == set(TARGETS)
    predicted = {p: float(r["predicted_dice"]) for p, r in rows.items()}
    assert predicted["sub-07"] > predicted["sub-09"] > predicted["sub-08"]   # follows the signal
    assert all(float(r["interval_low"]) <= float(r["predicted_dice"]) <= float(r["interval_high"])
               for r in rows.values())
    sidecar = json.loads((output / "quality.json").read_text())
    assert {"predicted_dice", "QualityModel", "Calibration"} <= set(sidecar)
    # the calibrated map is the probseg through the fitted calibration, with its own sidecar
    anat = output / "sub-07" / "anat"
    calibrated = anat / "sub-07_label-brain_desc-calibrated_probseg.nii.gz"
    raw = np.asanyarray(nb.load(str(anat / "sub-07_label-brain_probseg.nii.gz")).dataobj)
    expected = evaluation.calibration.apply("brain", torch.from_numpy(raw)).numpy()
    assert np.allclose(np.asanyarray(nb.load(str(calibrated)).dataobj), expected, atol=1e-6)
    meta = json.loads(calibrated.with_name(calibrated.name.replace(".nii.gz", ".json")).read_text())
    assert meta["Task"] == "segmentation" and "calibrated" in meta["Description"]
    # without the model-grid images: worst predicted and least like the labelled subjects first
    suggested = _rows(written["suggest"])
    assert [r["participant_id"] for r in suggested] == ["sub-08", "sub-09"]
    assert float(suggested[0]["expected_gain"]) > float(suggested[1]["expected_gain"])
    assert "predicted mean Dice" in suggested[0]["why"]
    assert json.loads((output / "suggest_labels.json").read_text())["Method"] == \
        "quality-distance"
    page = (output / "group.html") if build_group_report(output) else None
    text = page.read_text()
    assert text.index('id="quality"') < text.index('id="suggest"') < text.index('id="summary"')
    assert "sub-08" in text[text.index('id="suggest"'):text.index('id="summary"')]


def test_nothing_to_suggest_when_everyone_is_labelled(output):
    evaluation = _evaluation()
    labelled = SelfEvaluation([], evaluation.cases, evaluation.calibration,
                              POOL + ["07", "08", "09"], ["brain"])
    written = run_quality(output, labelled, suggest=3)
    assert _rows(written["suggest"]) == []
    build_group_report(output)
    assert "nobody left to suggest" in (output / "group.html").read_text()


def test_suggestions_pick_whom_the_others_resemble(output):
    """With the model-grid images, the pick brings the other unlabelled participants closest
    to a labelled subject: sub-07 and sub-09 look alike, sub-08 like nobody."""
    generator = torch.Generator().manual_seed(0)
    shared = torch.rand(8, 8, 8, generator=generator)
    looks = {"sub-07": shared + 0.05 * torch.rand(8, 8, 8, generator=generator),
             "sub-09": shared + 0.05 * torch.rand(8, 8, 8, generator=generator),
             "sub-08": torch.rand(8, 8, 8, generator=generator)}
    for participant, image in looks.items():
        nb.save(nb.Nifti1Image(image.numpy(), np.eye(4)), str(
            output / participant / "anat" /
            f"{participant}_space-MNI152NLin2009aSym_desc-preproc_T1w.nii.gz"))
    written = run_quality(output, _evaluation(), suggest=2)
    suggested = _rows(written["suggest"])
    # sub-07 brings sub-09 (NCC 0.7 to its nearest labelled subject) up to about 0.99
    assert [r["participant_id"] for r in suggested] == ["sub-07", "sub-08"]
    assert float(suggested[0]["expected_gain"]) == pytest.approx(0.99 - 0.7, abs=0.02)
    assert "resembles 1 other unlabelled participant" in suggested[0]["why"]
    assert json.loads((output / "suggest_labels.json").read_text())["Method"] == "representative"
