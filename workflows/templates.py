"""Templates, served offline through TemplateFlow.

``get_template`` looks a template up in ``$TEMPLATEFLOW_HOME`` (read at call time) and never
downloads: a missing template is a :class:`MissingInputError` saying how to prefetch it. The
shared TemplateFlow home (which fMRIPrep and others read too) is never written:
``resolve_template_files`` serves ``MNI152NLin2009aSym``, when that home lacks it, from a
private home of the app (in its work folder) that ``fill_templateflow_home`` fills from the
MNI152 2009a files in nilearn's wheel. The client is templateflow's ``TemplateFlowClient``
(templateflow >= 25.1), one per home.

nilearn ships a skull-stripped T1w and GM/WM probability maps (uint8, 197x233x189, 1 mm, RAS,
origin -98,-134,-72 mm, world coordinates in MNI space). The brain mask is the support of the
skull-stripped T1w (holes filled), as nilearn does. There is no CSF map in the wheel, so none is
written.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nb
import numpy as np

from ..model.spaces import OFFLINE_TEMPLATE
from .errors import MissingInputError, OutputError
from .niftiio import write_atomic

_NILEARN_FILES = {"T1w": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
                  "GM": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
                  "WM": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"}
_DESCRIPTION = {
    "Name": "ICBM 152 Nonlinear Symmetrical template version 2009a",
    "Identifier": OFFLINE_TEMPLATE,
    "Authors": ["Fonov V", "Evans AC", "Botteron K", "Almli CR", "McKinstry RC", "Collins DL"],
    "ReferencesAndLinks": ["https://doi.org/10.1016/j.neuroimage.2010.07.033",
                           "https://doi.org/10.1016/S1053-8119(09)70884-5",
                           "http://nist.mni.mcgill.ca/?p=904"],
    "License": "See LICENSE file",
    "Species": "Homo sapiens",
    "BIDSVersion": "1.1.0",
    "TemplateFlowVersion": "1.0.0",
    "GeneratedBy": [{"Name": "neuroverse_bids.workflows.templates",
                     "Description": "copied offline from the MNI152 2009a files in nilearn's "
                                    "wheel (skull-stripped T1w; brain mask = T1w support)"}],
}
_LICENSE = """Copyright (C) 1993-2004 Louis Collins, McConnell Brain Imaging Centre, Montreal
Neurological Institute, McGill University. Permission to use, copy, modify, and distribute this
software and its documentation for any purpose and without fee is hereby granted, provided that
the above copyright notice appear in all copies. The authors and McGill University make no
representations about the suitability of this software for any purpose. It is provided "as is"
without express or implied warranty.
"""


def nilearn_data_dir() -> Path:
    """The folder of nilearn's packaged datasets (holds the MNI152 2009a files)."""
    from importlib.util import find_spec

    spec = find_spec("nilearn")  # locate without importing (nilearn.datasets takes seconds)
    if spec is None or not spec.origin:
        raise MissingInputError("nilearn is not installed; install it (pip install nilearn)")
    return Path(spec.origin).parent / "datasets" / "data"


def _save(img, path: Path):
    write_atomic(path, lambda tmp: nb.save(img, tmp))


def fill_templateflow_home(dest) -> Path:
    """Write ``tpl-MNI152NLin2009aSym`` (res-1) in TemplateFlow's layout under ``dest``.

    Files: ``_res-1_T1w`` (uint8, as shipped), ``_res-1_desc-brain_mask`` (uint8 0/1),
    ``_res-1_label-{GM,WM}_probseg`` (float32 in [0, 1]) and ``template_description.json``.
    Existing complete files are kept (TemplateFlow's empty placeholders are overwritten).
    Returns ``dest``.
    """
    from scipy import ndimage

    dest = Path(dest).absolute()
    folder = dest / f"tpl-{OFFLINE_TEMPLATE}"
    source = nilearn_data_dir()
    missing = [name for name in _NILEARN_FILES.values() if not (source / name).is_file()]
    if missing:
        raise MissingInputError(f"{source}: nilearn's packaged MNI152 files are missing "
                                f"({', '.join(missing)}); reinstall nilearn (>=0.10)")
    prefix = folder / f"tpl-{OFFLINE_TEMPLATE}_res-1"
    targets = {"T1w": Path(f"{prefix}_T1w.nii.gz"),
               "mask": Path(f"{prefix}_desc-brain_mask.nii.gz"),
               "GM": Path(f"{prefix}_label-GM_probseg.nii.gz"),
               "WM": Path(f"{prefix}_label-WM_probseg.nii.gz")}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if any(not p.is_file() or p.stat().st_size == 0 for p in targets.values()):
            t1w = nb.load(str(source / _NILEARN_FILES["T1w"]))
            data = np.asanyarray(t1w.dataobj)
            mask = ndimage.binary_fill_holes(data > 0).astype(np.uint8)
            _save(_like(t1w, data.astype(np.uint8)), targets["T1w"])
            _save(_like(t1w, mask), targets["mask"])
            for label in ("GM", "WM"):
                prob = nb.load(str(source / _NILEARN_FILES[label]))
                values = np.asanyarray(prob.dataobj).astype(np.float32) / 255.0
                _save(_like(prob, values), targets[label])
        shape = [int(n) for n in nb.load(str(targets["T1w"])).shape]
        affine = nb.load(str(targets["T1w"])).affine
        description = dict(_DESCRIPTION, res={"1": {"origin": [float(v) for v in affine[:3, 3]],
                                                    "shape": shape, "zooms": [1.0, 1.0, 1.0]}})
        write_atomic(folder / "template_description.json",
                      lambda tmp: Path(tmp).write_text(json.dumps(description, indent=2) + "\n"))
        if not (folder / "LICENSE").is_file() or (folder / "LICENSE").stat().st_size == 0:
            write_atomic(folder / "LICENSE", lambda tmp: Path(tmp).write_text(_LICENSE))
    except OSError as error:
        raise OutputError(f"{dest}: cannot write the TemplateFlow home here ({error}); choose a "
                          "writable folder") from None
    return dest


def _like(reference, data):
    """A NIfTI with ``reference``'s affine (sform and qform code 4, MNI) holding ``data``."""
    img = nb.Nifti1Image(data, reference.affine)
    img.set_sform(reference.affine, code=4)
    img.set_qform(reference.affine, code=4)
    img.header.set_xyzt_units("mm")
    return img


def templateflow_home() -> Path:
    """``$TEMPLATEFLOW_HOME`` (read now), or TemplateFlow's default cache folder."""
    home = os.environ.get("TEMPLATEFLOW_HOME")
    if home:
        return Path(home).absolute()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("templateflow")).absolute()


def _client(home: Path):
    """A TemplateFlow client on ``home`` that never updates or downloads by itself."""
    # templateflow.api reads TEMPLATEFLOW_HOME once, at import, and may refresh its skeleton
    # from GitHub when TEMPLATEFLOW_AUTOUPDATE is on: keep it local.
    os.environ.setdefault("TEMPLATEFLOW_AUTOUPDATE", "0")
    # its first import also writes a skeleton into an empty home: make that home ours
    unset = "TEMPLATEFLOW_HOME" not in os.environ
    if unset:
        os.environ["TEMPLATEFLOW_HOME"] = str(home)
    try:
        from templateflow.client import TemplateFlowClient
    finally:
        if unset:
            del os.environ["TEMPLATEFLOW_HOME"]
    return TemplateFlowClient(root=home, autoupdate=False, use_datalad=False)


def get_template(template_id: str, resolution: int = 1, home=None) -> dict:
    """Paths of a template's T1w and brain mask -> ``dict(t1w=Path, brain_mask=Path)``.

    Looks in ``home`` (default ``$TEMPLATEFLOW_HOME`` read at call time) and never downloads.
    """
    home = Path(home).absolute() if home is not None else templateflow_home()
    fix = (f"prefetch it with `TEMPLATEFLOW_HOME={home} python -c \"from templateflow.api import "
           f"get; get('{template_id}', resolution={resolution})\"` on a machine with internet, "
           "or point TEMPLATEFLOW_HOME at a folder that holds it")
    if not home.is_dir():
        raise MissingInputError(f"TemplateFlow home {home} does not exist; {fix}")
    if not (home / f"tpl-{template_id}").is_dir():  # before the client writes its skeleton there
        raise MissingInputError(f"template {template_id} is not in TemplateFlow home {home}; {fix}")
    client = _client(home)
    queries = {"t1w": dict(suffix="T1w", desc=None),
               "brain_mask": dict(suffix="mask", desc="brain", label=None)}
    found = {}
    for key, query in queries.items():
        paths = client.ls(template_id, resolution=resolution, extension=".nii.gz", **query)
        paths = [p for p in paths if p.is_file() and p.stat().st_size > 0]
        if len(paths) != 1:
            what = "not available offline" if not paths else f"ambiguous ({len(paths)} files)"
            label = key.replace("_", " ")
            raise MissingInputError(f"template {template_id} res-{resolution} {label} in {home}: "
                                    f"{what}; {fix}")
        found[key] = paths[0]
    return found


def resolve_template_files(template_id: str, private_home) -> dict:
    """:func:`get_template` in ``$TEMPLATEFLOW_HOME``; for :data:`OFFLINE_TEMPLATE`, when that home
    lacks it, the copy made from nilearn's wheel in ``private_home`` (an app folder, never the
    shared TemplateFlow home). Other templates must be prefetched."""
    try:
        return get_template(template_id)
    except MissingInputError:
        if template_id != OFFLINE_TEMPLATE:
            raise
    private_home = Path(private_home).absolute()
    if private_home == templateflow_home():
        raise MissingInputError(f"{private_home}: the app's private TemplateFlow home must not be "
                                "the shared TEMPLATEFLOW_HOME; choose another work folder")
    return get_template(template_id, home=fill_templateflow_home(private_home))
