"""Write synthetic subjects as NIfTI files plus a ``neuroverse3d-train`` manifest.

Layout under ``out``::

    manifest.json            datasets <source>-<kind> (e.g. colin27-synth), space MNI152NLin2009aSym
    structures.json          {dataset: {structure: [label values]}} for neuroverse3d-eval
    dseg.tsv                 index / name of every label value
    generation.json          seed, grid, subject parameters, sources (sha256), exclusions, seeds
    atlas/                   every source on the model grid (T1w, dseg)
    <dataset>/sub-NNN/anat/sub-NNN_{T1w,dseg,desc-brain_mask}.nii.gz
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np
import torch

from .. import __version__
from ..model.hashing import file_sha256
from ..model.training.manifest import STRUCTURES_FILE, DatasetEntry, Manifest, Subject, save_manifest
from ..workflows.errors import UsageError
from ..workflows.niftiio import write_nifti_atomic, write_text_atomic
from ..workflows.templates import OFFLINE_TEMPLATE
from .sources import (LABEL_NAMES, Atlas, atlas_on_grid, grid_reference, load_colin27,
                      load_mni152, resolve_structure, structure_groups)
from .synth import KINDS, SubjectConfig, make_subject, subject_seed

SOURCES = {"mni152": load_mni152, "colin27": load_colin27}


def load_atlases(reference, work_dir, sources: Iterable[str] = tuple(SOURCES)) -> Dict[str, Atlas]:
    """The requested sources (``mni152``, ``colin27``) on the grid of ``reference``."""
    atlases = {}
    for key in sources:
        if key not in SOURCES:
            raise UsageError(f"unknown source {key!r}; choose from {', '.join(SOURCES)}")
        source = SOURCES[key](work_dir) if key == "mni152" else SOURCES[key]()
        atlases[key] = atlas_on_grid(source, reference)
    return atlases


def write_dataset(out, atlases: Dict[str, Atlas], subjects: int, seed: int,
                  kinds: Sequence[str] = KINDS, exclude: Sequence[str] = (),
                  config: Optional[SubjectConfig] = None) -> Path:
    """Write ``subjects`` subjects per (atlas, kind) dataset under ``out``; returns the manifest.

    ``exclude``: structure names (e.g. ``Putamen``) left out entirely (see :func:`make_subject`).
    """
    out = Path(out)
    if subjects < 1:
        raise UsageError(f"--subjects must be >= 1, got {subjects}")
    config = config or SubjectConfig()
    try:
        hidden = sorted({v for name in exclude for v in resolve_structure(name)})
    except ValueError as error:
        raise UsageError(str(error)) from None
    entries, structures, seeds = [], {}, {}
    for key, atlas in atlases.items():
        reference = atlas.reference
        write_nifti_atomic(atlas.image.numpy(), reference,
                           out / "atlas" / f"atlas-{atlas.name}_T1w.nii.gz", np.float32)
        write_nifti_atomic(atlas.dseg.numpy(), reference,
                           out / "atlas" / f"atlas-{atlas.name}_dseg.nii.gz", np.int16)
        kept = [v for v in atlas.labels if v not in hidden]
        for kind in kinds:
            name = f"{key}-{kind}"
            structures[name] = structure_groups(kept)
            rows: List[Subject] = []
            for index in range(subjects):
                sid = f"sub-{index + 1:03d}"
                seeds[f"{name}/{sid}"] = subject_seed(seed, name, index)
                generator = torch.Generator().manual_seed(seeds[f"{name}/{sid}"])
                volumes = make_subject(atlas, kind, generator, config, hidden)
                rel = f"{name}/{sid}/anat/{sid}"
                for suffix, dtype in (("T1w", np.float32), ("dseg", np.int16),
                                      ("desc-brain_mask", np.uint8)):
                    volume = volumes[{"T1w": "image", "dseg": "dseg"}.get(suffix, "brain_mask")]
                    write_nifti_atomic(volume.numpy(), reference, out / f"{rel}_{suffix}.nii.gz", dtype)
                rows.append(Subject(sid, f"{rel}_T1w.nii.gz", f"{rel}_dseg.nii.gz",
                                    f"{rel}_desc-brain_mask.nii.gz"))
            entries.append(DatasetEntry(name, rows, OFFLINE_TEMPLATE))
    reference = next(iter(atlases.values())).reference
    generation = {
        "generated_by": f"neuroverse3d-make-training-data {__version__}", "seed": seed,
        "subjects_per_dataset": subjects, "kinds": list(kinds),
        "grid": {"shape": [int(s) for s in reference.shape],
                 "voxel_size_mm": float(reference.header.get_zooms()[0]),
                 "template": OFFLINE_TEMPLATE, "affine": reference.affine.tolist()},
        "excluded_structures": list(exclude), "excluded_labels": hidden,
        "subject_config": config.to_dict(),
        "sources": {a.name: {Path(f).name: file_sha256(f) for f in a.files}
                    for a in atlases.values()},
        "subject_seeds": seeds}
    write_text_atomic(out / "generation.json", json.dumps(generation, indent=1) + "\n")
    write_text_atomic(out / STRUCTURES_FILE, json.dumps(structures, indent=1) + "\n")
    write_text_atomic(out / "dseg.tsv", "index\tname\n" + "".join(
        f"{v}\t{n}\n" for v, n in sorted(LABEL_NAMES.items())))
    return save_manifest(Manifest(entries, out), out / "manifest.json")


def make_training_data(out, subjects: int, seed: int = 0, grid=64, voxel_size: float = 3.0,
                       sources: Sequence[str] = tuple(SOURCES), kinds: Sequence[str] = KINDS,
                       exclude: Sequence[str] = ()) -> Path:
    """Locate the sources, put them on a ``grid`` (side or D, H, W) grid of ``voxel_size`` mm,
    write the set."""
    out = Path(out)
    reference = grid_reference(grid, voxel_size, out / "sourcedata")
    atlases = load_atlases(reference, out / "sourcedata", sources)
    return write_dataset(out, atlases, subjects, seed, kinds, exclude)
