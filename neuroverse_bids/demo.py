"""Synthetic demo and test data made from the MNI152 2009a template in nilearn's wheel.

``make_demo_dataset(out)`` writes, offline and deterministically for a seed::

    out/bids/                  raw BIDS dataset: sub-XX/anat/sub-XX_T1w.nii.gz (int16)
    out/derivatives/labels/    sub-XX/anat/sub-XX_desc-brain_mask.nii.gz, sub-XX_dseg.nii.gz
                               (uint8, on each T1w's grid) and dseg.tsv (1 GM, 2 WM)
    out/templateflow/          TEMPLATEFLOW_HOME with tpl-MNI152NLin2009aSym (res-1)
    out/context-spec.json      a ready segmentation spec (brain, GM, WM) whose
                               ``num_contexts`` every target can meet
    out/sourcedata/demo_truth.json   the random parameters of every subject

Each subject is drawn by the one subject generator (:mod:`.anatomy.synth`, ``t1`` kind) from
the template's T1w and tissue labels (:func:`.anatomy.sources.load_mni152`), put once on a
native grid of ``voxel_size`` mm around the brain and stored in a cycling axis orientation
(RAS, LPS, PIR, LIA): a random pose (rotation <= 10 deg per axis, scale 0.93-1.07), a smooth
displacement (< 3 mm), a Legendre bias field and noise (:data:`DEMO_SUBJECT`). The grid's
world origin is shifted by up to 12 mm per axis and the image is stored at a random scale
(300-1200) as int16. Labels come from the same draw: brain = the template's brain mask, dseg
= its GM (1) and WM (2) tissue labels.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nb
import numpy as np
import torch

from . import __version__
from .anatomy.sources import TISSUE, Atlas, atlas_on_grid, load_mni152
from .anatomy.synth import SubjectConfig, make_subject, subject_seed
from .model.degradations import uniform
from .workflows.errors import OutputError, UsageError
from .workflows.geometry import mask_bounding_box
from .workflows.niftiio import write_nifti_atomic, write_text_atomic
from .workflows.templates import OFFLINE_TEMPLATE

ORIENTATIONS = ("RAS", "LPS", "PIR", "LIA")
CONTEXT_SPEC = {
    "task": "segmentation", "images": {"dataset": "bids", "suffix": "T1w"},
    "labels": {"dataset": "derivatives/labels"},
    "structures": [{"name": "brain", "mask": "brain"}, {"name": "GM", "dseg": "GM"},
                   {"name": "WM", "dseg": "WM"}],
    "num_contexts": 3, "seed": 0}
#: a target's contexts are the *other* subjects, so a dataset that can run needs two
MIN_SUBJECTS = 2
DSEG_LABELS = {1: "GM", 2: "WM"}
#: the demo's generator settings; the smooth displacement is in mm (divided by the voxel size)
DEMO_SUBJECT = SubjectConfig(scale=(0.93, 1.07), rotation_deg=10.0, deform_voxels=1.7,
                             deform_points=5, bias_scale=(0.0, 0.1), noise_std=(0.01, 0.03))
MAX_SHIFT_MM = 12.0
INTENSITY_SCALE = (300.0, 1200.0)
MARGIN_MM = 20.0


def native_atlas(source, voxel_size: float) -> Atlas:
    """``source`` on an RAS grid of ``voxel_size`` mm around its brain, with a margin of
    :data:`MARGIN_MM` (room for the pose): the one resampling of the template per dataset."""
    low, high = mask_bounding_box(source.tissue >= TISSUE["CSF"], source.affine)
    low, high = low - MARGIN_MM, high + MARGIN_MM
    affine = np.diag([voxel_size] * 3 + [1.0])
    affine[:3, 3] = low
    shape = np.ceil((high - low) / voxel_size).astype(int) + 1
    return atlas_on_grid(source, nb.Nifti1Image(np.zeros(shape, np.uint8), affine))


def reoriented(atlas: Atlas, orientation: str) -> Atlas:
    """The same atlas with its voxel axes in ``orientation`` (e.g. ``LPS``): the voxel centres
    are the same, only their order changes (a permutation and flips, no resampling)."""
    change = nb.orientations.ornt_transform(
        nb.orientations.axcodes2ornt(nb.aff2axcodes(atlas.reference.affine)),
        nb.orientations.axcodes2ornt(orientation))

    def turn(volume: torch.Tensor) -> torch.Tensor:
        data = nb.orientations.apply_orientation(volume.numpy(), change)
        return torch.from_numpy(np.ascontiguousarray(data))

    return Atlas(atlas.name, turn(atlas.image), turn(atlas.tissue), turn(atlas.dseg),
                 atlas.reference.as_reoriented(change), list(atlas.files))


def _scanner_image(affine, shape) -> nb.Nifti1Image:
    """A header-only reference: ``affine`` as sform and qform with code 1 (scanner), mm units."""
    img = nb.Nifti1Image(np.zeros(shape, np.uint8), affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    img.header.set_xyzt_units("mm")
    return img


def make_demo_subject(atlas: Atlas, generator: torch.Generator, orientation="RAS") -> dict:
    """One demo subject drawn from ``atlas`` (from :func:`native_atlas`; see the module docstring).

    Returns dict(reference: header-only image of the subject's grid, t1w int16, brain uint8,
    dseg uint8 (1 GM, 2 WM), truth=dict of the random parameters).
    """
    atlas = reoriented(atlas, orientation)
    grid = atlas.reference
    voxel_size = float(np.linalg.norm(grid.affine[:3, 0]))
    config = SubjectConfig(**{**DEMO_SUBJECT.to_dict(),
                              "deform_voxels": DEMO_SUBJECT.deform_voxels / voxel_size})
    subject = make_subject(atlas, "t1", generator, config)
    shift = np.array([uniform(generator, -MAX_SHIFT_MM, MAX_SHIFT_MM) for _ in range(3)])
    scale = uniform(generator, *INTENSITY_SCALE)
    affine = grid.affine.copy()
    affine[:3, 3] += shift
    # subject world -> subject voxel -> (pose) template-grid voxel -> template world
    template_from_subject = grid.affine @ subject["pose"].numpy() @ np.linalg.inv(affine)
    dseg = subject["dseg"].numpy()
    classes = np.where(dseg == TISSUE["GM"], 1, np.where(dseg == TISSUE["WM"], 2, 0))
    truth = {"orientation": orientation, "voxel_size_mm": voxel_size,
             "shape": [int(n) for n in grid.shape], "world_shift_mm": shift.round(6).tolist(),
             "template_from_subject_world": template_from_subject.round(8).tolist(),
             "max_displacement_mm": float(subject["max_smooth_voxels"]) * voxel_size,
             "intensity_scale": scale}
    return {"reference": _scanner_image(affine, grid.shape),
            "t1w": np.round(subject["image"].numpy() * scale).astype(np.int16),
            "brain": subject["brain_mask"].numpy().astype(np.uint8),
            "dseg": classes.astype(np.uint8), "truth": truth}


def demo_context_spec(subjects: int) -> dict:
    """:data:`CONTEXT_SPEC` for a dataset of ``subjects``: each target leaves itself out of the
    pool, so ``num_contexts`` is at most ``subjects - 1`` (else the run stops with exit 65)."""
    return dict(CONTEXT_SPEC, num_contexts=max(1, min(CONTEXT_SPEC["num_contexts"], subjects - 1)))


def _save_json(data, path: Path):
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def make_demo_dataset(out, subjects=4, seed=0, voxel_size=2.0, overwrite=False) -> Path:
    """Write the demo datasets under ``out`` (see the module docstring). Returns ``out``.

    ``voxel_size`` (mm) of the native grids: 2 mm gives about 93x111x98 voxels per subject.
    Existing ``out/bids`` or ``out/derivatives/labels`` folders are refused unless ``overwrite``
    (then they are deleted first).
    """
    out = Path(out).absolute()
    if subjects < MIN_SUBJECTS or seed < 0 or not 0.5 <= voxel_size <= 8:
        raise UsageError(f"need subjects >= {MIN_SUBJECTS} (each subject's contexts are the "
                         f"others), seed >= 0 and 0.5 <= voxel size <= 8 mm; got {subjects}, "
                         f"{seed}, {voxel_size}")
    bids, labels = out / "bids", out / "derivatives" / "labels"
    for folder in (bids, labels):
        if folder.exists() and any(folder.iterdir()):
            if not overwrite:
                raise OutputError(f"{folder} exists and is not empty; choose another output "
                                  "folder or pass --overwrite")
            shutil.rmtree(folder)
    # load_mni152 also fills out/templateflow, the TEMPLATEFLOW_HOME the demo's users need
    atlas = native_atlas(load_mni152(out), voxel_size)
    _save_json({"Name": "Neuroverse3D synthetic demo", "BIDSVersion": "1.9.0",
                "DatasetType": "raw", "License": "CC0",
                "Authors": ["neuroverse3d-demo-data"],
                "GeneratedBy": [{"Name": "neuroverse3d-demo-data", "Version": __version__}]},
               bids / "dataset_description.json")
    write_text_atomic(bids / "README",
                      "Synthetic T1w images made by `neuroverse3d-demo-data` from the MNI152 "
                      "2009a symmetric template (random pose, smooth deformation, bias, noise).\n"
                      "For software tests and demonstrations only; no real participant.\n")
    _save_json({"Name": "Neuroverse3D synthetic demo labels", "BIDSVersion": "1.9.0",
                "DatasetType": "derivative",
                "GeneratedBy": [{"Name": "neuroverse3d-demo-data", "Version": __version__,
                                 "Description": "template labels warped with each subject"}]},
               labels / "dataset_description.json")
    write_text_atomic(labels / "README",
                      "Labels of the synthetic demo subjects: the template's brain mask and GM/WM "
                      "warped with each subject (see dseg.tsv).\n")
    write_text_atomic(labels / "dseg.tsv", "index\tname\n" + "".join(
        f"{k}\t{v}\n" for k, v in DSEG_LABELS.items()))
    rows, truth = ["participant_id\tage\tsex"], {}
    for index in range(1, subjects + 1):
        sub = f"sub-{index:02d}"
        generator = torch.Generator().manual_seed(subject_seed(seed, "demo", index))
        subject = make_demo_subject(atlas, generator, ORIENTATIONS[(index - 1) % len(ORIENTATIONS)])
        for folder, suffix, key in ((bids, "T1w", "t1w"), (labels, "desc-brain_mask", "brain"),
                                    (labels, "dseg", "dseg")):
            write_nifti_atomic(subject[key], subject["reference"],
                               folder / sub / "anat" / f"{sub}_{suffix}.nii.gz")
        age = int(uniform(generator, 20, 80))
        sex = "MF"[int(uniform(generator, 0, 2))]
        rows.append(f"{sub}\t{age}\t{sex}")
        truth[sub] = subject["truth"]
    write_text_atomic(bids / "participants.tsv", "\n".join(rows) + "\n")
    _save_json({"age": {"Description": "age (synthetic)", "Units": "year"},
                "sex": {"Description": "sex (synthetic)", "Levels": {"M": "male", "F": "female"}}},
               bids / "participants.json")
    _save_json({"template": OFFLINE_TEMPLATE, "seed": seed, "subjects": subjects,
                "generator": f"neuroverse3d-demo-data {__version__}",
                "subject_config": DEMO_SUBJECT.to_dict(),
                "note": "template_from_subject_world maps subject world (RAS mm) to template "
                        "world before the smooth displacement; labels files are the truth",
                "per_subject": truth}, out / "sourcedata" / "demo_truth.json")
    _save_json(demo_context_spec(subjects), out / "context-spec.json")
    return out
