"""``neuroverse3d-manifest``: build a training manifest from BIDS datasets and derivatives.

    neuroverse3d-manifest /data/ds001 /data/ds002 --derivatives /data/ds001/derivatives/fmriprep \\
        --space MNI152NLin2009cAsym --paired T2w --output manifest.json

One dataset entry per BIDS folder. For every subject (and session) it picks, by plain globbing
of BIDS names:

* image: ``*_space-<space>[_desc-preproc]_<suffix>.nii[.gz]`` in the derivatives, or the raw
  ``anat/*_<suffix>.nii[.gz]`` when ``--space`` is not given;
* label: ``*[_space-<space>]*_dseg.nii[.gz]`` (integer label map) in the derivatives;
* brain mask: ``*[_space-<space>]*_desc-brain_mask.nii[.gz]``;
* paired modalities (``--paired T2w``): the same rule as the image, with that suffix.

Subjects without an image are skipped; the tasks follow from what was found (see
``neuroverse_bids.model.training.manifest``). Paths are written absolute. The output file must
lie outside the input datasets. Exit codes: 0 ok, 18 nothing found, 64 usage, 66 missing input,
73 cannot write the output.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Dict, List, Optional

from .. import __version__
from ..errors import ExitCode, run_with_exit_codes
from ..model.training.manifest import DatasetEntry, Manifest, Subject, save_manifest
from .options import ExitCode64Parser
from ..workflows.errors import (MissingInputError, NothingSelectedError, OutputError,
                                UsageError)

ENTITY = re.compile(r"(?:^|_)([a-zA-Z]+)-([a-zA-Z0-9]+)")
NIFTI = ("*.nii.gz", "*.nii")


def entities(path: Path) -> Dict[str, str]:
    """BIDS key-value entities of a file name (``sub``, ``ses``, ``space``, ``desc``, ...)."""
    name = path.name.split(".")[0]
    return dict(ENTITY.findall(name))


def suffix(path: Path) -> str:
    return path.name.split(".")[0].rsplit("_", 1)[-1]


def _niftis(folder: Path) -> List[Path]:
    """``sub-*`` NIfTI files under ``folder``, outside its derivatives/ and sourcedata/."""
    found = []
    for pattern in NIFTI:
        found += folder.rglob(pattern)
    skip = {"derivatives", "sourcedata", ".git"}
    return sorted(p for p in found if p.name.startswith("sub-")
                  and not skip.intersection(p.relative_to(folder).parts[:-1]))


class FileIndex:
    """All NIfTI files of the given folders, grouped by (subject, session)."""

    def __init__(self, folders: List[Path]):
        self.files: Dict[tuple, List[Path]] = {}
        for folder in folders:
            for path in _niftis(folder):
                ents = entities(path)
                self.files.setdefault((ents.get("sub"), ents.get("ses")), []).append(path)

    def pick(self, key: tuple, suffix_: str, space: Optional[str], desc: Optional[str] = None,
             prefer_desc: Optional[str] = None) -> Optional[Path]:
        """First file of ``key`` with this suffix and space (``None``: no space entity)."""
        matches = []
        for path in self.files.get(key, []):
            ents = entities(path)
            if suffix(path) != suffix_ or ents.get("space") != space:
                continue
            if desc is not None and ents.get("desc") != desc:
                continue
            matches.append(path)
        if prefer_desc:
            preferred = [p for p in matches if entities(p).get("desc") == prefer_desc]
            matches = preferred or matches
        return matches[0] if matches else None


def dataset_name(root: Path) -> str:
    description = root / "dataset_description.json"
    try:
        name = json.loads(description.read_text()).get("Name")
    except (OSError, ValueError):
        name = None
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") if name else root.name


def build_dataset(root: Path, derivatives: List[Path], args) -> DatasetEntry:
    raw = FileIndex([root]) if args.space is None else None
    derived = FileIndex(derivatives)
    keys = sorted(set(derived.files) | set(raw.files if raw else ()), key=lambda k: (k[0] or "", k[1] or ""))
    subjects = []
    for key in keys:
        if raw is not None:
            image = raw.pick(key, args.suffix, None)
            paired = {m: raw.pick(key, m, None) for m in args.paired}
        else:
            image = derived.pick(key, args.suffix, args.space, prefer_desc="preproc")
            paired = {m: derived.pick(key, m, args.space, prefer_desc="preproc") for m in args.paired}
        if image is None:
            continue
        label = derived.pick(key, args.label_suffix, args.space)
        mask = derived.pick(key, "mask", args.space, desc=args.mask_desc)
        sid = f"sub-{key[0]}" + (f"_ses-{key[1]}" if key[1] else "")
        subjects.append(Subject(sid, str(image.resolve()), str(label.resolve()) if label else None,
                                str(mask.resolve()) if mask else None,
                                {m: str(p.resolve()) for m, p in paired.items() if p}))
    return DatasetEntry(dataset_name(root), subjects, args.space, args.tasks)


def build_parser() -> argparse.ArgumentParser:
    parser = ExitCode64Parser(prog="neuroverse3d-manifest",
                              description="Build a Neuroverse3D training manifest from BIDS data.")
    parser.add_argument("--version", action="version", version=f"neuroverse3d {__version__}")
    parser.add_argument("bids_dirs", nargs="+", type=Path, help="BIDS dataset folders")
    parser.add_argument("--derivatives", nargs="*", type=Path, default=None,
                        help="derivative folders (default: <bids_dir>/derivatives)")
    parser.add_argument("--output", "-o", required=True, type=Path, help="manifest (.json or .tsv)")
    parser.add_argument("--suffix", default="T1w", help="image suffix (default T1w)")
    parser.add_argument("--space", default=None, help="template space of the derivatives, e.g. "
                        "MNI152NLin2009cAsym (default: raw images, no space)")
    parser.add_argument("--label-suffix", default="dseg", help="label-map suffix (default dseg)")
    parser.add_argument("--mask-desc", default="brain", help="desc of the brain mask (default brain)")
    parser.add_argument("--paired", nargs="*", default=[], metavar="SUFFIX",
                        help="registered second modalities for modality transform, e.g. T2w")
    parser.add_argument("--tasks", nargs="*", default=None, help="restrict the datasets' tasks")
    return parser


def run(args) -> int:
    roots = [p.resolve() for p in args.bids_dirs]
    for root in roots:
        if not root.is_dir():
            raise MissingInputError(f"{root}: BIDS folder not found")
    output = args.output.resolve()
    if any(root == output.parent or root in output.parents for root in roots):
        raise UsageError(f"{output}: the manifest must be written outside the input datasets")
    datasets = []
    for root in roots:
        derivatives = [d.resolve() for d in args.derivatives] if args.derivatives else [root / "derivatives"]
        missing = [d for d in derivatives if not d.is_dir()]
        if args.derivatives and missing:
            raise MissingInputError(f"{missing[0]}: derivatives folder not found")
        entry = build_dataset(root, [d for d in derivatives if d.is_dir()], args)
        if entry.subjects:
            datasets.append(entry)
        print(f"{entry.name}: {len(entry.subjects)} subjects; tasks: "
              f"{', '.join(entry.supported_tasks()) or 'none'}", file=sys.stderr)
    if not datasets:
        raise NothingSelectedError(f"no '{args.suffix}' images found "
                                   f"{'in space ' + args.space if args.space else 'in the raw data'}; "
                                   "check --suffix, --space and --derivatives")
    try:
        save_manifest(Manifest(datasets, output.parent), output)
    except OSError as error:
        raise OutputError(f"{output}: cannot write the manifest ({error})") from None
    print(f"wrote {output}")
    return ExitCode.OK


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_with_exit_codes("neuroverse3d-manifest", run, args)


if __name__ == "__main__":
    sys.exit(main())
