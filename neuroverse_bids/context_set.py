"""Find the context pairs a spec asks for, and check them before any work starts."""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import nibabel as nb
import numpy as np

from .context_spec import ContextSpec
from .workflows.errors import BadInputError, MissingInputError
from .workflows.niftiio import load_volume


@dataclass
class ContextPair:
    """One context subject: its image and, per output, the file (and dseg index) to read."""

    subject: str
    image: Path
    outputs: List[Path] = field(default_factory=list)       # one per structure / generation output
    label_values: List[Optional[int]] = field(default_factory=list)  # dseg index, None: mask/image

    def to_dict(self) -> dict:
        return {"subject": self.subject, "image": str(self.image),
                "outputs": [str(p) for p in self.outputs], "label_values": self.label_values}


def _first(paths) -> Optional[Path]:
    paths = sorted(p for p in paths if p.name.endswith((".nii", ".nii.gz")))
    return paths[0] if paths else None


def _subject_files(root: Path, subject: str, pattern: str) -> Optional[Path]:
    return _first((root / f"sub-{subject}").rglob(f"sub-{subject}*{pattern}"))


def _dseg_table(dseg_file: Path, dataset: Path) -> Dict[str, int]:
    """``name -> index`` from the file's own ``_dseg.tsv`` or the dataset's ``dseg.tsv``."""
    stem = dseg_file.name.split(".nii")[0]
    for table in (dseg_file.with_name(stem + ".tsv"), dataset / "dseg.tsv"):
        if table.is_file():
            with open(table, newline="") as handle:
                rows = list(csv.DictReader(handle, delimiter="\t"))
            if not rows or not {"index", "name"} <= set(rows[0]):
                raise BadInputError(f"{table}: a dseg.tsv needs the columns 'index' and 'name'")
            return {row["name"]: int(row["index"]) for row in rows}
    raise MissingInputError(f"{dseg_file}: no {stem}.tsv beside it and no dseg.tsv in {dataset}; "
                            "add a table with columns index and name")


def _check_same_grid(image: Path, other: Path):
    a, b = nb.load(str(image)), nb.load(str(other))
    if a.shape[:3] != b.shape[:3] or not np.allclose(a.affine, b.affine, atol=1e-3):
        raise BadInputError(f"{other}: its grid (shape {b.shape[:3]}) differs from its image {image} "
                            f"(shape {a.shape[:3]}); resample the label onto the image grid")


def find_context_pairs(spec: ContextSpec, bids_dir: Path) -> Dict[str, ContextPair]:
    """Subjects with a complete pair for ``spec`` -> their files (checked: grids, empty masks)."""
    image_root = Path(spec.image_dataset or bids_dir)
    pairs: Dict[str, ContextPair] = {}
    found_any = {s.name: False for s in spec.structures}
    for subject_dir in sorted(image_root.glob("sub-*")):
        subject = subject_dir.name[4:]
        image = _subject_files(image_root, subject, f"_{spec.image_suffix}.nii*")
        if image is None:
            continue
        pair = ContextPair(subject, image)
        if spec.task == "segmentation":
            for structure in spec.structures:
                pattern = f"_desc-{structure.mask}_mask.nii*" if structure.mask else "_dseg.nii*"
                label = _subject_files(Path(spec.label_dataset), subject, pattern)
                if label is None:
                    break
                value = None
                if structure.dseg:
                    table = _dseg_table(label, Path(spec.label_dataset))
                    if structure.dseg not in table:
                        raise BadInputError(f"{spec.source}: label {structure.dseg!r} is not in the dseg "
                                            f"table of {label} (known: {sorted(table)})")
                    value = table[structure.dseg]
                found_any[structure.name] = True
                pair.outputs.append(label)
                pair.label_values.append(value)
            else:
                pairs[subject] = pair
        elif spec.output_suffix:
            output = _subject_files(Path(spec.output_dataset or bids_dir), subject,
                                    f"_{spec.output_suffix}.nii*")
            if output is not None:
                pair.outputs.append(output)
                pair.label_values.append(None)
                pairs[subject] = pair
        else:
            pairs[subject] = pair  # synthetic degradation: the image is enough
    missing = [name for name, seen in found_any.items() if not seen]
    if missing:
        raise MissingInputError(f"{spec.source}: no subject of {spec.label_dataset} has the label(s) "
                                f"{missing}; check the names against the files (desc-<name>_mask or dseg.tsv)")
    return pairs


def check_pair(pair: ContextPair):
    """Readable 3D volumes, grids agree, no context label is empty (reads the data)."""
    load_volume(pair.image)
    for output, value in zip(pair.outputs, pair.label_values):
        _, data = load_volume(output)
        _check_same_grid(pair.image, output)
        if value is not None or "_mask" in output.name:
            selected = data == value if value is not None else data > 0
            if not selected.any():
                what = f"label {value}" if value is not None else "mask"
                raise BadInputError(f"{output}: the {what} is empty; fix the label file or leave "
                                    f"sub-{pair.subject} out of the context")
