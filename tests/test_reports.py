"""Subject reports: report nodes fed explicit inputs, saved facts, rebuilding, crash summaries,
rendering in headless Chromium, and a rebuild on the output folder of a real run."""
import gzip
import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from neuroverse_bids.workflows.errors import MissingInputError
from neuroverse_bids.workflows.interfaces.reports import ImageReportlets, SubjectReport
from neuroverse_bids.workflows.reports import (crash_files, is_nonempty_image, mask_volume_mm3,
                                               read_facts, rebuild_reports, render_subject_report,
                                               report_figures, summarise_crash)
from neuroverse_bids.workflows.reports.svg import FOREGROUND

TEMPLATE = "MNI152NLin2009aSym"
STRUCTURES = ["brain", "GM"]
ROOT = Path(__file__).resolve().parent.parent
INFO = {"model": "small.safetensors", "model_sha256": "ab" * 32, "precision": "float32",
        "device": "cpu", "mini_context_size": 2, "seconds_load": 0.5, "seconds_inference": 1.25}
STATIC = {"ContextSpec": {"task": "segmentation", "structures": [{"name": s} for s in STRUCTURES]},
          "Template": TEMPLATE, "Software": "neuroverse3d test"}


def _ellipsoid(shape, affine, radii):
    ijk = np.indices(shape).reshape(3, -1).T
    world = nb.affines.apply_affine(affine, ijk)
    return ((world / radii) ** 2).sum(1).reshape(shape) <= 1


def _save(data, affine, path, dtype=np.float32):
    path.parent.mkdir(parents=True, exist_ok=True)
    nb.save(nb.Nifti1Image(np.asarray(data, dtype=dtype), affine), str(path))
    return path


def _identity_xfm(path):
    import ants

    ants.write_transform(ants.create_ants_transform(transform_type="AffineTransform",
                                                    dimension=3), str(path))
    return path


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    """Inputs as the report nodes get them: a native T1w per subject, its masks (node outputs),
    the stored derivatives, a transform, a small template and a stacked context set."""
    root = tmp_path_factory.mktemp("reports")
    raw, out, nodes = root / "raw", root / "out", root / "nodes"
    grid = np.diag([6.0, 6.0, 6.0, 1.0])
    grid[:3, 3] = -93
    ball = _ellipsoid((32, 32, 32), grid, (60, 70, 60)).astype(np.float32)
    files = {"template": _save(ball * 100, grid, root / "tpl_T1w.nii.gz"),
             "template_mask": _save(ball, grid, root / "tpl_mask.nii.gz", np.uint8),
             "grid": _save(np.zeros((32,) * 3), grid, root / "grid.nii.gz", np.uint8)}
    subjects = {}
    for number, subject in enumerate(("01", "02")):
        affine = np.diag([2.0, 2.0, 2.5, 1.0])
        if number:
            affine[0, 0] = -2.0  # a non-RAS storage order
        affine[:3, 3] = -affine[:3, :3] @ np.array([12, 12, 10])
        shape = (24, 24, 20)
        head, brain = _ellipsoid(shape, affine, (20, 22, 22)), _ellipsoid(shape, affine, (15, 17, 18))
        grey = brain & ~_ellipsoid(shape, affine, (11, 13, 14))
        t1w = np.where(head, 300.0, 0) + np.where(brain, 400.0, 0) - np.where(grey, 150.0, 0)
        source = _save(t1w, affine, raw / f"sub-{subject}/anat/sub-{subject}_T1w.nii.gz", np.int16)
        masks = [_save(m, affine, nodes / subject / f"{n}.nii.gz", np.uint8)
                 for n, m in (("brain", brain), ("GM", grey))]
        anat = out / f"sub-{subject}/anat"
        anat.mkdir(parents=True)
        stored = [Path(shutil.copyfile(m, anat / f"sub-{subject}_desc-{n}_mask.nii.gz"))
                  for m, n in zip(masks, STRUCTURES)]
        xfm = _identity_xfm(anat / f"sub-{subject}_from-T1w_to-{TEMPLATE}_mode-image_xfm.mat")
        subjects[subject] = {"source": source, "masks": masks, "derivatives": stored + [xfm],
                             "xfm": xfm}
    stack = root / "context_set.npz"
    np.savez(stack, images=np.stack([ball * 0.8, ball]), subjects=np.asarray(["02", "03"]),
             outputs=np.stack([ball[None].repeat(2, 0), ball[None].repeat(2, 0) * 0]))
    files["context_set"] = stack
    (out / "logs").mkdir()
    crash = out / "logs/crash-20250101-000000-user-icl-1234.txt"
    crash.write_text("Node: neuroverse3d_wf.sub_02_wf.icl\nWorking directory: /nonexistent\n\n"
                     "Node inputs:\n\ntarget = /w/normalised.nii.gz\ndevice = cuda\n\n"
                     "Traceback (most recent call last):\nRuntimeError: CUDA out of memory\n")
    return {"root": root, "raw": raw, "out": out, "files": files, "subjects": subjects,
            "crash": crash}


def _reportlets(fake, subject, **extra):
    s, f = fake["subjects"][subject], fake["files"]
    inputs = dict(output_dir=str(fake["out"]), source_file=str(s["source"]), task="segmentation",
                  output_names=STRUCTURES, info=dict(INFO, context_subjects=["02", "03"]),
                  derivatives=[str(p) for p in s["derivatives"]],
                  forward_transform=str(s["xfm"]), template_file=str(f["template"]),
                  template_mask=str(f["template_mask"]), template=TEMPLATE,
                  native_masks=[str(m) for m in s["masks"]])
    inputs.update(extra)
    return ImageReportlets(**inputs).run().outputs.facts


@pytest.fixture(scope="module")
def report01(fake):
    """sub-01's page made by the two report nodes, from their inputs only."""
    facts = _reportlets(fake, "01")
    f = fake["files"]
    result = SubjectReport(output_dir=str(fake["out"]), subject="01", images=[facts],
                           context_set=str(f["context_set"]), grid_reference=str(f["grid"]),
                           task="segmentation", output_names=STRUCTURES,
                           static_meta=STATIC).run()
    return {"facts": facts, "page": Path(result.outputs.out_report),
            "saved": Path(result.outputs.out_facts)}


def test_reportlet_facts_come_from_the_inputs(fake, report01):
    facts, subject = report01["facts"], fake["subjects"]["01"]
    assert facts["info"]["seconds_inference"] == 1.25 and facts["stem"] == "sub-01"
    for structure, mask in zip(facts["structures"], subject["masks"]):
        assert structure["volume_mm3"] == pytest.approx(mask_volume_mm3(mask))
        assert structure["file"] == f"sub-01/anat/sub-01_desc-{structure['name']}_mask.nii.gz"
    assert facts["registration"] == "sub-01/figures/sub-01_desc-registration_T1w.svg"
    assert facts["segmentation"] == "sub-01/figures/sub-01_desc-segmentation_T1w.svg"
    # other inputs, other facts: the node reads nothing else
    other = _reportlets(fake, "01", info={"device": "elsewhere"}, native_masks=subject["masks"][:1],
                        output_names=["brain"])
    assert other["info"] == {"device": "elsewhere"} and [s["name"] for s in other["structures"]] == ["brain"]


def test_registration_flicker_has_two_layers_and_contours_are_vectors(fake, report01):
    out = fake["out"]
    flicker = (out / report01["facts"]["registration"]).read_text()
    bottom, top = flicker.split(f'<g class="{FOREGROUND}">')
    # template and registered image: the same 3 rows x 6 cuts of raster slices in each layer
    assert bottom.count("<image") == top.count("<image") >= 3 * 6
    assert "@keyframes" in flicker and bottom.count("<title>") == top.count("<title>") == 1
    assert "<script" not in flicker
    assert flicker.count('id="fg-') > 0 and 'url(#fg-' in flicker  # the top layer's own ids
    contours = (out / report01["facts"]["segmentation"]).read_text()
    assert contours.count("<path") > 50 and contours.count("<image") >= 3 * 6


def test_subject_page_shows_model_context_volumes_methods_and_errors(fake, report01):
    page = report01["page"]
    assert page == fake["out"] / "sub-01.html"
    text = page.read_text()
    for needle in ("small.safetensors", "ab" * 32, "float32", "1.25", "arXiv:2503.02410",
                   "CC0", "sub-02, sub-03", f"resampled into {TEMPLATE} space"):
        assert needle in text, needle
    mask = fake["subjects"]["01"]["masks"][0]
    assert f"{mask_volume_mm3(mask):,.0f}" in text
    assert "CUDA out of memory" in text and "target = /w/normalised.nii.gz" in text
    assert "0 crash file(s) for this subject, 1 other(s)" in text
    figures = report_figures(page)
    assert sorted(p.name for p in figures) == sorted([
        "sub-01_desc-registration_T1w.svg", "sub-01_desc-segmentation_T1w.svg",
        "sub-01_desc-context_T1w.svg"])
    assert all(p.parent == fake["out"] / "sub-01/figures" and is_nonempty_image(p)
               for p in figures)
    assert not list(fake["out"].rglob(".*.tmp"))


def test_facts_are_saved_and_the_page_rebuilds_identically(fake, report01):
    assert report01["saved"] == fake["out"] / "sub-01/figures/sub-01_report.json"
    assert read_facts(fake["out"], "01")["images"] == [report01["facts"]]
    before = report01["page"].read_text()
    report01["page"].unlink()
    assert rebuild_reports(fake["out"]) == [report01["page"]]
    assert report01["page"].read_text() == before


def test_rebuild_names_missing_figures_and_new_crashes(fake, report01, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(fake["out"], out)
    (out / report01["facts"]["segmentation"]).unlink()
    crash = out / "logs/crash-20250101-000001-user-reportlets-1.txt"
    crash.write_text("Node: neuroverse3d_wf.ds_sub_01_wf.reportlets\nWorking directory: /x\n\n"
                     "Node inputs:\n\nsource_file = /raw/sub-01_T1w.nii.gz\n\nTraceback (most "
                     "recent call last):\n  File \"x.py\", line 1\nValueError: bad image\n")
    text = rebuild_reports(out, participants=["sub-01"])[0].read_text()
    assert "sub-01_desc-segmentation_T1w.svg is missing" in text
    assert "1 crash file(s) for this subject, 1 other(s)" in text and "ValueError: bad image" in text
    # a participant whose run failed before its report: a page with its errors
    failed = render_subject_report(out, "02").read_text()
    assert "No report was saved for sub-02" in failed and "CUDA out of memory" in failed
    with pytest.raises(MissingInputError, match="sub-09"):
        rebuild_reports(out, participants=["09"])
    shutil.rmtree(out / "logs")
    with pytest.raises(MissingInputError, match="sub-02"):
        render_subject_report(out, "02")


def test_generation_reportlets_flicker_input_and_output(fake, tmp_path):
    s = fake["subjects"]["01"]
    source = nb.load(str(s["source"]))
    generated = _save(np.asanyarray(source.dataobj) * 0.5, source.affine, tmp_path / "den.nii.gz")
    stored = shutil.copyfile(generated, fake["out"] / "sub-01/anat/sub-01_desc-denoised_T1w.nii.gz")
    facts = _reportlets(fake, "01", task="generation", output_names=["denoised"],
                        native_masks=[], native_outputs=[str(generated)],
                        derivatives=[str(stored)])
    assert facts["structures"] == [] and facts["segmentation"] is None
    (entry,) = facts["generated"]
    assert entry["file"] == "sub-01/anat/sub-01_desc-denoised_T1w.nii.gz"
    svg = (fake["out"] / entry["figure"]).read_text()
    assert FOREGROUND in svg and svg.count("<image") >= 2 * 3 * 6


# --------------------------------------------------------------------------- workflow wiring
def test_report_nodes_get_their_facts_through_connections(fake):
    """Every report input the page depends on is a workflow connection (or a given value)."""
    from neuroverse_bids.workflows.participant import init_main_wf
    from neuroverse_bids.workflows.plan import MainWorkflowConfig, TaskOutputs, TemplateSpace

    f, s = fake["files"], fake["subjects"]
    workflow = init_main_wf(MainWorkflowConfig(
        targets={"01": [str(s["01"]["source"])]}, subsets={"set0": ["02", "03"]},
        subset_of={"01": "set0"},
        space=TemplateSpace(TEMPLATE, str(f["template"]), str(f["template_mask"]),
                            str(f["grid"])),
        outputs=TaskOutputs("segmentation", tuple(STRUCTURES)), model=str(f["template"]),
        output_dir=str(fake["out"]), static_meta=STATIC, sloppy=True, seed=0,
        context_pool=str(f["context_set"])))
    from nipype.interfaces.utility import IdentityInterface

    graph = workflow._create_flat_graph()
    nodes = {n.fullname.split(".", 1)[1]: n for n in graph.nodes()}

    def origin(node, field):
        """The node and output that ``node.field`` is connected from, through identity nodes."""
        for upstream, _, data in graph.in_edges(node, data=True):
            for source_field, target_field in data["connect"]:
                if target_field == field:
                    if isinstance(upstream.interface, IdentityInterface):
                        return origin(upstream, source_field)
                    return upstream.fullname.split(".", 1)[1], source_field
        return None

    reportlets = nodes["ds_sub_01_wf.reportlets"]
    assert origin(reportlets, "info") == ("sub_01_wf.icl", "info")
    assert origin(reportlets, "forward_transform") == ("sub_01_wf.register", "forward_transform")
    assert origin(reportlets, "native_masks") == ("sub_01_wf.native_masks", "masks")
    assert origin(reportlets, "derivatives") == ("ds_sub_01_wf.stored", "out")
    sinks = [n for name, n in nodes.items() if name.startswith("ds_sub_01_wf.ds_")]
    assert sorted(origin(nodes["ds_sub_01_wf.stored"], f"in{i}")[0]
                  for i in range(1, len(sinks) + 1)) == sorted(n.fullname.split(".", 1)[1]
                                                               for n in sinks)
    report = nodes["report_sub_01_wf.report"]
    assert origin(report, "images") == ("report_sub_01_wf.images", "out")
    assert origin(nodes["report_sub_01_wf.images"], "in1") == ("ds_sub_01_wf.reportlets", "facts")
    assert origin(report, "context_set") == ("context_set_wf.stack_set0", "context_set")
    assert reportlets.inputs.template_mask == str(f["template_mask"])
    assert nodes["ds_sub_01_wf.inputnode"].inputs.source_file == str(s["01"]["source"])
    assert origin(reportlets, "source_file") is None  # given by the inputnode's value


# --------------------------------------------------------------------------- crash files
def _fail(in_file, factor):
    raise ValueError(f"{in_file}: cannot read this NIfTI file")


@pytest.mark.parametrize("crash_format", ["txt", "pklz"])
def test_summarise_real_nipype_crash_files(tmp_path, crash_format):
    from nipype.interfaces import utility as niu
    from nipype.pipeline import engine as pe

    main = pe.Workflow(name="neuroverse3d_wf", base_dir=str(tmp_path / "work"))
    sub = pe.Workflow(name="sub_02_wf")
    node = pe.Node(niu.Function(function=_fail, input_names=["in_file", "factor"],
                                output_names=["out"]), name="icl")
    node.inputs.in_file, node.inputs.factor = "/data/sub-02/anat/sub-02_T1w.nii.gz", 2
    sub.add_nodes([node])
    main.add_nodes([sub])
    main.config["execution"].update({"crashdump_dir": str(tmp_path / "out/logs"),
                                     "crashfile_format": crash_format})
    with pytest.raises(RuntimeError):
        main.run(plugin="Linear")
    (crash,) = (tmp_path / "out/logs").glob(f"crash-*.{crash_format}")
    assert summarise_crash(crash) == {
        "node": "neuroverse3d_wf.sub_02_wf.icl",
        "input": "in_file = /data/sub-02/anat/sub-02_T1w.nii.gz",
        "error": "ValueError: /data/sub-02/anat/sub-02_T1w.nii.gz: cannot read this NIfTI file"}
    own, other = crash_files(tmp_path / "out", "02")
    assert [c for c, _ in own] == [crash] and not other


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "executed"))


def test_crash_pickles_are_read_without_running_their_code(tmp_path):
    marker = tmp_path / "marker"
    crash = tmp_path / "crash-20250101-000000-user-icl-0-1-2-3-4.pklz"
    with gzip.open(crash, "wb") as stream:
        pickle.dump({"node": _Payload(marker), "traceback": ["Traceback\n", "OSError: disk\n"]},
                    stream)
    summary = summarise_crash(crash)
    assert not marker.exists()
    assert summary["error"] == "OSError: disk" and summary["node"] == "icl"
    broken = tmp_path / "crash-broken.pklz"
    broken.write_bytes(b"not a pickle")
    assert summarise_crash(broken)["error"].startswith("unreadable crash file")


# --------------------------------------------------------------------------- headless browser
def _pixels(png):
    import matplotlib.image as mpimg

    return mpimg.imread(str(png))[..., :3]


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_page_and_flicker_frames_render_in_chromium(fake, report01, tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "scripts/screenshot_report.py"),
                             str(report01["page"]), str(tmp_path)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    shots = {Path(line).name: Path(line) for line in result.stdout.split()}
    assert sorted(shots) == ["sub-01.png", "sub-01_desc-registration_T1w_bottom.png",
                             "sub-01_desc-registration_T1w_top.png"]
    page = _pixels(shots["sub-01.png"])
    assert page.shape[:2] == (2000, 1280) and is_nonempty_image(shots["sub-01.png"])
    dark = (page.mean(axis=2) < 0.2).mean()  # the black figure backgrounds are drawn
    assert dark > 0.1, dark
    top, bottom = (_pixels(shots[f"sub-01_desc-registration_T1w_{k}.png"]) for k in ("top", "bottom"))
    assert np.abs(top - bottom).mean() > 0.005  # the two frames of the flicker differ


# --------------------------------------------------------------------------- a real run
def test_rebuild_reports_of_a_real_run(app_run, tmp_path):
    """``rebuild_reports`` on a copy of a participant run's output folder, pages deleted."""
    out = tmp_path / "out"
    shutil.copytree(app_run["out"], out, ignore=shutil.ignore_patterns("cache"))
    pages = {s: (out / f"sub-{s}.html").read_text() for s in ("01", "02")}
    for subject in pages:
        (out / f"sub-{subject}.html").unlink()
    rebuilt = rebuild_reports(out)
    # and group.html when the group level ran on this folder before
    assert rebuilt[:2] == [out / "sub-01.html", out / "sub-02.html"]
    assert rebuilt[2:] == ([out / "group.html"] if (app_run["out"] / "group.html").is_file() else [])
    for subject, before in pages.items():
        page = out / f"sub-{subject}.html"
        assert page.read_text() == before
        figures = report_figures(page)
        assert len(figures) == 3 and all(is_nonempty_image(f) for f in figures)
        facts = read_facts(out, subject)
        sidecar = json.loads((out / f"sub-{subject}/anat/sub-{subject}_desc-brain_mask.json")
                             .read_text())
        (image,) = facts["images"]
        assert image["info"]["model_sha256"] == sidecar["Model"]["SHA256"]
        assert image["info"]["context_subjects"] == sidecar["ContextSubjects"]
        assert facts["context"]["subjects"] == sidecar["ContextSubjects"]
        volume = mask_volume_mm3(out / f"sub-{subject}/anat/sub-{subject}_desc-brain_mask.nii.gz")
        assert image["structures"][0] == {"name": "brain", "volume_mm3": round(volume, 3),
                                          "file": f"sub-{subject}/anat/sub-{subject}_desc-brain_mask.nii.gz"}
