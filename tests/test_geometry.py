"""Geometry apart from the network: registration, the model grid and the one resampler.

Done when a native label survives native -> model grid -> native with Dice >= 0.95 and the
registered synthetic subjects overlap the template brain mask with Dice >= 0.9.
"""
import json
import time

import nibabel as nb
import numpy as np
import pytest

from neuroverse_bids.workflows.errors import BadInputError, MissingInputError
from neuroverse_bids.workflows.geometry import (mask_bounding_box, model_grid, register_affine,
                                                resample, to_ants, transform_to_ras_affine)

TEMPLATE = "MNI152NLin2009aSym"
SUBJECTS = ["sub-01", "sub-03"]  # RAS and PIR voxel orders on disk


def dice(a, b) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return 2.0 * (a & b).sum() / (a.sum() + b.sum())


@pytest.fixture(scope="module")
def template(templateflow_home):
    prefix = templateflow_home / f"tpl-{TEMPLATE}" / f"tpl-{TEMPLATE}_res-1"
    return {"t1w": f"{prefix}_T1w.nii.gz", "mask": f"{prefix}_desc-brain_mask.nii.gz"}


def _native(demo, sub):
    labels = demo / "derivatives" / "labels" / sub / "anat"
    return {"t1w": demo / "bids" / sub / "anat" / f"{sub}_T1w.nii.gz",
            "mask": labels / f"{sub}_desc-brain_mask.nii.gz",
            "dseg": labels / f"{sub}_dseg.nii.gz"}


@pytest.fixture(scope="module")
def registrations(demo_dataset, template, tmp_path_factory):
    """Sloppy registration of two subjects (different voxel orders on disk), timed."""
    out = {}
    for sub in SUBJECTS:
        start = time.perf_counter()
        result = register_affine(_native(demo_dataset, sub)["t1w"], template["t1w"],
                                 tmp_path_factory.mktemp(sub), sloppy=True, seed=0,
                                 fixed_space=TEMPLATE)
        print(f"{sub}: sloppy registration {time.perf_counter() - start:.1f} s")
        out[sub] = result
    return out


def test_to_ants_matches_the_itk_reader(demo_dataset):
    import ants

    for sub in ("sub-02", "sub-03"):  # LPS and PIR voxel orders
        path = _native(demo_dataset, sub)["t1w"]
        ours, itk = to_ants(nb.load(str(path))), ants.image_read(str(path))
        assert np.allclose(ours.origin, itk.origin) and np.allclose(ours.spacing, itk.spacing)
        assert np.allclose(ours.direction, itk.direction)
        assert np.array_equal(ours.numpy(), itk.numpy())


def test_model_grid_is_centred_on_the_template_brain(template):
    mask = nb.load(template["mask"])
    grid = model_grid(mask, (128, 128, 128), 1.5)
    assert grid.shape == (128, 128, 128) and nb.aff2axcodes(grid.affine) == ("R", "A", "S")
    assert np.allclose(grid.header.get_zooms(), 1.5)
    low, high = mask_bounding_box(np.asanyarray(mask.dataobj) > 0, mask.affine)
    centre = nb.affines.apply_affine(grid.affine, [63.5, 63.5, 63.5])
    assert np.allclose(centre, (low + high) / 2)
    first, last = (nb.affines.apply_affine(grid.affine, v) for v in ([0] * 3, [127] * 3))
    assert np.all(first < low) and np.all(last > high)  # 192 mm holds the whole brain
    anisotropic = model_grid(template["mask"], (16, 20, 24), (6.0, 5.0, 4.0))
    assert anisotropic.shape == (16, 20, 24)
    assert np.allclose(anisotropic.header.get_zooms(), (6.0, 5.0, 4.0))
    with pytest.raises(BadInputError):
        model_grid(mask, 0, 1.5)


def test_resample_identity_across_orientations(demo_dataset, tmp_path):
    """No transform: same world points, so a reoriented copy maps back voxel for voxel."""
    path = _native(demo_dataset, "sub-01")["dseg"]
    img = nb.load(str(path))
    flipped = img.as_reoriented(nb.orientations.axcodes2ornt(("L", "I", "A")))
    nb.save(flipped, str(tmp_path / "lia.nii.gz"))
    out = resample(tmp_path / "lia.nii.gz", path, None, tmp_path / "back.nii.gz",
                   interpolation="nearest")
    back = nb.load(str(out))
    assert back.get_data_dtype() == np.uint8  # labels keep their type with nearest
    assert np.allclose(back.affine, img.affine)
    assert np.array_equal(np.asanyarray(back.dataobj), np.asanyarray(img.dataobj))
    linear = nb.load(str(resample(path, path, None, tmp_path / "lin.nii.gz")))
    assert linear.get_data_dtype() == np.float32
    with pytest.raises(BadInputError, match="interpolation"):
        resample(path, path, None, tmp_path / "x.nii.gz", interpolation="cubic")
    with pytest.raises(MissingInputError):
        resample(path, path, tmp_path / "missing.mat", tmp_path / "x.nii.gz")


def test_registered_subjects_overlap_the_template_brain(demo_dataset, template, registrations,
                                                        tmp_path):
    template_mask = np.asanyarray(nb.load(template["mask"]).dataobj) > 0
    for sub, result in registrations.items():
        assert result["forward"].name == f"from-T1w_to-{TEMPLATE}_mode-image_xfm.mat"
        assert result["inverse"].name == f"from-{TEMPLATE}_to-T1w_mode-image_xfm.mat"
        start = time.perf_counter()
        out = resample(_native(demo_dataset, sub)["mask"], template["t1w"], result["forward"],
                       tmp_path / f"{sub}_mask.nii.gz")
        print(f"{sub}: resample onto the 1 mm template {time.perf_counter() - start:.2f} s")
        registered = np.asanyarray(nb.load(str(out)).dataobj) > 0.5
        score = dice(registered, template_mask)
        print(f"{sub}: Dice(registered brain, template brain) = {score:.4f}")
        assert score >= 0.9


def test_registration_recovers_the_true_affine(demo_dataset, registrations):
    """The estimated map agrees with the generator's affine to within the smooth warp (3 mm)."""
    truth = json.loads((demo_dataset / "sourcedata/demo_truth.json").read_text())["per_subject"]
    for sub, result in registrations.items():
        template_from_subject = np.array(truth[sub]["template_from_subject_world"])
        subject_from_template = transform_to_ras_affine(result["forward"])
        mask = nb.load(str(_native(demo_dataset, sub)["mask"]))
        points = nb.affines.apply_affine(mask.affine, np.argwhere(np.asanyarray(mask.dataobj)))
        moved = nb.affines.apply_affine(subject_from_template @ template_from_subject, points)
        error = np.linalg.norm(moved - points, axis=1)
        print(f"{sub}: distance to the true affine: mean {error.mean():.2f}, "
              f"max {error.max():.2f} mm")
        assert error.mean() < 2.0 and error.max() < 4.0
        inverse = transform_to_ras_affine(result["inverse"])
        assert np.allclose(inverse @ subject_from_template, np.eye(4), atol=1e-4)


@pytest.mark.parametrize("grid_shape, voxel_mm", [((128, 128, 128), 1.5), ((64, 64, 64), 3.0)])
def test_labels_survive_grid_round_trip(demo_dataset, template, registrations, tmp_path,
                                        grid_shape, voxel_mm):
    """Native label -> model grid (forward, linear) -> native (inverse, linear, > 0.5)."""
    grid = model_grid(template["mask"], grid_shape, voxel_mm)
    nb.save(grid, str(tmp_path / "grid.nii.gz"))
    for sub, result in registrations.items():
        files = _native(demo_dataset, sub)
        mask_img = nb.load(str(files["mask"]))
        dseg = np.asanyarray(nb.load(str(files["dseg"])).dataobj)
        labels = {"brain": np.asanyarray(mask_img.dataobj) > 0, "WM": dseg == 2, "GM": dseg == 1}
        scores = {}
        for name, label in labels.items():
            native = tmp_path / f"{sub}_{name}.nii.gz"
            nb.save(nb.Nifti1Image(label.astype(np.float32), mask_img.affine), str(native))
            on_grid = resample(native, tmp_path / "grid.nii.gz", result["forward"],
                               tmp_path / f"{sub}_{name}_grid.nii.gz")
            assert nb.load(str(on_grid)).shape == grid_shape
            back = resample(on_grid, files["t1w"], result["inverse"],
                            tmp_path / f"{sub}_{name}_back.nii.gz")
            data = np.asanyarray(nb.load(str(back)).dataobj)
            if name == "brain":  # invert=True on the forward file is the inverse file
                back_inv = resample(on_grid, files["t1w"], result["forward"],
                                    tmp_path / f"{sub}_{name}_back2.nii.gz", invert=True)
                assert np.allclose(data, np.asanyarray(nb.load(str(back_inv)).dataobj),
                                   atol=1e-4)
            scores[name] = dice(data > 0.5, label)
        print(f"{sub} grid {grid_shape[0]}^3 at {voxel_mm} mm: round-trip Dice " +
              ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
        assert scores["brain"] >= 0.95 and scores["WM"] >= 0.9
        if voxel_mm <= 1.5:
            assert scores["WM"] >= 0.95 and scores["GM"] >= 0.95


def test_registration_workflow_is_deterministic(demo_dataset, template, registrations,
                                                tmp_path):
    """The registration node (:class:`RegisterToTemplate`, as the app's workflows use it) and
    the resampler rerun sub-01 in a Nipype workflow: identical transform files (same seed)."""
    from nipype.pipeline import engine as pe

    from neuroverse_bids.workflows.interfaces.geometry import (RegisterToTemplate,
                                                               ResampleToReference)

    files = _native(demo_dataset, "sub-01")
    register = pe.Node(RegisterToTemplate(in_file=str(files["t1w"]), template=template["t1w"],
                                          sloppy=True, template_id=TEMPLATE), name="register")
    to_template = pe.Node(ResampleToReference(in_file=str(files["mask"]),
                                              reference=template["t1w"]), name="mask_to_template")
    outer = pe.Workflow(name="outer", base_dir=str(tmp_path))
    outer.config["execution"]["remove_unnecessary_outputs"] = False  # read all of register's
    outer.connect(register, "forward_transform", to_template, "transform")
    graph = outer.run()
    results = {node.name: node.result.outputs for node in graph.nodes()}
    register = results["register"]
    assert register.forward_transform.endswith(f"from-T1w_to-{TEMPLATE}_mode-image_xfm.mat")
    assert register.inverse_transform.endswith(f"from-{TEMPLATE}_to-T1w_mode-image_xfm.mat")
    first = registrations["sub-01"]
    assert open(register.forward_transform, "rb").read() == first["forward"].read_bytes()
    assert open(register.inverse_transform, "rb").read() == first["inverse"].read_bytes()
    registered = nb.load(register.registered_file)
    assert registered.shape == nb.load(template["t1w"]).shape
    moved = np.asanyarray(nb.load(results["mask_to_template"].out_file).dataobj) > 0.5
    template_mask = np.asanyarray(nb.load(template["mask"]).dataobj) > 0
    assert dice(moved, template_mask) >= 0.9
