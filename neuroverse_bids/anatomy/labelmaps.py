"""``neuroverse3d-make-labelmap-data DIR OUT``: real people's label maps on the model grid.

    neuroverse3d-make-labelmap-data SynthSeg/data/training_label_maps data/labelmaps-3mm
    neuroverse3d-make-labelmap-data SynthSeg/data/training_label_maps data/labelmaps-2mm \\
        --grid 72 88 72 --voxel-size 2 --transforms data/labelmaps-3mm/transforms

Every label map of DIR (``*.nii[.gz]``, FreeSurfer codes, e.g. SynthSeg's twenty
``training_seg_NN``) is registered once to MNI152NLin2009aSym (the project's rigid + affine
ANTs registration of a brain-only T1-like image drawn from the map to the template T1w; the
transforms are kept, and reused by later builds for other grids), then resampled onto the model
grid: nearest neighbour onto a grid k times finer, then the majority label of each k^3 block,
so thin structures keep their area share. Writes under OUT::

    manifest.json             training maps (dataset kind "labelmap": images are synthesised
                              per episode by neuroverse3d-train)
    manifest-validation.json  validation maps (--validation; never in training)
    manifest-heldout.json     held-out maps (--held-out; never in training or validation)
    structures.json, dseg.tsv named structures and label names
    generation.json           sources (sha256), grid, splits, transforms, timings
    maps/<id>_dseg.nii.gz     each map on the grid (int16), <id>_desc-synth_T1w.nii.gz (QC)
    transforms/<id>/          from-labelmap_to-<template> ITK .mat and its inverse

Exit codes: 0 success, 64 usage error, 66 a source is missing, 73 cannot write the output.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, Sequence

import nibabel as nb
import numpy as np
from scipy import ndimage

from .. import __version__
from ..cli.options import add_grid_option, grid_size
from ..errors import ExitCode, run_with_exit_codes
from ..model.hashing import file_sha256
from ..model.training.labelmap_synthesis import (EXTRACEREBRAL_MIN, LABEL_NAMES, PRIORS,
                                                 generation_class, named_structures)
from ..model.training.manifest import (LABELMAP, STRUCTURES_FILE, DatasetEntry, Manifest,
                                       Subject, save_manifest)
from ..workflows.errors import MissingInputError, UsageError
from ..workflows.niftiio import write_atomic, write_nifti_atomic, write_text_atomic
from ..workflows.templates import OFFLINE_TEMPLATE, fill_templateflow_home
from .sources import grid_reference

REGISTRATIONS = ("affine", "sloppy", "none")  # none: the maps are already in template space
SOURCE_NOTE = ("SynthSeg training label maps (Billot et al., Medical Image Analysis 2023; "
               "github.com/BBillot/SynthSeg, Apache-2.0)")


def find_label_maps(folder) -> Dict[str, Path]:
    """``{"map-NN": path}`` for every NIfTI in ``folder``; NN is the last number in the name
    (SynthSeg's ``training_seg_07`` -> ``map-07``), else the position in sorted order."""
    folder = Path(folder)
    files = sorted(p for p in folder.glob("*.nii*") if p.name.endswith((".nii", ".nii.gz")))
    if not files:
        raise MissingInputError(f"{folder}: no label maps (*.nii, *.nii.gz) found")
    maps = {}
    for index, path in enumerate(files, 1):
        numbers = re.findall(r"\d+", path.name.split(".nii")[0])
        key = f"map-{numbers[-1] if numbers else f'{index:02d}'}"
        if key in maps:
            raise UsageError(f"{folder}: {maps[key].name} and {path.name} both give {key}")
        maps[key] = path
    return maps


def map_number(key: str) -> int:
    return int(key.split("-", 1)[1])


def synthetic_t1(labels: np.ndarray, sigma_voxels: float = 1.0) -> np.ndarray:
    """A brain-only T1-like image of a label map (means of the ``t1`` prior, extra-cerebral
    tissue and background 0, slight blur), to register a label map like a T1w scan."""
    table = PRIORS["t1"]
    image = np.zeros(labels.shape, np.float32)
    for code in np.unique(labels):
        if 0 < code < EXTRACEREBRAL_MIN:
            image[labels == code] = table.get(generation_class(int(code)), 0.5)
    return ndimage.gaussian_filter(image, sigma_voxels) if sigma_voxels > 0 else image


def read_label_map(path) -> nb.Nifti1Image:
    """A label map as an int16 image (codes rounded; a 4D single volume is squeezed)."""
    img = nb.load(str(path))
    data = np.rint(np.asanyarray(img.dataobj, dtype=np.float32)).astype(np.int16)
    return nb.Nifti1Image(data.reshape(data.shape[:3]), img.affine)


def register_label_map(img: nb.Nifti1Image, template_t1, out_dir, sha256: str, mode: str,
                       seed: int = 0) -> Dict[str, object]:
    """Register ``img`` (int16 label map) to ``template_t1`` through its synthetic T1; the
    transforms go to ``out_dir`` with ``source.json`` (the map's sha256), and a previous
    result for the same map there is reused. Returns {forward, inverse, seconds, reused}."""
    from ..workflows.geometry import register_affine

    out_dir = Path(out_dir)
    forward = out_dir / f"from-labelmap_to-{OFFLINE_TEMPLATE}_mode-image_xfm.mat"
    inverse = out_dir / f"from-{OFFLINE_TEMPLATE}_to-labelmap_mode-image_xfm.mat"
    record = out_dir / "source.json"
    if forward.is_file() and inverse.is_file() and record.is_file() and \
            json.loads(record.read_text()).get("sha256") == sha256:
        return {"forward": forward, "inverse": inverse, "seconds": 0.0, "reused": True}
    start = time.perf_counter()
    moving = nb.Nifti1Image(synthetic_t1(np.asanyarray(img.dataobj)), img.affine)
    files = register_affine(moving, template_t1, out_dir, sloppy=mode == "sloppy", seed=seed,
                            moving_space="labelmap", fixed_space=OFFLINE_TEMPLATE)
    write_text_atomic(record, json.dumps({"sha256": sha256, "registration": mode,
                                          "seed": seed}, indent=1) + "\n")
    return {"forward": files["forward"], "inverse": files["inverse"],
            "seconds": round(time.perf_counter() - start, 1), "reused": False}


def block_majority(labels: np.ndarray, k: int) -> np.ndarray:
    """The most frequent label of every ``k^3`` block of ``labels`` (shape divisible by k);
    ties go to the lower code."""
    if k == 1:
        return labels.astype(np.int16)
    shape = [n // k for n in labels.shape]
    codes = np.unique(labels)
    best = np.zeros(shape, np.int16)
    best_count = np.full(shape, -1, np.int16)
    for code in codes:
        count = (labels == code).reshape(shape[0], k, shape[1], k, shape[2], k).sum(
            (1, 3, 5), dtype=np.int16)
        wins = count > best_count
        best[wins], best_count[wins] = code, count[wins]
    return best


def to_grid(img: nb.Nifti1Image, transform, reference, factor: int, work) -> Dict[str, np.ndarray]:
    """``img`` (label map) on the grid of ``reference``: {"dseg": int16 (block majority of a
    nearest resampling ``factor`` times finer), "t1": float32 synthetic T1w (QC)}."""
    from ..workflows.geometry import resample

    shape = np.asarray(reference.shape[:3])
    affine = reference.affine.copy()
    affine[:3, :3] = affine[:3, :3] / factor
    # fine voxel centres sit symmetrically inside each grid voxel
    affine[:3, 3] = reference.affine[:3, 3] - affine[:3, :3] @ np.full(3, (factor - 1) / 2)
    fine = nb.Nifti1Image(np.zeros(tuple(shape * factor), np.uint8), affine)
    work = Path(work)
    out = resample(img, fine, transform, work / "fine.nii.gz", "nearest")
    dseg = block_majority(np.rint(np.asanyarray(nb.load(str(out)).dataobj)).astype(np.int16), factor)
    t1 = nb.Nifti1Image(synthetic_t1(np.asanyarray(img.dataobj)), img.affine)
    out = resample(t1, reference, transform, work / "t1.nii.gz", "linear")
    return {"dseg": dseg, "t1": np.asanyarray(nb.load(str(out)).dataobj, dtype=np.float32)}


def _split(keys: Sequence[str], held_out: Sequence[int], validation: Sequence[int]):
    held = [k for k in keys if map_number(k) in set(held_out)]
    val = [k for k in keys if map_number(k) in set(validation) and k not in held]
    train = [k for k in keys if k not in held and k not in val]
    if set(held_out) & set(validation):
        raise UsageError(f"maps {sorted(set(held_out) & set(validation))} are both held out "
                         "and validation maps; held-out maps are never used for validation")
    if len(train) < 2:
        raise UsageError(f"only {len(train)} training map(s) left after the held-out and "
                         "validation maps; an episode needs at least 2")
    return train, val, held


def build_labelmap_data(folder, out, grid: Sequence[int] = (64, 64, 64), voxel_size: float = 3.0,
                        held_out: Sequence[int] = (17, 18, 19, 20),
                        validation: Sequence[int] = (13, 14, 15, 16),
                        registration: str = "affine", transforms=None, seed: int = 0,
                        log=print) -> Dict[str, Path]:
    """Register and resample every label map of ``folder``; write the set under ``out``.

    ``grid``: voxels per axis (1 or 3 ints); ``voxel_size``: mm; ``held_out`` / ``validation``:
    map numbers of those splits; ``transforms``: folder of an earlier build's transforms to
    reuse. Returns {"train", "validation", "heldout"} manifest paths (validation and heldout
    only when not empty).
    """
    if registration not in REGISTRATIONS:
        raise UsageError(f"registration must be one of {', '.join(REGISTRATIONS)}")
    out = Path(out)
    start = time.perf_counter()
    maps = find_label_maps(folder)
    train, val, held = _split(list(maps), held_out, validation)
    shape = [int(g) for g in np.broadcast_to(np.asarray(grid, int), (3,))]
    reference = grid_reference(shape, voxel_size, out / "sourcedata")
    template_t1 = (fill_templateflow_home(out / "sourcedata" / "templateflow")
                   / f"tpl-{OFFLINE_TEMPLATE}" / f"tpl-{OFFLINE_TEMPLATE}_res-1_T1w.nii.gz")
    records = {}
    for key, path in maps.items():
        tick = time.perf_counter()
        sha = file_sha256(path)
        img = read_label_map(path)
        source_mm = float(np.abs(np.linalg.det(img.affine[:3, :3])) ** (1 / 3))
        factor = int(min(4, max(1, round(voxel_size / source_mm))))
        record = {"file": path.name, "sha256": sha, "shape": list(img.shape),
                  "split": "train" if key in train else "validation" if key in val else "heldout"}
        transform = None
        if registration != "none":
            xfm_dir = out / "transforms" / key
            earlier = Path(transforms) / key if transforms is not None else None
            if earlier is not None and earlier.is_dir() and earlier.resolve() != xfm_dir.resolve():
                for f in earlier.iterdir():  # reused below when made from the same file
                    write_atomic(xfm_dir / f.name, lambda tmp, f=f: shutil.copyfile(f, tmp))
            result = register_label_map(img, template_t1, xfm_dir, sha, registration, seed)
            transform = result["forward"]
            record.update(transform=str(Path(result["forward"]).relative_to(out)),
                          inverse=str(Path(result["inverse"]).relative_to(out)),
                          registration_seconds=result["seconds"], reused=result["reused"])
        with tempfile.TemporaryDirectory(dir=out) as work:
            volumes = to_grid(img, transform, reference, factor, work)
        write_nifti_atomic(volumes["dseg"], reference, out / "maps" / f"{key}_dseg.nii.gz", np.int16)
        write_nifti_atomic(volumes["t1"], reference, out / "maps" / f"{key}_desc-synth_T1w.nii.gz",
                           np.float32)
        record.update(supersampling=factor, labels=sorted(int(v) for v in np.unique(volumes["dseg"])),
                      seconds=round(time.perf_counter() - tick, 1))
        records[key] = record
        log(f"neuroverse3d-make-labelmap-data: {key} ({record['split']}) in {record['seconds']} s"
            f" (registration {record.get('registration_seconds', 0)} s)")
    manifests = {}
    for split, keys, name in (("train", train, "manifest.json"),
                              ("validation", val, "manifest-validation.json"),
                              ("heldout", held, "manifest-heldout.json")):
        if not keys:
            continue
        rows = [Subject(k, f"maps/{k}_dseg.nii.gz", f"maps/{k}_dseg.nii.gz") for k in keys]
        entry = DatasetEntry(f"labelmaps-{split}", rows, OFFLINE_TEMPLATE, None, LABELMAP)
        manifests[split] = save_manifest(Manifest([entry], out), out / name)
    present = sorted({c for r in records.values() for c in r["labels"] if c})
    write_text_atomic(out / STRUCTURES_FILE, json.dumps({"*": named_structures()}, indent=1) + "\n")
    write_text_atomic(out / "dseg.tsv", "index\tname\n" + "".join(
        f"{c}\t{LABEL_NAMES.get(c, f'extracerebral-{c}' if c >= EXTRACEREBRAL_MIN else f'label-{c}')}\n"
        for c in present))
    generation = {
        "generated_by": f"neuroverse3d-make-labelmap-data {__version__}",
        "source": {"folder": str(Path(folder).resolve()), "note": SOURCE_NOTE,
                   "files": {r["file"]: r["sha256"] for r in records.values()}},
        "grid": {"shape": shape, "voxel_size_mm": float(voxel_size), "template": OFFLINE_TEMPLATE,
                 "affine": reference.affine.tolist()},
        "registration": {"mode": registration, "seed": seed, "moving": "brain-only synthetic "
                         "T1 of the label map (t1 prior means, sigma 1 voxel)",
                         "fixed": f"tpl-{OFFLINE_TEMPLATE}_res-1_T1w (nilearn)"},
        "splits": {"train": train, "validation": val, "heldout": held},
        "maps": records, "seconds": round(time.perf_counter() - start, 1)}
    write_text_atomic(out / "generation.json", json.dumps(generation, indent=1) + "\n")
    return manifests


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="neuroverse3d-make-labelmap-data",
                                     description=__doc__.split("\n")[0].split(": ", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.split("\n")[2:]))
    parser.add_argument("--version", action="version", version=f"neuroverse3d {__version__}")
    parser.add_argument("folder", type=Path, help="folder of label maps (NIfTI, FreeSurfer codes)")
    parser.add_argument("out", type=Path, help="output folder")
    add_grid_option(parser)
    parser.add_argument("--voxel-size", type=float, default=3.0, help="mm (default 3)")
    parser.add_argument("--held-out", type=int, nargs="*", default=[17, 18, 19, 20],
                        help="map numbers never used in training or validation (default 17-20)")
    parser.add_argument("--validation", type=int, nargs="*", default=[13, 14, 15, 16],
                        help="map numbers of the validation manifest, left out of training "
                             "(default 13-16)")
    parser.add_argument("--registration", choices=REGISTRATIONS, default="affine",
                        help="affine (default), sloppy (coarse, fast) or none (maps already "
                             "in template space)")
    parser.add_argument("--transforms", type=Path, default=None,
                        help="transforms folder of an earlier build to reuse")
    parser.add_argument("--seed", type=int, default=0, help="registration seed (default 0)")
    return parser


def run(args) -> int:
    start = time.perf_counter()
    manifests = build_labelmap_data(args.folder, args.out, grid_size(args.grid), args.voxel_size,
                                    args.held_out, args.validation, args.registration,
                                    args.transforms, args.seed)
    print(f"neuroverse3d-make-labelmap-data: done in {time.perf_counter() - start:.0f} s; "
          + ", ".join(f"{k} {v}" for k, v in manifests.items()))
    return ExitCode.OK


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_with_exit_codes("neuroverse3d-make-labelmap-data", run, args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
