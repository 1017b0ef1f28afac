"""Find the context pairs a spec asks for with pybids, and check them before any work starts.

Files are selected by BIDS entities (:class:`~.context_spec.Selector`), never by name patterns.
When a subject has several images that match ``images`` (sessions, acquisitions,
reconstructions, runs), the first in this order is its context image: the lowest session
label, files without ``acq-``/``rec-`` before those with (then by label), the lowest run.
Add ``ses``/``acq``/``rec``/``run`` to the spec's ``images`` to choose another. Its label (or
output) is the file of ``labels`` (``outputs``) of the same subject whose session, acquisition,
reconstruction and run agree with the image's (absent entities agree with anything; the file
sharing most of them wins). Files that still differ in any other entity (``desc``, ``space``,
``res``...) are ambiguous: the error names them and the entity to add to the spec.

dseg tables follow BIDS: ``<file stem>.tsv`` beside the file, then the nearest dataset table
whose entities all match the file's (``desc-aseg_dseg.tsv`` for ``*_desc-aseg_dseg.nii.gz``),
then ``dseg.tsv``. Names may be quoted; extra columns (``color``) are ignored.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import nibabel as nb
import numpy as np

from .context_spec import PYBIDS_NAMES, ContextSpec, Selector, Structure
from .workflows.errors import BadInputError, MissingInputError, UsageError
from .workflows.niftiio import load_volume

IMAGE_EXTENSIONS = [".nii", ".nii.gz"]
#: entities that tell a subject's images apart without changing what they are (the rule above)
ORDER_ENTITIES = ("session", "acquisition", "reconstruction", "run")
#: entities pybids adds that are not choices (never "ambiguous")
_NOT_CHOICES = {"subject", "datatype"}
MAX_NAMES = 40


@dataclass
class ContextPair:
    """One context subject: its image and, per output, the file (and dseg indices) to read."""

    subject: str
    image: Path
    outputs: List[Path] = field(default_factory=list)    # one per structure / generation output
    label_values: List[Optional[List[int]]] = field(default_factory=list)  # dseg indices (union)

    def to_dict(self) -> dict:
        return {"subject": self.subject, "image": str(self.image),
                "outputs": [str(p) for p in self.outputs], "label_values": self.label_values}


# ----------------------------------------------------------------------------- datasets
class Datasets:
    """pybids layouts of the datasets a spec names (each indexed once, outside the data)."""

    def __init__(self, bids_dir: Path, database_dir: Optional[Path] = None, raw_layout=None):
        self.bids_dir = Path(bids_dir).resolve()
        self.database_dir = database_dir
        self._layouts = {self.bids_dir: raw_layout} if raw_layout is not None else {}

    def layout(self, selector: Selector, role: str, source: str):
        from .bids import load_layout, require_dataset

        root = self.bids_dir if selector.root is None else Path(selector.root).resolve()
        if root not in self._layouts:
            if root != self.bids_dir:
                require_dataset(root, f"the {role} dataset ({selector.dataset!r} in {source})")
            self._layouts[root] = load_layout(root, database_dir=self.database_dir)
        return self._layouts[root]


def _query(selector: Selector, defaults=None, forced=None) -> dict:
    """pybids filters of a selector: spec keys -> pybids names; no ``space``: native only.
    ``defaults`` apply where the selector is silent, ``forced`` override it."""
    from bids.layout import Query

    query = {"extension": IMAGE_EXTENSIONS, "space": Query.NONE, **(defaults or {})}
    for key, value in selector.entities.items():
        name = PYBIDS_NAMES.get(key, key)
        if name == "run" and str(value).isdigit():
            value = int(value)
        if name == "extension" and not str(value).startswith("."):
            value = "." + str(value)
        query[name] = value
    query.update(forced or {})
    return query


def _describe(query: dict) -> str:
    shown = {k: ("<none>" if type(v).__name__ == "Query" else v) for k, v in query.items()
             if k != "extension"}
    return ", ".join(f"{k}={v}" for k, v in shown.items())


def _select(layout, query: dict, role: str, source: str) -> Dict[str, list]:
    """Files matching ``query`` grouped by subject; none at all is an error naming what exists."""
    try:
        files = layout.get(**query)
    except (ValueError, KeyError) as error:
        raise UsageError(f"{source}: cannot select {role} with {_describe(query)} ({error})") from None
    by_subject: Dict[str, list] = {}
    for bids_file in files:
        subject = bids_file.entities.get("subject")
        if subject is not None:
            by_subject.setdefault(str(subject), []).append(bids_file)
    if not by_subject:
        hints = []
        for key in query:
            if key in ("extension", "suffix", "subject"):
                continue
            loose = {k: v for k, v in query.items() if k != key}
            values = sorted({str(f.entities[key]) for f in layout.get(**loose) if key in f.entities})
            if values:
                hints.append(f"{key} there: {', '.join(values[:MAX_NAMES])}")
        suffixes = sorted({str(f.entities.get("suffix")) for f in layout.get(
            extension=IMAGE_EXTENSIONS)})
        raise MissingInputError(
            f"{source}: no file of {layout.root} matches the {role} ({_describe(query)}); "
            + ("; ".join(hints) + "; " if hints else "")
            + f"image suffixes there: {', '.join(suffixes) or 'none'}. Fix the entities in the "
              f"spec's {role!r} (no 'space' means native-space files without a space- entity)")
    return by_subject


def _order_key(bids_file):
    key = []
    for name in ORDER_ENTITIES:
        value = bids_file.entities.get(name)
        key.append((0, 0, "") if value is None else (1, value if isinstance(value, int) else 0,
                                                      str(value)))
    return tuple(key) + (bids_file.path,)


def _choose(files: list, role: str, subject: str, source: str):
    """One file among a subject's matches: the rule above, or an error when they differ in
    an entity the rule does not decide."""
    if len(files) == 1:
        return files[0]
    keys = set().union(*(f.entities for f in files)) - _NOT_CHOICES - set(ORDER_ENTITIES)
    differing = sorted(k for k in keys if len({str(f.entities.get(k)) for f in files}) > 1)
    if differing:
        names = ", ".join(Path(f.path).name for f in sorted(files, key=lambda f: f.path)[:6])
        spec_keys = {v: k for k, v in PYBIDS_NAMES.items()}
        choices = "; ".join(
            f"{spec_keys.get(k, k)}: " + " or ".join(sorted({repr(str(f.entities.get(k)))
                                                             for f in files}))
            for k in differing)
        raise BadInputError(
            f"{source}: sub-{subject} has {len(files)} {role} files that the spec does not tell "
            f"apart ({names}); they differ in {choices}. Add the entity to the spec's {role!r} "
            f"(e.g. \"{spec_keys.get(differing[0], differing[0])}\": "
            f"{str(files[0].entities.get(differing[0]))!r}) to choose one")
    return sorted(files, key=_order_key)[0]


def _matching(image, files: list) -> list:
    """Files whose session/acquisition/reconstruction/run agree with ``image``'s, best first."""
    scored = []
    for bids_file in files:
        score = 0
        for name in ORDER_ENTITIES:
            mine, theirs = image.entities.get(name), bids_file.entities.get(name)
            if theirs is None:
                continue
            if mine is None or str(mine) != str(theirs):
                break
            score += 1
        else:
            scored.append((score, bids_file))
    best = max((s for s, _ in scored), default=0)
    return [f for s, f in scored if s == best]


# ------------------------------------------------------------------------------ dseg tables
def read_dseg_table(table: Path) -> Dict[str, int]:
    """``name -> index`` of a BIDS dseg table (columns index and name; quotes stripped)."""
    try:
        with open(table, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
    except (OSError, UnicodeDecodeError) as error:
        raise BadInputError(f"{table}: cannot read this dseg table ({error})") from None
    if not rows or not {"index", "name"} <= set(rows[0]):
        raise BadInputError(f"{table}: a dseg table needs the tab-separated columns 'index' and "
                            "'name' (and optionally 'color'); fix its header")
    names = {}
    for number, row in enumerate(rows, start=2):
        try:
            index = int(str(row["index"]).strip())
        except ValueError:
            raise BadInputError(f"{table}, line {number}: index {row['index']!r} is not an "
                                "integer") from None
        names[str(row["name"]).strip().strip("\"'").strip()] = index
    return names


def dseg_table_path(layout, dseg_file: Path) -> Path:
    """The table of ``dseg_file`` by BIDS inheritance (see the module docstring)."""
    beside = dseg_file.with_name(dseg_file.name.split(".nii")[0] + ".tsv")
    if beside.is_file():
        return beside
    found = [Path(p) for p in layout.get_nearest(str(dseg_file), suffix="dseg", extension=".tsv",
                                                 all_=True, strict=True) or []]
    if found:
        depth = {p: -len(p.parent.parts) for p in found}
        return sorted(found, key=lambda p: (depth[p], -len(p.name.split("_")), p.name))[0]
    raise MissingInputError(
        f"{dseg_file}: no dseg table; looked for {beside.name} beside it, a dataset table whose "
        f"entities match (e.g. desc-<desc>_dseg.tsv) and dseg.tsv in {layout.root}. Add one with "
        "the tab-separated columns index and name")


def resolve_dseg_labels(structure: Structure, dseg_file: Path, layout, source: str,
                        tables: Dict[Path, Dict[str, int]]) -> List[int]:
    """The dseg indices of ``structure`` (a name, index or list: their union)."""
    labels = structure.dseg_labels
    if all(isinstance(v, int) for v in labels):
        return sorted(set(int(v) for v in labels))
    table_path = dseg_table_path(layout, dseg_file)
    if table_path not in tables:
        tables[table_path] = read_dseg_table(table_path)
    table = tables[table_path]
    missing = [v for v in labels if isinstance(v, str) and v not in table]
    if missing:
        names = sorted(table, key=lambda n: table[n])
        shown = ", ".join(names[:MAX_NAMES]) + (f", ... ({len(names)} in all)"
                                               if len(names) > MAX_NAMES else "")
        raise BadInputError(
            f"{source}: structure {structure.name!r} asks for {', '.join(map(repr, missing))}, "
            f"not in the dseg table {table_path} (used for {dseg_file.name}); names there: "
            f"{shown}. Fix the name in the spec (or --dseg-label)")
    return sorted({table[v] if isinstance(v, str) else int(v) for v in labels})


# ------------------------------------------------------------------------------ the pairs
def find_context_pairs(spec: ContextSpec, datasets: Datasets) -> Dict[str, ContextPair]:
    """Subjects with a complete pair for ``spec`` -> their files (dseg names resolved)."""
    source = spec.source
    image_layout = datasets.layout(spec.images, "images", source)
    images = _select(image_layout, _query(spec.images, {"suffix": spec.image_suffix}), "images", source)
    outputs_by_structure: List[Dict[str, list]] = []
    output_layout = None
    if spec.task == "segmentation":
        output_layout = datasets.layout(spec.labels, "labels", source)
        for structure in spec.structures:
            if structure.mask:
                query = _query(spec.labels, forced={"suffix": "mask", "desc": structure.mask})
            else:
                query = _query(spec.labels, {"suffix": "dseg"})
            what = f"labels of structure {structure.name!r}"
            outputs_by_structure.append(_select(output_layout, query, what, source))
    elif spec.output_suffix:
        output_layout = datasets.layout(spec.outputs, "outputs", source)
        outputs_by_structure.append(_select(output_layout, _query(spec.outputs), "outputs", source))
    pairs: Dict[str, ContextPair] = {}
    tables: Dict[Path, Dict[str, int]] = {}
    for subject in sorted(images):
        image = _choose(images[subject], "images", subject, source)
        pair = ContextPair(subject, Path(image.path))
        for index, by_subject in enumerate(outputs_by_structure):
            candidates = _matching(image, by_subject.get(subject, []))
            if not candidates:
                break
            role = "labels" if spec.task == "segmentation" else "outputs"
            chosen = Path(_choose(candidates, role, subject, source).path)
            values = None
            if spec.task == "segmentation" and spec.structures[index].dseg is not None:
                values = resolve_dseg_labels(spec.structures[index], chosen, output_layout,
                                             source, tables)
            pair.outputs.append(chosen)
            pair.label_values.append(values)
        else:
            pairs[subject] = pair
    if not pairs:
        raise MissingInputError(f"{source}: no subject has a complete context pair (an image and "
                                "every label/output the spec asks for); check the spec's datasets "
                                "and entities")
    return pairs


def check_grid(image: Path, other: Path):
    """``other`` (a label or output) must share ``image``'s voxel grid."""
    a, b = nb.load(str(image)), nb.load(str(other))
    if a.shape[:3] != b.shape[:3] or not np.allclose(a.affine, b.affine, atol=1e-3):
        raise BadInputError(
            f"{other}: its grid (shape {b.shape[:3]}, voxel size "
            f"{tuple(round(float(z), 3) for z in b.header.get_zooms()[:3])}) differs from its "
            f"image {image} (shape {a.shape[:3]}); select the label in the image's space (spec "
            "'space'/'res' on both images and labels), or resample it onto the image grid "
            "(nearest neighbour, e.g. antsApplyTransforms -n NearestNeighbor)")


def check_pair(pair: ContextPair):
    """Readable 3D volumes, grids agree, no context label is empty (reads the data)."""
    load_volume(pair.image)
    for output, values in zip(pair.outputs, pair.label_values):
        _, data = load_volume(output)
        check_grid(pair.image, output)
        if values is not None or "_mask" in output.name:
            selected = np.isin(np.rint(data), values) if values is not None else data > 0
            if not selected.any():
                what = f"label(s) {values}" if values is not None else "mask"
                raise BadInputError(f"{output}: the {what} is empty; fix the label file or leave "
                                    f"sub-{pair.subject} out of the context")
