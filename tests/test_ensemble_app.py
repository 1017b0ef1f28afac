"""End to end: ``--ensemble 3 --context-selection similar`` on the demo data (bundled model):
spread maps in native and template space with their sidecars, a valid BIDS derivative, the
uncertainty QC column of ``group_volumes.tsv``; and a refused ``--ensemble``."""
import csv
import json
import os
import shutil
import subprocess

import nibabel as nb
import numpy as np
import pytest

from conftest import _run_app

TEMPLATE = "MNI152NLin2009aSym"
STRUCTURES = ("brain", "GM", "WM")


@pytest.fixture(scope="module")
def ensemble_run(demo_dataset, bundled_grid, tmp_path_factory):
    root = tmp_path_factory.mktemp("ensemble")
    out, work = root / "out", root / "work"
    # 4 demo subjects: each target leaves itself out, so 3 pool subjects = 3 sets of 1
    result, seconds = _run_app(demo_dataset, out, work, "--ensemble", "3",
                               "--context-selection", "similar", "--num-contexts", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    print(f"ensemble run: {seconds:.1f} s")
    return {"out": out, "work": work, "demo": demo_dataset, "grid": bundled_grid}


def test_spread_maps_in_native_and_template_space(ensemble_run):
    out, demo = ensemble_run["out"], ensemble_run["demo"]
    for subject in ("01", "02"):
        anat = out / f"sub-{subject}" / "anat"
        source = nb.load(str(demo / "bids" / f"sub-{subject}" / "anat" / f"sub-{subject}_T1w.nii.gz"))
        for structure in STRUCTURES:
            for space, shape in (("", source.shape), (f"space-{TEMPLATE}_", ensemble_run["grid"])):
                name = f"sub-{subject}_{space}label-{structure}_desc-spread_probseg"
                img = nb.load(str(anat / f"{name}.nii.gz"))
                assert img.shape == tuple(shape), name
                data = np.asanyarray(img.dataobj)
                assert data.min() >= 0 and data.max() <= 0.5 + 1e-6 and data.max() > 0, name
                sidecar = json.loads((anat / f"{name}.json").read_text())
                assert "standard deviation across the 3 ensemble members" in sidecar["Description"]
            mask_meta = json.loads((anat / f"sub-{subject}_desc-{structure}_mask.json").read_text())
            selection = mask_meta["ContextSelection"]
            assert selection["Method"] == "similar" and selection["EnsembleSize"] == 3
            sets = selection["ContextSets"]
            assert len(sets) == 3 and all(len(s) == 1 for s in sets)
            assert subject not in {s for chosen in sets for s in chosen}
            scores = [selection["SimilarityNCC"][chosen[0]] for chosen in sets]
            assert scores == sorted(scores, reverse=True)  # member 0: the most similar
            assert mask_meta["Uncertainty"][structure]["BoundarySpread"] > 0


def test_subject_report_shows_the_spread_and_the_uncertainty(ensemble_run):
    from neuroverse_bids.workflows.reports import rebuild_reports
    from neuroverse_bids.workflows.reports.common import is_nonempty_image, report_figures

    out = ensemble_run["out"]
    page_file = out / "sub-01.html"
    for rebuilt in (False, True):  # as the run drew it, then re-rendered from the saved facts
        if rebuilt:
            assert page_file in rebuild_reports(out, ["01"])
        page = page_file.read_text()
        figure = "sub-01/figures/sub-01_desc-spread_T1w.svg"
        assert figure in page
        assert (out / figure).resolve() in report_figures(page_file)
        assert is_nonempty_image(out / figure) and "<image" in (out / figure).read_text()
        meta = json.loads((out / "sub-01" / "anat" / "sub-01_desc-brain_mask.json").read_text())
        table = page[page.index("Ensemble uncertainty"):page.index("Context selection")]
        for structure in STRUCTURES:
            disagreement = meta["Uncertainty"][structure]["Disagreement"]
            assert f"<td>{structure}</td><td class=\"num\">{disagreement:.4f}</td>" in table
        selection = page[page.index("Context selection"):]
        assert "<b>similar</b>, 3 member(s)" in selection
        for chosen in meta["ContextSelection"]["ContextSets"]:
            score = meta["ContextSelection"]["SimilarityNCC"][chosen[0]]
            assert f"sub-{chosen[0]} ({score:.3f})" in selection


def test_ensemble_outputs_pass_the_bids_validator(ensemble_run):
    validator = shutil.which("bids-validator-deno")
    if validator is None:
        pytest.skip("bids-validator-deno is not installed")
    result = subprocess.run([validator, str(ensemble_run["out"]), "--json"], capture_output=True,
                            text=True, timeout=300)
    report = json.loads(result.stdout)
    errors = [i for i in report["issues"]["issues"] if i.get("severity") == "error"]
    assert not errors, errors[:5]


def test_group_table_has_the_uncertainty_column(ensemble_run):
    out = ensemble_run["out"]
    env = dict(os.environ, TEMPLATEFLOW_HOME=str(ensemble_run["demo"] / "templateflow"))
    result = subprocess.run(["neuroverse3d", str(ensemble_run["demo"] / "bids"), str(out),
                             "group", "-w", str(ensemble_run["work"])],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    with open(out / "group_volumes.tsv") as table:
        rows = list(csv.DictReader(table, delimiter="\t"))
    assert len(rows) == 2
    for row in rows:
        subject = row["participant_id"]
        for structure in STRUCTURES:
            meta = json.loads((out / subject / "anat" /
                               f"{subject}_desc-{structure}_mask.json").read_text())
            assert float(row[f"{structure}_uncertainty"]) == pytest.approx(
                meta["Uncertainty"][structure]["Disagreement"])
    assert "brain_uncertainty" in (out / "group.html").read_text()


@pytest.mark.parametrize("extra, numbers", [
    (("--ensemble", "0"), "0"),
    (("--ensemble", "4", "--num-contexts", "1"), "allows only 3"),
    (("--context-selection", "similar", "--num-contexts", "4"), "holds only 3"),
])
def test_impossible_ensembles_exit_64_before_any_work(demo_dataset, tmp_path, extra, numbers):
    result, _ = _run_app(demo_dataset, tmp_path / "out", tmp_path / "work", *extra)
    assert result.returncode == 64, result.stderr[-2000:]
    assert numbers in result.stderr
    assert not list((tmp_path / "out").glob("sub-*"))


def test_spec_keys_and_flags(tmp_path):
    from neuroverse_bids.config import WorkflowConfig
    from neuroverse_bids.context_spec import load_context_spec, spec_from_config
    from neuroverse_bids.workflows.errors import UsageError

    labels = tmp_path / "labels"
    labels.mkdir()
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps({"labels": {"dataset": str(labels)},
                                     "structures": [{"name": "brain", "mask": "brain"}],
                                     "selection": "similar", "ensemble": 2}))
    spec = load_context_spec(spec_file)
    assert (spec.selection, spec.ensemble, spec.pooled) == ("similar", 2, True)
    assert spec.to_dict()["selection"] == "similar" and spec.to_dict()["ensemble"] == 2
    spec = spec_from_config(WorkflowConfig(context_spec=spec_file, context_selection="random",
                                           ensemble=1))
    assert (spec.selection, spec.ensemble, spec.pooled) == ("random", 1, False)
    assert "selection" not in spec.to_dict() and "ensemble" not in spec.to_dict()
    spec_file.write_text(json.dumps({"labels": {"dataset": str(labels)},
                                     "structures": [{"name": "brain", "mask": "brain"}],
                                     "ensemble": 0}))
    with pytest.raises(UsageError, match="ensemble must be >= 1"):
        load_context_spec(spec_file)


def test_group_report_lists_uncertainty_outliers_first(tmp_path):
    from neuroverse_bids.workflows.reports.group import write_group_report

    rows = [{"participant_id": f"sub-{i:02d}", "session_id": "n/a", "source": f"sub-{i:02d}_T1w",
             "brain": 1000.0 + i, "brain_uncertainty": 0.010 + 0.001 * (i % 3)}
            for i in range(1, 9)]
    rows[5]["brain_uncertainty"] = 0.2  # sub-06: the members disagree
    rows[2]["brain"] = 5000.0           # sub-03: a volume outlier
    page = write_group_report(tmp_path, rows, ["brain", "brain_uncertainty"]).read_text()
    outliers = page[page.index('id="outliers"'):page.index('id="volumes"')]
    assert outliers.index("sub-06") < outliers.index("sub-03")
    table = page[page.index('id="volumes"'):]
    assert table.index("sub-06") < table.index("sub-01")
    assert "0.2000" in table
