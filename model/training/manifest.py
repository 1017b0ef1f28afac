"""Training manifest: datasets, their subjects' files, and the tasks each dataset supports.

JSON form::

    {"format": "neuroverse3d-manifest", "version": 1,
     "datasets": [{"name": "ds000001", "space": "MNI152NLin2009cAsym",
                   "tasks": null,                      # null: inferred from the files
                   "subjects": [{"id": "sub-01", "image": "sub-01_T1w.nii.gz",
                                 "label": "sub-01_dseg.nii.gz",
                                 "brain_mask": "sub-01_mask.nii.gz",
                                 "paired": {"T2w": "sub-01_T2w.nii.gz"}}]}]}

TSV form: one row per subject, columns ``dataset subject image label brain_mask paired space
tasks`` (``paired`` as ``T2w=path;FLAIR=path``, ``tasks`` comma separated, empty or ``n/a`` for
none). Relative paths are relative to the manifest file. All volumes of a dataset must share
one grid (the trainer resamples to its training grid).

A dataset with ``"kind": "labelmap"`` (JSON only) holds label maps and no images: each
subject's ``image`` and ``label`` name its label map, and every episode synthesises new images
from them (``labelmap_synthesis``), so such a dataset supports every task.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from ..fileio import write_text_atomic
from .synthesis import RESTORATION_TASKS, SEGMENTATION, TASKS

FORMAT = "neuroverse3d-manifest"
LABELMAP = "labelmap"  # dataset kind: label maps only, images synthesised per episode
TSV_COLUMNS = ("dataset", "subject", "image", "label", "brain_mask", "paired", "space", "tasks")


@dataclass
class Subject:
    id: str
    image: str
    label: Optional[str] = None
    brain_mask: Optional[str] = None
    paired: Dict[str, str] = field(default_factory=dict)


@dataclass
class DatasetEntry:
    name: str
    subjects: List[Subject]
    space: Optional[str] = None          # template name when the data are in MNI space
    tasks: Optional[List[str]] = None    # declared tasks; None: inferred
    kind: Optional[str] = None           # LABELMAP: images synthesised from the label maps

    def supported_tasks(self) -> List[str]:
        """Tasks whose inputs every subject has (restricted to ``tasks`` when declared)."""
        subjects = self.subjects
        if self.kind == LABELMAP:
            return [t for t in TASKS if self.tasks is None or t in self.tasks]
        found = list(RESTORATION_TASKS)
        if subjects and all(s.label for s in subjects):
            found.insert(0, SEGMENTATION)
        if self.space and self.space.upper().startswith("MNI"):
            found.append("2d-to-3d")
        if subjects and all(s.brain_mask for s in subjects):
            found.append("skull-stripping")
        if subjects and self.paired_modalities():
            found.append("modality-transform")
        if self.tasks is not None:
            found = [t for t in found if t in self.tasks]
        return found

    def paired_modalities(self) -> List[str]:
        """Modalities that every subject has as a registered pair."""
        names = [set(s.paired) for s in self.subjects]
        return sorted(set.intersection(*names)) if names else []


@dataclass
class Manifest:
    datasets: List[DatasetEntry]
    root: Path = Path(".")

    def resolve(self, path: Optional[str]) -> Optional[Path]:
        if not path:
            return None
        p = Path(path)
        return p if p.is_absolute() else self.root / p

    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": 1, "datasets": [
            {"name": d.name, "space": d.space, "tasks": d.tasks,
             **({"kind": d.kind} if d.kind else {}),
             "subjects": [{"id": s.id, "image": s.image, "label": s.label,
                           "brain_mask": s.brain_mask, "paired": s.paired} for s in d.subjects]}
            for d in self.datasets]}

    def check(self) -> None:
        """Raise ``ValueError`` naming the first problem (unknown task, missing file)."""
        for dataset in self.datasets:
            unknown = set(dataset.tasks or ()) - set(TASKS)
            if unknown:
                raise ValueError(f"dataset {dataset.name}: unknown tasks {sorted(unknown)}; "
                                 f"choose from {', '.join(TASKS)}")
            if dataset.kind not in (None, LABELMAP):
                raise ValueError(f"dataset {dataset.name}: unknown kind {dataset.kind!r} "
                                 f"(known: {LABELMAP})")
            for s in dataset.subjects:
                for path in [s.image, s.label, s.brain_mask, *s.paired.values()]:
                    resolved = self.resolve(path)
                    if resolved is not None and not resolved.is_file():
                        raise ValueError(f"dataset {dataset.name}, {s.id}: file not found: {resolved}")


def _none(value):
    return None if value in (None, "", "n/a", "None") else value


def _from_dict(data: dict, root: Path) -> Manifest:
    if data.get("format", FORMAT) != FORMAT:
        raise ValueError(f"not a Neuroverse3D manifest (format {data.get('format')!r})")
    datasets = []
    for d in data["datasets"]:
        subjects = [Subject(id=s["id"], image=s["image"], label=_none(s.get("label")),
                            brain_mask=_none(s.get("brain_mask")), paired=dict(s.get("paired") or {}))
                    for s in d["subjects"]]
        datasets.append(DatasetEntry(d["name"], subjects, _none(d.get("space")), d.get("tasks"),
                                     _none(d.get("kind"))))
    return Manifest(datasets, root)


def _read_tsv(path: Path) -> Manifest:
    by_name: Dict[str, DatasetEntry] = {}
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            name = row["dataset"]
            paired = {}
            for item in (_none(row.get("paired")) or "").split(";"):
                if "=" in item:
                    key, value = item.split("=", 1)
                    paired[key.strip()] = value.strip()
            tasks = _none(row.get("tasks"))
            entry = by_name.setdefault(name, DatasetEntry(
                name, [], _none(row.get("space")),
                [t.strip() for t in tasks.split(",")] if tasks else None))
            entry.subjects.append(Subject(row["subject"], row["image"], _none(row.get("label")),
                                          _none(row.get("brain_mask")), paired))
    return Manifest(list(by_name.values()), path.parent)


def load_manifest(path) -> Manifest:
    """Read a JSON or TSV manifest (by extension) and check it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: manifest not found")
    if path.suffix.lower() in (".tsv", ".txt"):
        manifest = _read_tsv(path)
    else:
        manifest = _from_dict(json.loads(path.read_text()), path.parent)
    manifest.check()
    return manifest


#: ``{dataset or "*": {structure name: [label values]}}``
Structures = Dict[str, Dict[str, List[int]]]
STRUCTURES_FILE = "structures.json"


def structures_file(manifest_path, given=None) -> Path:
    """The structures file: ``given``, else :data:`STRUCTURES_FILE` beside the manifest."""
    return Path(given or Path(manifest_path).parent / STRUCTURES_FILE)


def named_structures(structures: Structures, dataset: str) -> Dict[str, List[int]]:
    """The structures of ``dataset``: its own entry, else the ``"*"`` entry, else none."""
    return structures.get(dataset, structures.get("*", {}))


def read_structures(path) -> Structures:
    """A structures file (JSON ``{dataset or "*": {name: [label values]}}``, as written beside
    the manifest by ``neuroverse3d-make-training-data``); ValueError naming the file if malformed."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        return {str(d): {str(n): [int(v) for v in values] for n, values in named.items()}
                for d, named in data.items()}
    except (ValueError, AttributeError, TypeError) as error:
        raise ValueError(f"{path}: not a structures file ({{dataset: {{name: [label values]}}}}): "
                         f"{error}") from None


def save_manifest(manifest: Manifest, path) -> Path:
    """Write JSON (or TSV for ``.tsv``) atomically; paths are written as stored."""
    path = Path(path)
    if path.suffix.lower() == ".tsv":
        if any(d.kind for d in manifest.datasets):
            raise ValueError(f"{path}: datasets of a kind ({LABELMAP}) need the JSON form")
        lines = ["\t".join(TSV_COLUMNS)]
        for d in manifest.datasets:
            for s in d.subjects:
                paired = ";".join(f"{k}={v}" for k, v in s.paired.items())
                cells = [d.name, s.id, s.image, s.label, s.brain_mask, paired, d.space,
                         ",".join(d.tasks) if d.tasks is not None else None]
                lines.append("\t".join(c if c else "n/a" for c in cells))
        write_text_atomic(path, "\n".join(lines) + "\n")
    else:
        write_text_atomic(path, json.dumps(manifest.to_dict(), indent=1) + "\n")
    return path
