"""Synthetic demo and test data made from the MNI152 2009a template in nilearn's wheel.

``make_demo_dataset(out)`` writes, offline and deterministically for a seed::

    out/bids/                  raw BIDS dataset: sub-XX/anat/sub-XX_T1w.nii.gz (int16)
    out/derivatives/labels/    sub-XX/anat/sub-XX_desc-brain_mask.nii.gz, sub-XX_dseg.nii.gz
                               (uint8, on each T1w's grid) and dseg.tsv (1 GM, 2 WM)
    out/templateflow/          TEMPLATEFLOW_HOME with tpl-MNI152NLin2009aSym (res-1)
    out/context-spec.json      a ready segmentation spec (brain, GM, WM)
    out/sourcedata/demo_truth.json   the random parameters of every subject

Each subject is the template seen through a random moderate affine (rotation <= 10 deg per axis,
translation <= 12 mm, scale 0.93-1.07, shear <= 0.03) and a smooth random displacement (<= 3 mm,
sums of 50-mm plane waves), stored on a native grid of ``voxel_size`` mm in a cycling axis
orientation (RAS, LPS, PIR, LIA), with intensity scaling, a smooth multiplicative bias, and Rician noise.
Labels are warped alongside with the same sampling: brain = template mask > 0.5, dseg = argmax of
(rest, GM, WM) probabilities inside the brain. The deformation is a small numpy/scipy one
written here (no dependency on the training code).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nb
import numpy as np
from scipy import ndimage

from . import __version__
from .workflows.errors import OutputError, UsageError
from .workflows.geometry import mask_bounding_box
from .workflows.templates import DEMO_TEMPLATE, fill_templateflow_home, write_atomic

ORIENTATIONS = ("RAS", "LPS", "PIR", "LIA")
CONTEXT_SPEC = {
    "task": "segmentation", "images": {"dataset": "bids", "suffix": "T1w"},
    "labels": {"dataset": "derivatives/labels"},
    "structures": [{"name": "brain", "mask": "brain"}, {"name": "GM", "dseg": "GM"},
                   {"name": "WM", "dseg": "WM"}],
    "num_contexts": 3, "seed": 0}
DSEG_LABELS = {1: "GM", 2: "WM"}


def random_affine(rng, max_rotation_deg=10.0, max_translation_mm=12.0, max_log_scale=0.07,
                  max_shear=0.03) -> np.ndarray:
    """A 4x4 world (RAS mm) map ``template <- subject`` about the origin: R @ S @ shear, + t."""
    angles = np.deg2rad(rng.uniform(-max_rotation_deg, max_rotation_deg, 3))
    rotation = np.eye(3)
    for axis, angle in enumerate(angles):
        c, s = np.cos(angle), np.sin(angle)
        i, j = [a for a in range(3) if a != axis]
        step = np.eye(3)
        step[[i, i, j, j], [i, j, i, j]] = [c, -s, s, c]
        rotation = step @ rotation
    shear = np.eye(3)
    shear[np.triu_indices(3, 1)] = rng.uniform(-max_shear, max_shear, 3)
    scale = np.diag(np.exp(rng.uniform(-max_log_scale, max_log_scale, 3)))
    affine = np.eye(4)
    affine[:3, :3] = rotation @ scale @ shear
    affine[:3, 3] = rng.uniform(-max_translation_mm, max_translation_mm, 3)
    return affine


def smooth_displacement(rng, points, amplitude_mm=3.0, wavelength_mm=50.0, waves=4):
    """A smooth random displacement (mm) at world ``points`` [3, N]: sum of plane waves.

    Each of the 3 components sums ``waves`` sinusoids of wavelength ``wavelength_mm`` in random
    directions and phases; the field is scaled so its largest norm over ``points`` is
    ``amplitude_mm``. Its gradient stays below 2*pi*amplitude/wavelength (< 0.4 by default), so
    the warp is invertible.
    """
    field = np.zeros(points.shape, dtype=np.float32)
    for component in range(3):
        directions = rng.standard_normal((waves, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        phases = rng.uniform(0, 2 * np.pi, waves)
        weights = rng.uniform(0.5, 1.0, waves)
        for d, p, w in zip(directions, phases, weights):
            field[component] += w * np.sin(2 * np.pi / wavelength_mm * (d @ points) + p)
    return field * (amplitude_mm / max(float(np.sqrt((field ** 2).sum(0)).max()), 1e-6))


def bias_field(rng, shape, strength=0.25) -> np.ndarray:
    """exp(random quadratic polynomial in [-1, 1]^3 coordinates), about 1 +- ``strength``."""
    axes = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in shape], indexing="ij")
    terms = list(axes) + [a * b for k, a in enumerate(axes) for b in axes[k:]]
    coefs = rng.uniform(-1, 1, len(terms))
    log_field = sum(c * t for c, t in zip(coefs, terms))
    return np.exp(strength * log_field / max(np.abs(log_field).max(), 1e-6)).astype(np.float32)


def _native_grid(mask, mask_affine, tpl_from_subject, voxel_size, orientation, margin_mm=14.0):
    """(affine, shape) of a native grid in ``orientation`` around the subject's brain."""
    low, high = mask_bounding_box(mask > 0, mask_affine, np.linalg.inv(tpl_from_subject))
    low, high = low - margin_mm, high + margin_mm
    shape_ras = np.ceil((high - low) / voxel_size).astype(int) + 1
    ras = np.diag([voxel_size] * 3 + [1.0])
    ras[:3, 3] = low
    change = nb.orientations.ornt_transform(nb.orientations.axcodes2ornt("RAS"),
                                            nb.orientations.axcodes2ornt(orientation))
    reoriented = nb.Nifti1Image(np.zeros(shape_ras, np.uint8), ras).as_reoriented(change)
    return reoriented.affine, reoriented.shape


def _sample(volume, coords, order=1):
    return ndimage.map_coordinates(volume, coords, order=order, mode="constant", cval=0.0,
                                   prefilter=False)


def make_subject(template: dict, rng, voxel_size=2.0, orientation="RAS") -> dict:
    """One synthetic subject: arrays on its native grid plus the parameters used.

    ``template``: arrays ``t1w`` ([0, 1]), ``mask``, ``gm``, ``wm`` and image ``img`` (template
    affine). Returns dict(affine, t1w int16, brain uint8, dseg uint8, truth=dict).
    """
    tpl_from_subject = random_affine(rng)
    affine, shape = _native_grid(template["mask"], template["img"].affine, tpl_from_subject,
                                 voxel_size, orientation)
    ijk = np.indices(shape, dtype=np.float32).reshape(3, -1)
    world = affine[:3, :3] @ ijk + affine[:3, 3:4]
    displacement = smooth_displacement(rng, world)
    world += displacement
    tpl_vox = np.linalg.inv(template["img"].affine) @ tpl_from_subject
    coords = (tpl_vox[:3, :3] @ world + tpl_vox[:3, 3:4]).reshape((3,) + tuple(shape))
    del world, ijk
    t1w, gm, wm, mask = (_sample(template[k], coords) for k in ("t1w", "gm", "wm", "mask"))
    brain = mask > 0.5
    rest = np.clip(1.0 - gm - wm, 0.0, 1.0)
    dseg = (np.argmax(np.stack([rest, gm, wm]), axis=0) * brain).astype(np.uint8)
    scale = float(rng.uniform(300.0, 1200.0))
    noise = float(rng.uniform(0.01, 0.03))
    clean = t1w * bias_field(rng, shape) * scale
    sigma = noise * scale
    noisy = np.hypot(clean + rng.normal(0, sigma, shape), rng.normal(0, sigma, shape))
    truth = {"orientation": orientation, "voxel_size_mm": float(voxel_size),
             "shape": [int(n) for n in shape],
             "template_from_subject_world": tpl_from_subject.round(8).tolist(),
             "max_displacement_mm": float(np.sqrt((displacement ** 2).sum(0)).max()),
             "intensity_scale": scale, "noise_sigma": sigma}
    return {"affine": affine, "t1w": np.clip(np.round(noisy), 0, 32767).astype(np.int16),
            "brain": brain.astype(np.uint8), "dseg": dseg, "truth": truth}


def _save_nifti(data, affine, path: Path, code=1):
    img = nb.Nifti1Image(data, affine)
    img.set_sform(affine, code=code)
    img.set_qform(affine, code=code)
    img.header.set_xyzt_units("mm")
    write_atomic(path, lambda tmp: nb.save(img, tmp))


def _save_text(text: str, path: Path):
    write_atomic(path, lambda tmp: Path(tmp).write_text(text))


def _save_json(data, path: Path):
    _save_text(json.dumps(data, indent=2) + "\n", path)


def load_template_arrays(templateflow_home) -> dict:
    """The demo template's T1w (scaled to [0, 1]), mask, GM and WM as float32 arrays."""
    folder = Path(templateflow_home) / f"tpl-{DEMO_TEMPLATE}"
    prefix = f"tpl-{DEMO_TEMPLATE}_res-1"
    img = nb.load(str(folder / f"{prefix}_T1w.nii.gz"))
    t1w = np.asanyarray(img.dataobj, dtype=np.float32)
    load = lambda name: np.asanyarray(nb.load(str(folder / f"{prefix}_{name}.nii.gz")).dataobj,
                                      dtype=np.float32)
    return {"img": nb.Nifti1Image(np.zeros(t1w.shape, np.uint8), img.affine),
            "t1w": t1w / t1w.max(), "mask": load("desc-brain_mask"),
            "gm": load("label-GM_probseg"), "wm": load("label-WM_probseg")}


def make_demo_dataset(out, subjects=4, seed=0, voxel_size=2.0, overwrite=False) -> Path:
    """Write the demo datasets under ``out`` (see the module docstring). Returns ``out``.

    ``voxel_size`` (mm) of the native grids: 2 mm gives about 100x120x105 voxels per subject.
    Existing ``out/bids`` or ``out/derivatives/labels`` folders are refused unless ``overwrite``
    (then they are deleted first).
    """
    out = Path(out).absolute()
    if subjects < 1 or seed < 0 or not 0.5 <= voxel_size <= 8:
        raise UsageError(f"need subjects >= 1, seed >= 0 and 0.5 <= voxel size <= 8 mm; got "
                         f"{subjects}, {seed}, {voxel_size}")
    bids, labels = out / "bids", out / "derivatives" / "labels"
    for folder in (bids, labels):
        if folder.exists() and any(folder.iterdir()):
            if not overwrite:
                raise OutputError(f"{folder} exists and is not empty; choose another output "
                                  "folder or pass --overwrite")
            shutil.rmtree(folder)
    home = fill_templateflow_home(out / "templateflow")
    template = load_template_arrays(home)
    _save_json({"Name": "Neuroverse3D synthetic demo", "BIDSVersion": "1.9.0",
                "DatasetType": "raw", "License": "CC0",
                "Authors": ["neuroverse3d-demo-data"],
                "GeneratedBy": [{"Name": "neuroverse3d-demo-data", "Version": __version__}]},
               bids / "dataset_description.json")
    _save_text("Synthetic T1w images made by `neuroverse3d-demo-data` from the MNI152 2009a "
               "symmetric template (random affine, smooth deformation, bias, noise).\n"
               "For software tests and demonstrations only; no real participant.\n",
               bids / "README")
    _save_json({"Name": "Neuroverse3D synthetic demo labels", "BIDSVersion": "1.9.0",
                "DatasetType": "derivative",
                "GeneratedBy": [{"Name": "neuroverse3d-demo-data", "Version": __version__,
                                 "Description": "template labels warped with each subject"}]},
               labels / "dataset_description.json")
    _save_text("Labels of the synthetic demo subjects: the template's brain mask and GM/WM "
               "probabilities warped with each subject (see dseg.tsv).\n", labels / "README")
    _save_text("index\tname\n" + "".join(f"{k}\t{v}\n" for k, v in DSEG_LABELS.items()),
               labels / "dseg.tsv")
    rows, truth = ["participant_id\tage\tsex"], {}
    for index in range(1, subjects + 1):
        sub = f"sub-{index:02d}"
        rng = np.random.default_rng([seed, index])
        subject = make_subject(template, rng, voxel_size,
                               ORIENTATIONS[(index - 1) % len(ORIENTATIONS)])
        _save_nifti(subject["t1w"], subject["affine"], bids / sub / "anat" / f"{sub}_T1w.nii.gz")
        _save_nifti(subject["brain"], subject["affine"],
                    labels / sub / "anat" / f"{sub}_desc-brain_mask.nii.gz")
        _save_nifti(subject["dseg"], subject["affine"],
                    labels / sub / "anat" / f"{sub}_dseg.nii.gz")
        rows.append(f"{sub}\t{int(rng.integers(20, 80))}\t{'MF'[int(rng.integers(0, 2))]}")
        truth[sub] = subject["truth"]
    _save_text("\n".join(rows) + "\n", bids / "participants.tsv")
    _save_json({"age": {"Description": "age (synthetic)", "Units": "year"},
                "sex": {"Description": "sex (synthetic)", "Levels": {"M": "male", "F": "female"}}},
               bids / "participants.json")
    _save_json({"template": DEMO_TEMPLATE, "seed": seed, "subjects": subjects,
                "generator": f"neuroverse3d-demo-data {__version__}",
                "note": "template_from_subject_world maps subject world (RAS mm) to template "
                        "world before the smooth displacement; labels files are the truth",
                "per_subject": truth}, out / "sourcedata" / "demo_truth.json")
    _save_json(CONTEXT_SPEC, out / "context-spec.json")
    return out
