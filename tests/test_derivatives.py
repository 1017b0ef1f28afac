"""The derivatives writer: names and entity order, data and dtypes, sidecars, atomic writes,
dataset-level files, and a small output dataset that passes bids-validator-deno."""
import json
import os

import nibabel as nb
import numpy as np
import pytest
from nipype.pipeline import engine as pe

from neuroverse_bids.bids import validator_issues
from neuroverse_bids.workflows import derivatives
from neuroverse_bids.workflows.derivative_names import derivative_path, parse_bids_name
from neuroverse_bids.workflows.derivatives import (
    DerivativesDataSink,
    write_dataset_description,
    write_dseg_tsv,
)
from neuroverse_bids.workflows.errors import BadInputError, OutputError

TEMPLATE = "MNI152NLin2009cAsym"


def _save(path, data, affine=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nb.Nifti1Image(data, np.diag([1.5, 1.5, 1.5, 1.0]) if affine is None else affine)
    img.header.set_xyzt_units("mm", "sec")
    nb.save(img, str(path))
    return str(path)


def _snapshot(root):
    return {os.path.relpath(os.path.join(d, n), root): os.stat(os.path.join(d, n)).st_mtime_ns
            for d, _, names in os.walk(root) for n in names}


@pytest.fixture
def raw(tmp_path):
    root = tmp_path / "raw"
    (root / "sub-01" / "ses-1" / "anat").mkdir(parents=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "raw", "BIDSVersion": "1.10.0"}))
    source = root / "sub-01" / "ses-1" / "anat" / "sub-01_ses-1_acq-mp_run-2_T1w.nii.gz"
    _save(source, np.random.default_rng(0).random((8, 8, 8), dtype=np.float32))
    return source


def _sink(out, source, in_file, entities, meta=None, **kwargs):
    result = DerivativesDataSink(base_directory=str(out), source_file=str(source),
                                 in_file=str(in_file), entities=entities, meta=meta or {},
                                 **kwargs).run()
    return result.outputs.out_file, json.loads(open(result.outputs.out_meta).read())


def test_names_follow_the_bids_entity_order(tmp_path, raw):
    out = tmp_path / "out"
    path = derivative_path(out, raw, desc="prob", label="GM", space=TEMPLATE, suffix="probseg")
    assert path == (out / "sub-01" / "ses-1" / "anat" /
                    f"sub-01_ses-1_acq-mp_run-2_space-{TEMPLATE}_label-GM_desc-prob_probseg.nii.gz")
    xfm = derivative_path(out, raw, to=TEMPLATE, mode="image", suffix="xfm", extension=".mat",
                          **{"from": "T1w"})
    assert xfm.name == f"sub-01_ses-1_acq-mp_run-2_from-T1w_to-{TEMPLATE}_mode-image_xfm.mat"
    dropped = derivative_path(out, raw, acquisition=None, run=None, description="brain",
                              suffix="mask")
    assert dropped.name == "sub-01_ses-1_desc-brain_mask.nii.gz"
    assert parse_bids_name(path)["label"] == "GM"
    for bad in ({"desc": "left_hippo"}, {"label": "a-b"}, {"colour": "red"}):
        with pytest.raises(ValueError):
            derivative_path(out, raw, suffix="mask", **bad)
    with pytest.raises(ValueError):
        derivative_path(out, tmp_path / "brain.nii.gz")


def test_names_come_from_the_patterns_which_refuse_what_they_cannot_name(tmp_path, raw):
    out = tmp_path / "out"
    preproc = tmp_path / "fmriprep" / "sub-02" / "anat" / "sub-02_ce-gad_echo-1_desc-preproc_T1w.nii.gz"
    assert derivative_path(out, preproc, space=TEMPLATE, res=2, label="GM", suffix="probseg") == (
        out / "sub-02" / "anat" /
        f"sub-02_ce-gad_echo-1_space-{TEMPLATE}_res-2_label-GM_desc-preproc_probseg.nii.gz")
    assert derivative_path(out, raw, desc="GM", suffix="mask", extension=".json").name == \
        "sub-01_ses-1_acq-mp_run-2_desc-GM_mask.json"
    xfm = {"from": "T1w", "to": TEMPLATE, "mode": "image", "suffix": "xfm"}
    assert derivative_path(out, raw, **xfm, extension="json").name == \
        f"sub-01_ses-1_acq-mp_run-2_from-T1w_to-{TEMPLATE}_mode-image_xfm.json"
    for bad in ({"from": "T1w", "suffix": "mask"},                  # from/to/mode: transforms only
                dict(xfm, to=None, extension=".mat"),               # a transform needs all three
                dict(xfm, extension=".nii.gz"),                     # transforms are not images
                {"suffix": "mask", "extension": ".mat"},
                {"suffix": "mask", "extension": ""}):
        with pytest.raises(ValueError, match="no derivative file name"):
            derivative_path(out, raw, **bad)
    with pytest.raises(ValueError, match="unknown BIDS entity 'tpl'"):
        derivative_path(out, raw, tpl=TEMPLATE, suffix="mask")


def test_sink_keeps_data_and_writes_integer_labels(tmp_path, raw):
    out, work = tmp_path / "out", tmp_path / "work"
    rng = np.random.default_rng(1)
    prob64 = rng.random((8, 8, 8))  # float64, uncompressed: kept float64, only gzipped
    probseg, meta = _sink(out, raw, _save(work / "p.nii", prob64),
                          {"space": TEMPLATE, "label": "GM", "suffix": "probseg"})
    img = nb.load(probseg)
    assert probseg.endswith(".nii.gz") and img.get_data_dtype() == np.float64
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), prob64)
    assert "SpatialReference" not in meta  # template space

    mask_data = (rng.random((8, 8, 8)) > 0.5).astype(np.float32)
    mask, meta = _sink(out, raw, _save(work / "m.nii.gz", mask_data),
                       {"desc": "GM", "suffix": "mask"})
    img = nb.load(mask)
    assert img.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), mask_data)
    np.testing.assert_allclose(img.affine, np.diag([1.5, 1.5, 1.5, 1.0]))
    assert meta["SpatialReference"] == "bids:raw:sub-01/ses-1/anat/" + raw.name

    dseg_data = rng.integers(0, 300, (8, 8, 8)).astype(np.float32)
    dseg, _ = _sink(out, raw, _save(work / "d.nii.gz", dseg_data), {"suffix": "dseg"})
    assert nb.load(dseg).get_data_dtype() == np.int16
    np.testing.assert_array_equal(np.asanyarray(nb.load(dseg).dataobj), dseg_data)

    with pytest.raises(BadInputError, match="integer"):
        _sink(out, raw, _save(work / "f.nii.gz", prob64.astype(np.float32)), {"suffix": "dseg"})
    with pytest.raises(BadInputError, match="0 and 1"):
        _sink(out, raw, _save(work / "g.nii.gz", dseg_data), {"desc": "x", "suffix": "mask"})


def test_sidecar_contents(tmp_path, raw):
    out, work = tmp_path / "out", tmp_path / "work"
    extra = "bids:labels:sub-02/anat/sub-02_desc-GM_mask.nii.gz"
    meta = {"Model": {"Name": "neuroverse3d", "SHA256": "0" * 64}, "Precision": "bfloat16",
            "ContextSubjects": ["02", "03"], "Sources": [extra],
            "MiniContextSize": np.int64(4), "Spec": tmp_path / "spec.json"}
    image, sidecar = _sink(out, raw, _save(work / "t.nii.gz", np.ones((8, 8, 8), np.float32)),
                           {"desc": "denoised"}, meta=meta)
    assert os.path.basename(image) == "sub-01_ses-1_acq-mp_run-2_desc-denoised_T1w.nii.gz"
    assert sidecar["Sources"] == ["bids:raw:sub-01/ses-1/anat/" + raw.name, extra]
    assert sidecar["Model"] == meta["Model"] and sidecar["Precision"] == "bfloat16"
    assert sidecar["ContextSubjects"] == ["02", "03"]
    assert sidecar["MiniContextSize"] == 4 and sidecar["Spec"] == str(tmp_path / "spec.json")
    assert sidecar["SkullStripped"] is False
    assert sidecar["SpatialReference"] == sidecar["Sources"][0]
    _, sidecar = _sink(out, raw, _save(work / "t.nii.gz", np.ones((8, 8, 8), np.float32)),
                       {"desc": "brain"}, meta={"SkullStripped": True})
    assert sidecar["SkullStripped"] is True


def test_writes_are_atomic(tmp_path, raw, monkeypatch):
    out, work = tmp_path / "out", tmp_path / "work"
    mask = _save(work / "m.nii", np.ones((8, 8, 8), np.uint8))
    first, _ = _sink(out, raw, mask, {"desc": "GM", "suffix": "mask"})
    content = open(first, "rb").read()
    second = _save(work / "m2.nii", np.zeros((8, 8, 8), np.uint8))

    def broken_save(img, filename):
        open(filename, "wb").write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(derivatives.nb, "save", broken_save)
    with pytest.raises(OutputError, match="No space left"):
        _sink(out, raw, second, {"desc": "GM", "suffix": "mask"})
    assert open(first, "rb").read() == content  # the previous file is intact
    names = [n for _, _, files in os.walk(out) for n in files]
    assert sorted(names) == ["sub-01_ses-1_acq-mp_run-2_desc-GM_mask.json",
                             "sub-01_ses-1_acq-mp_run-2_desc-GM_mask.nii.gz"]


def test_dataset_level_files(tmp_path, raw):
    out = tmp_path / "out"
    source = {"path": str(tmp_path / "raw"), "name": "raw"}
    path = write_dataset_description(out, [source, {"URL": "https://doi.org/x", "DOI": "x"}],
                                     version="1.2.3", container={"Type": "docker", "Tag": "a:1"})
    description = json.loads(path.read_text())
    assert description["DatasetType"] == "derivative"
    assert description["BIDSVersion"].startswith("1.")
    assert description["GeneratedBy"] == [{"Name": "Neuroverse3D", "Version": "1.2.3",
                                           "Container": {"Type": "docker", "Tag": "a:1"}}]
    assert description["SourceDatasets"] == [{"URL": (tmp_path / "raw").as_uri()},
                                             {"URL": "https://doi.org/x", "DOI": "x"}]
    assert description["DatasetLinks"] == {"raw": (tmp_path / "raw").as_uri()}
    assert "*_xfm.*" in (out / ".bidsignore").read_text().splitlines()

    before = _snapshot(out)
    write_dataset_description(out, [source], version="1.2.3",
                              container={"Type": "docker", "Tag": "a:1"})
    assert json.loads(path.read_text())["SourceDatasets"] == [{"URL": (tmp_path / "raw").as_uri()}]
    again = _snapshot(out)
    write_dataset_description(out, [source], version="1.2.3",
                              container={"Type": "docker", "Tag": "a:1"})
    assert _snapshot(out) == again  # identical content: nothing rewritten
    assert again[".bidsignore"] == before[".bidsignore"]
    with pytest.raises(OutputError) as caught:
        write_dataset_description(out, [source], name="fMRIPrep", version="24.0")
    assert caught.value.exit_code == 73

    tsv = write_dseg_tsv(out, {2: "amygdala", 1: "hippocampus"})
    assert tsv.read_text() == "index\tname\n1\thippocampus\n2\tamygdala\n"
    with pytest.raises(ValueError):
        write_dseg_tsv(out, {0: "background"})


def test_sink_runs_as_a_nipype_node(tmp_path, raw):
    node = pe.Node(DerivativesDataSink(base_directory=str(tmp_path / "out"),
                                       entities={"desc": "GM", "suffix": "mask"}),
                   name="ds", base_dir=str(tmp_path / "work"))
    node.inputs.source_file = str(raw)
    node.inputs.in_file = _save(tmp_path / "m.nii.gz", np.ones((8, 8, 8), np.float32))
    node.inputs.meta = {"Precision": "float32"}
    result = node.run()
    assert os.path.isfile(result.outputs.out_file)
    assert json.loads(open(result.outputs.out_meta).read())["Precision"] == "float32"


def test_output_dataset_passes_the_validator(tmp_path, raw):
    raw_root = tmp_path / "raw"
    raw_before = _snapshot(raw_root)
    out, work = tmp_path / "derivatives" / "neuroverse3d", tmp_path / "work"
    write_dataset_description(out, [{"path": str(raw_root), "name": "raw"}], version="0.1.0")
    write_dseg_tsv(out, {1: "GM", 2: "WM"})
    rng = np.random.default_rng(2)
    meta = {"Model": {"Name": "neuroverse3d", "SHA256": "1" * 64}, "Precision": "float32",
            "ContextSubjects": ["02"]}
    work.mkdir()
    mat = work / "affine.mat"
    mat.write_bytes(b"\x00\x01binary transform")
    outputs = [
        (_save(work / "m.nii.gz", (rng.random((8, 8, 8)) > .5).astype(np.float32)),
         {"desc": "GM", "suffix": "mask"}),
        (_save(work / "p.nii.gz", rng.random((8, 8, 8), dtype=np.float32)),
         {"space": TEMPLATE, "label": "GM", "suffix": "probseg"}),
        (_save(work / "d.nii.gz", rng.integers(0, 3, (8, 8, 8)).astype(np.float32)),
         {"suffix": "dseg"}),
        (_save(work / "t.nii.gz", rng.random((8, 8, 8), dtype=np.float32)),
         {"desc": "denoised"}),
        (mat, {"from": "T1w", "to": TEMPLATE, "mode": "image", "suffix": "xfm"}),
        (mat, {"from": TEMPLATE, "to": "T1w", "mode": "image", "suffix": "xfm"}),
    ]
    for in_file, entities in outputs:
        _sink(out, raw, in_file, entities, meta=meta)
    anat = out / "sub-01" / "ses-1" / "anat"
    names = sorted(p.name for p in anat.iterdir())
    assert f"sub-01_ses-1_acq-mp_run-2_from-T1w_to-{TEMPLATE}_mode-image_xfm.mat" in names
    assert f"sub-01_ses-1_acq-mp_run-2_from-{TEMPLATE}_to-T1w_mode-image_xfm.mat" in names
    assert len([n for n in names if n.endswith((".nii.gz", ".mat"))]) == 6
    assert not [n for _, _, f in os.walk(out) for n in f if n.startswith(".") and n != ".bidsignore"]

    issues = validator_issues(out)
    errors = [i for i in issues if i["severity"] == "error"]
    assert errors == []
    assert issues, "the validator reported nothing at all: it probably did not run"
    assert _snapshot(raw_root) == raw_before


def test_sidecars_say_why_auto_precision_ran_float32():
    from neuroverse_bids.workflows.participant import _merge_meta

    reason = "the model's recorded bfloat16 agreement with float32 misses its targets: dice_min 0.8 < 0.99"
    meta = _merge_meta({"precision": "float32", "precision_reason": reason}, {"Task": "seg"})
    assert meta["Precision"] == "float32" and meta["PrecisionReason"] == reason
    assert meta["Task"] == "seg"
    assert "PrecisionReason" not in _merge_meta({"precision": "bfloat16", "precision_reason": None}, {})
