"""Subject reports built on a small fake output dataset (no workflow run)."""
import json

import nibabel as nb
import numpy as np
import pytest

from neuroverse_bids.workflows.derivatives import write_dataset_description
from neuroverse_bids.workflows.reports import (build_subject_report, collect_subject_outputs,
                                               crash_files, is_nonempty_image, report_figures)

TEMPLATE = "MNI152NLin2009aSym"
STRUCTURES = ("brain", "GM")
MNI_NOTE = f"in {TEMPLATE} space, with the template brain outline"


def _ellipsoid(shape, affine, centre, radii):
    ijk = np.indices(shape).reshape(3, -1).T
    world = nb.affines.apply_affine(affine, ijk)
    return (((world - centre) / radii) ** 2).sum(1).reshape(shape) <= 1


def _affine(zooms, flip=False):
    affine = np.diag(list(zooms) + [1.0])
    if flip:  # LPS storage order
        affine[0, 0], affine[1, 1] = -zooms[0], -zooms[1]
    affine[:3, 3] = -affine[:3, :3] @ (np.array([24, 24, 20]) / 2)
    return affine


def _identity_xfm(path):
    import ants

    transform = ants.create_ants_transform(transform_type="AffineTransform", dimension=3)
    ants.write_transform(transform, str(path))


def _save(data, affine, path, dtype):
    path.parent.mkdir(parents=True, exist_ok=True)
    nb.save(nb.Nifti1Image(np.asarray(data, dtype=dtype), affine), str(path))


def _meta(subject, context, task="segmentation"):
    spec = {"task": task, "structures": [{"name": s, "mask": s} for s in STRUCTURES]}
    return {"Sources": [f"bids:raw:sub-{subject}/anat/sub-{subject}_T1w.nii.gz"],
            "Model": {"Name": "small.safetensors", "SHA256": "ab" * 32}, "Precision": "float32",
            "MiniContextSize": 2, "ContextSubjects": context, "ContextSpec": spec,
            "Template": TEMPLATE, "Software": "neuroverse3d test"}


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory):
    """Raw data, participant outputs (2 subjects), a template, a work dir and one crash file."""
    root = tmp_path_factory.mktemp("fake")
    raw, out, work = root / "raw", root / "out", root / "work"
    write_dataset_description(out, source_datasets=[{"path": str(raw), "name": "raw"}],
                              version="0.0")
    shape = (24, 24, 20)
    for number, subject in enumerate(("01", "02")):
        affine = _affine((2.0, 2.0, 2.5), flip=bool(number))
        head = _ellipsoid(shape, affine, 0, (20, 22, 22))
        brain = _ellipsoid(shape, affine, 0, (15, 17, 18))
        grey = brain & ~_ellipsoid(shape, affine, 0, (11, 13, 14))
        t1w = np.where(head, 300.0, 0) + np.where(brain, 400.0, 0) - np.where(grey, 150.0, 0)
        _save(t1w, affine, raw / f"sub-{subject}/anat/sub-{subject}_T1w.nii.gz", np.int16)
        anat = out / f"sub-{subject}/anat"
        meta = _meta(subject, ["02", "03"] if subject == "01" else ["01", "03"])
        for name, mask in (("brain", brain), ("GM", grey)):
            for stem, data, dtype in ((f"desc-{name}_mask", mask, np.uint8),
                                      (f"label-{name}_probseg", mask, np.float32),
                                      (f"space-{TEMPLATE}_desc-{name}_mask", mask, np.uint8)):
                _save(data, affine, anat / f"sub-{subject}_{stem}.nii.gz", dtype)
                (anat / f"sub-{subject}_{stem}.json").write_text(json.dumps(meta))
        _identity_xfm(anat / f"sub-{subject}_from-T1w_to-{TEMPLATE}_mode-image_xfm.mat")
        info = {"model": "small.safetensors", "device": "cpu", "seconds_load": 0.5,
                "seconds_inference": 1.25, "context_subjects": meta["ContextSubjects"]}
        (work / f"neuroverse3d_wf/sub_{subject}_wf/icl").mkdir(parents=True)
        (work / f"neuroverse3d_wf/sub_{subject}_wf/icl/info.json").write_text(json.dumps(info))
    grid_affine = np.diag([6.0, 6.0, 6.0, 1.0])
    grid_affine[:3, 3] = -93
    _save(np.zeros((32, 32, 32)), grid_affine, work / f"grid/tpl-{TEMPLATE}_grid.nii.gz", np.uint8)
    ball = _ellipsoid((32, 32, 32), grid_affine, 0, (60, 70, 60)).astype(np.float32)
    for key, subjects in (("set0", ["02", "03"]), ("set1", ["01", "03"])):
        stack = work / f"neuroverse3d_wf/context_set_wf/stack_{key}/context_set.npz"
        stack.parent.mkdir(parents=True)
        np.savez(stack, images=np.stack([ball * 0.8, ball]), subjects=np.asarray(subjects),
                 outputs=np.stack([ball[None].repeat(2, 0), ball[None].repeat(2, 0)]))
    # a tiny TemplateFlow home: the template is the grid with a brain-shaped ball
    tpl = root / "templateflow" / f"tpl-{TEMPLATE}"
    _save(ball * 100, grid_affine, tpl / f"tpl-{TEMPLATE}_res-1_T1w.nii.gz", np.uint8)
    _save(ball, grid_affine, tpl / f"tpl-{TEMPLATE}_res-1_desc-brain_mask.nii.gz", np.uint8)
    (tpl / "template_description.json").write_text(json.dumps({"Identifier": TEMPLATE}))
    (out / "logs").mkdir()
    crash = out / "logs/crash-20250101-000000-user-icl-1234.txt"
    crash.write_text("Node: neuroverse3d_wf.sub_02_wf.icl\nWorking directory: /w\n\n"
                     "Traceback (most recent call last):\nRuntimeError: CUDA out of memory\n")
    return {"root": root, "raw": raw, "out": out, "work": work, "crash": crash,
            "templateflow": root / "templateflow"}


def test_collect_groups_native_outputs_by_source(fake_run):
    images = collect_subject_outputs(fake_run["out"], "01")
    assert len(images) == 1
    image = images[0]
    assert image.source == fake_run["raw"] / "sub-01/anat/sub-01_T1w.nii.gz"
    assert sorted(image.masks) == sorted(STRUCTURES)  # space- masks and probsegs are not listed
    assert all("space-" not in p.name for p in image.masks.values())
    assert image.stem == "sub-01" and image.meta["ContextSubjects"] == ["02", "03"]


def test_crash_files_are_attributed_to_their_subject(fake_run):
    own, other = crash_files(fake_run["out"], "02")
    assert [c for c, _ in own] == [fake_run["crash"]] and not other
    own, other = crash_files(fake_run["out"], "01")
    assert not own and [c for c, _ in other] == [fake_run["crash"]]


@pytest.fixture(scope="module")
def report01(fake_run):
    """sub-01's report with the work dir and the template found through TEMPLATEFLOW_HOME."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TEMPLATEFLOW_HOME", str(fake_run["templateflow"]))
        return build_subject_report(fake_run["out"], "sub-01", work_dir=fake_run["work"])


def test_report_figures_exist_and_are_images(fake_run, report01):
    assert report01 == fake_run["out"] / "sub-01.html"
    figures = report_figures(report01)
    # registration check, one mosaic per structure, the context thumbnail (set1: 01 not in it)
    assert sorted(p.name for p in figures) == sorted([
        "sub-01_desc-registration_T1w.png", "sub-01_desc-brain_mask.png",
        "sub-01_desc-GM_mask.png", "sub-01_desc-context_T1w.png"])
    for path in figures:
        assert path.parent == fake_run["out"] / "sub-01" / "figures"
        assert is_nonempty_image(path), path
    assert not list(fake_run["out"].rglob(".*.tmp")) and not list(fake_run["out"].rglob(".*.png"))


def test_report_lists_model_context_methods_and_errors(report01):
    text = report01.read_text()
    for needle in ("small.safetensors", "ab" * 32, "float32", "1.25", "arXiv:2503.02410",
                   "CC0", "sub-02, sub-03", MNI_NOTE):
        assert needle in text, needle
    # sub-02's crash is listed and linked, but not counted as sub-01's
    assert "CUDA out of memory" in text and 'href="logs/crash-' in text
    assert "0 crash file(s) for this subject, 1 other(s)" in text


def test_report_volumes_match_the_masks(fake_run, report01):
    mask = nb.load(str(fake_run["out"] / "sub-01/anat/sub-01_desc-brain_mask.nii.gz"))
    voxels = int(np.count_nonzero(np.asanyarray(mask.dataobj)))
    assert f"{voxels * 2.0 * 2.0 * 2.5:,.0f}" in report01.read_text()


def test_report_without_template_or_work_dir_says_what_is_missing(fake_run, monkeypatch, tmp_path):
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(tmp_path / "empty"))
    report = build_subject_report(fake_run["out"], "01")
    text = report.read_text()
    assert "registration check not drawn" in text and "needs the work directory" in text
    assert all(is_nonempty_image(p) for p in report_figures(report))
    assert len(report_figures(report)) == 2  # the two structure mosaics


def test_generation_report_has_before_after_panels(tmp_path, fake_run):
    out = tmp_path / "out"
    write_dataset_description(out, source_datasets=[{"path": str(fake_run["raw"]), "name": "raw"}],
                              version="0.0")
    source = nb.load(str(fake_run["raw"] / "sub-01/anat/sub-01_T1w.nii.gz"))
    anat = out / "sub-01/anat"
    _save(np.asanyarray(source.dataobj) * 0.5, source.affine,
          anat / "sub-01_desc-denoised_T1w.nii.gz", np.float32)
    meta = dict(_meta("01", ["02"], task="generation"), ContextSpec={
        "task": "generation", "degradation": "gaussian-noise"})
    (anat / "sub-01_desc-denoised_T1w.json").write_text(json.dumps(meta))
    report = build_subject_report(out, "01", template_files=None)
    figures = report_figures(report)
    assert [p.name for p in figures] == ["sub-01_desc-denoised_beforeafter.png"]
    assert is_nonempty_image(figures[0])


def test_missing_subject_is_a_clear_error(fake_run):
    from neuroverse_bids.workflows.errors import MissingInputError

    with pytest.raises(MissingInputError, match="sub-09"):
        build_subject_report(fake_run["out"], "09")


def test_is_nonempty_image_rejects_blank_and_broken_files(tmp_path):
    import matplotlib.image as mpimg

    blank = tmp_path / "blank.png"
    mpimg.imsave(str(blank), np.zeros((8, 8)))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    assert not is_nonempty_image(blank) and not is_nonempty_image(broken)
    assert not is_nonempty_image(tmp_path / "missing.png")


# --------------------------------------------------------------------------- run logs
def _add(a):
    return a + 1


def test_run_log_and_configuration(tmp_path):
    import argparse
    import logging

    from neuroverse_bids.logs import setup_run_logging

    args = argparse.Namespace(bids_dir=tmp_path / "bids", participant_label=["01"], nprocs=2)
    log_file = setup_run_logging(tmp_path / "out", args, run_id="test1")
    assert log_file == tmp_path / "out/logs/neuroverse3d_test1.log"
    config = json.loads((tmp_path / "out/logs/neuroverse3d_test1_config.json").read_text())
    assert config["Arguments"] == {"bids_dir": str(tmp_path / "bids"), "participant_label": ["01"],
                                   "nprocs": 2}
    assert config["RunId"] == "test1" and config["Versions"]["nibabel"] == nb.__version__
    logging.getLogger("neuroverse3d").warning("a message for the file")
    # a second run in the same process gets its own file; the first one stops receiving
    second = setup_run_logging(tmp_path / "out", args, run_id="test2")
    logging.getLogger("neuroverse3d").warning("only in the second")
    assert "a message for the file" in log_file.read_text()
    assert "only in the second" not in log_file.read_text()
    assert "only in the second" in second.read_text()


def test_progress_lines_per_participant_and_node(tmp_path, caplog):
    import logging

    from nipype.interfaces import utility as niu
    from nipype.pipeline import engine as pe

    from neuroverse_bids.logs import ProgressReporter, node_subject

    assert node_subject("neuroverse3d_wf.sub_01_wf.icl") == "sub-01"
    assert node_subject("neuroverse3d_wf.ds_sub_A1_2_wf.ds_mask") == "sub-A1"
    assert node_subject("neuroverse3d_wf.context_set_wf.context_sub_03_wf.register") == \
        "context sub-03"
    assert node_subject("neuroverse3d_wf.context_set_wf.stack_set0") == "run"
    main = pe.Workflow(name="neuroverse3d_wf", base_dir=str(tmp_path))
    for subject in ("01", "02"):
        sub = pe.Workflow(name=f"sub_{subject}_wf")
        inputnode = pe.Node(niu.IdentityInterface(fields=["a"]), name="inputnode")
        inputnode.inputs.a = 1
        first = pe.Node(niu.Function(function=_add, input_names=["a"], output_names=["out"]),
                        name="first")
        second = pe.Node(niu.Function(function=_add, input_names=["a"], output_names=["out"]),
                         name="second")
        sub.connect([(inputnode, first, [("a", "a")]), (first, second, [("out", "a")])])
        main.add_nodes([sub])
    reporter = ProgressReporter(main)
    assert reporter.totals == {"sub-01": 2, "sub-02": 2}  # identity nodes are not counted
    with caplog.at_level(logging.INFO, logger="neuroverse3d.progress"):
        main.run(plugin="Linear", plugin_args={"status_callback": reporter})
    lines = [r.getMessage() for r in caplog.records if r.name == "neuroverse3d.progress"]
    assert "sub-01 | first: started" in lines
    assert any(l.startswith("[4/4] sub-02 | second: finished in ") for l in lines)
    assert "sub-01: 2 steps, all finished" in lines and "sub-02: 2 steps, all finished" in lines
