"""The one BIDS-derivatives writer: dataset description, images, sidecars, dseg.tsv.

File names come from :mod:`.derivative_names` (pybids' ``build_path`` and our patterns).

Every file is written atomically (a hidden temporary name in the destination folder, then
``os.replace``), so an interrupted run never leaves a half-written derivative. Transforms
(``*_xfm.mat``) are not in the BIDS specification yet: ``.bidsignore`` lists them, so the
output dataset passes bids-validator-deno.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Dict, Optional, Sequence

import nibabel as nb
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    Directory,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from .derivative_names import derivative_path, parse_bids_name
from .errors import BadInputError, OutputError
from .niftiio import write_atomic

BIDS_VERSION = "1.10.0"
#: integer-valued outputs
LABEL_SUFFIXES = ("mask", "dseg")
#: anatomical image suffixes: their derivatives need ``SkullStripped`` in the sidecar
ANAT_IMAGE_SUFFIXES = ("T1w", "T2w", "PDw", "T2starw", "FLAIR", "inplaneT1", "inplaneT2",
                       "PDT2", "angio", "T1map", "T2map", "T2starmap", "R1map", "R2map",
                       "R2starmap", "PDmap", "UNIT1")
IGNORED_PATTERNS = ("*_xfm.*", "*.html", "figures", "logs", "group_volumes.tsv", "self_evaluation*",
                    "quality.*", "suggest_labels.*", "cache")


# --------------------------------------------------------------------------- atomic writes
def _write_text(path, text: str, keep_identical: bool = True) -> Path:
    path = Path(path)
    if keep_identical and path.is_file():
        try:
            if path.read_text() == text:
                return path
        except (OSError, UnicodeDecodeError):
            pass
    return write_atomic(path, lambda tmp: Path(tmp).write_text(text))


def _json_value(value):
    """JSON form of values json does not know: numpy scalars and arrays, paths."""
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"cannot store {type(value).__name__} {value!r} in a JSON sidecar")


def _write_json(path, content: dict) -> Path:
    return _write_text(path, json.dumps(content, indent=2, default=_json_value) + "\n")


def bids_uri(path, dataset_root, dataset_name: str = "raw") -> str:
    """``bids:<dataset_name>:<path relative to dataset_root>``, with forward slashes.

    ``bids_uri("/data/sub-01/anat/sub-01_T1w.nii.gz", "/data")`` ->
    ``"bids:raw:sub-01/anat/sub-01_T1w.nii.gz"``. A path outside the dataset: ValueError.
    """
    path, root = Path(path), Path(dataset_root)
    for p, r in ((path.absolute(), root.absolute()), (path.resolve(), root.resolve())):
        try:
            return f"bids:{dataset_name}:{p.relative_to(r).as_posix()}"
        except ValueError:
            continue
    raise ValueError(f"{path} is not inside the dataset {root}")


# --------------------------------------------------------------------------- dataset level
def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("neuroverse3d")
    except PackageNotFoundError:
        return "0+unknown"


def _location(entry: dict) -> str:
    """A source dataset's URI: its ``URL``, or ``file://`` + its absolute ``path``."""
    if entry.get("URL"):
        return str(entry["URL"])
    if entry.get("path"):
        return Path(entry["path"]).absolute().as_uri()
    raise ValueError(f"source dataset {entry!r} needs a 'URL' or a 'path'")


def write_dataset_description(output_dir, source_datasets: Sequence[dict],
                              name: str = "Neuroverse3D", version: Optional[str] = None,
                              container: Optional[dict] = None,
                              code_url: Optional[str] = None) -> Path:
    """Write ``output_dir/dataset_description.json`` (and ``.bidsignore``) atomically.

    ``source_datasets``: dicts with ``URL`` (remote) or ``path`` (local folder), optional
    ``name`` (its key in DatasetLinks, used by BIDS URIs ``bids:<name>:...``), ``DOI``,
    ``Version``. ``container``: ``{"Type": "docker", "Tag": "..."}`` when in one. An identical
    existing file is left untouched; a description of another pipeline raises OutputError.
    """
    output_dir = Path(output_dir)
    sources, links = [], {}
    for entry in source_datasets:
        uri = _location(entry)
        sources.append({k: v for k, v in (("URL", uri), ("DOI", entry.get("DOI")),
                                          ("Version", entry.get("Version"))) if v})
        if entry.get("name"):
            links[str(entry["name"])] = uri
    generated = {"Name": name, "Version": version or _package_version()}
    if code_url:
        generated["CodeURL"] = code_url
    if container:
        generated["Container"] = {k: container[k] for k in ("Type", "Tag", "URI") if k in container}
    description = {"Name": f"{name} derivatives", "BIDSVersion": BIDS_VERSION,
                   "DatasetType": "derivative", "GeneratedBy": [generated],
                   "SourceDatasets": sources}
    if links:
        description["DatasetLinks"] = links

    path = output_dir / "dataset_description.json"
    if path.is_file():
        try:
            existing = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            existing = None
        owners = [g.get("Name") for g in (existing or {}).get("GeneratedBy", [])
                  if isinstance(g, dict)]
        if existing is not None and owners and name not in owners:
            raise OutputError(f"{output_dir}: holds derivatives of {', '.join(map(str, owners))}"
                              f", not {name}; choose another output folder")
        if existing == description:
            write_bidsignore(output_dir)
            return path
    _write_json(path, description)
    write_bidsignore(output_dir)
    return path


def write_bidsignore(output_dir: Path) -> Path:
    """Add :data:`IGNORED_PATTERNS` to ``output_dir/.bidsignore`` (keeping other lines)."""
    path = output_dir / ".bidsignore"
    lines = path.read_text().splitlines() if path.is_file() else []
    lines += [p for p in IGNORED_PATTERNS if p not in lines]
    return _write_text(path, "\n".join(lines) + "\n")


def write_dseg_tsv(output_dir, labels: Dict[int, str]) -> Path:
    """Write ``output_dir/dseg.tsv`` (columns ``index``, ``name``; rows sorted by index)."""
    rows = []
    for index, label in sorted((int(i), str(n)) for i, n in labels.items()):
        if index < 1 or not label or any(c in label for c in "\t\n\r"):
            raise ValueError(f"dseg label {index}: {label!r}: indices must be >= 1 (0 is "
                             "background) and names non-empty without tabs or newlines")
        rows.append(f"{index}\t{label}")
    if len({r.split(chr(9))[0] for r in rows}) != len(rows):
        raise ValueError(f"dseg labels {labels!r}: repeated index")
    return _write_text(Path(output_dir) / "dseg.tsv", "index\tname\n" + "\n".join(rows) + "\n")


# --------------------------------------------------------------------------- source dataset
def _source_root(source_file: Path) -> Path:
    """The dataset root of a BIDS file: the folder above its ``sub-<label>`` folder."""
    for parent in source_file.absolute().parents:
        if parent.name.startswith("sub-"):
            return parent.parent
    raise ValueError(f"{source_file}: not inside a sub-<label> folder of a BIDS dataset")


# --------------------------------------------------------------------------- data
def _label_array(data: np.ndarray, path: str, suffix: str) -> np.ndarray:
    """Integer copy of a mask/dseg; refuse non-integer or (for masks) non-binary values."""
    if not np.all(np.isfinite(data)) or not np.array_equal(data, np.rint(data)):
        raise BadInputError(f"{path}: a {suffix} must hold integer values; threshold it first")
    low, high = (int(data.min()), int(data.max())) if data.size else (0, 0)
    if suffix == "mask" and (low < 0 or high > 1):
        raise BadInputError(f"{path}: a mask must hold only 0 and 1, found [{low}, {high}]")
    for dtype in (np.uint8, np.int16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return data.astype(dtype)
    raise BadInputError(f"{path}: {suffix} values [{low}, {high}] exceed int32")


def _write_image(in_file: str, out_file: Path, suffix: str):
    """Copy a NIfTI, converting only what the output needs (gzip, integer labels)."""
    same_compression = in_file.endswith(".nii.gz") == out_file.name.endswith(".nii.gz")
    img = nb.load(in_file)
    out = img  # same dtype and header; nibabel only changes the compression
    if suffix in LABEL_SUFFIXES:
        labels = _label_array(np.asanyarray(img.dataobj), in_file, suffix)
        scaled = img.header.get_slope_inter() not in ((None, None), (1.0, 0.0))
        if labels.dtype != img.get_data_dtype() or scaled:
            header = img.header.copy()
            header.set_data_dtype(labels.dtype)
            header.set_slope_inter(1, 0)
            out = img.__class__(labels, img.affine, header)
    size = os.path.getsize(in_file)  # about what the file needs (for a full disk's message)
    if out is img and same_compression:
        write_atomic(out_file, lambda tmp: shutil.copyfile(in_file, tmp), size_hint=size)
    else:
        write_atomic(out_file, lambda tmp: nb.save(out, tmp), size_hint=size)


# --------------------------------------------------------------------------- interface
class _DerivativesDataSinkInputSpec(BaseInterfaceInputSpec):
    base_directory = Directory(mandatory=True, desc="output dataset root")
    source_file = InputMultiObject(File(exists=True), mandatory=True,
                                   desc="BIDS input(s) the output derives from; the first names it")
    in_file = File(exists=True, mandatory=True, desc="file to store (NIfTI, .mat, ...)")
    entities = traits.Dict(usedefault=True, desc="entity overrides, see derivative_path")
    meta = traits.Dict(usedefault=True, desc="extra sidecar fields")
    compress = traits.Bool(True, usedefault=True, desc="write NIfTI as .nii.gz")
    dataset_name = traits.Str("raw", usedefault=True, desc="DatasetLinks key of the source")
    source_root = Directory(desc="source dataset root (default: above the sub-<label> folder)")


class _DerivativesDataSinkOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="the stored derivative")
    out_meta = File(exists=True, desc="its JSON sidecar")


class DerivativesDataSink(SimpleInterface):
    """Store one derivative under its BIDS name, with a JSON sidecar, atomically.

    NIfTI data and dtype are kept (only gzip is added); masks and dseg are stored as the
    smallest integer type holding them. The sidecar has ``Sources`` (BIDS URIs), then ``meta``;
    native-space images (no ``space``) get ``SpatialReference`` = the source, and anatomical
    images (``T1w``...) get ``SkullStripped`` from ``meta``, the source's sidecar, or False.

    It always runs (as niworkflows' sink does): the derivatives live outside the work folder,
    so its cache cannot vouch for them (another output folder, deleted files), and with content
    hashing a cached sink would hand on the paths of the folder it wrote first.
    """

    input_spec = _DerivativesDataSinkInputSpec
    output_spec = _DerivativesDataSinkOutputSpec
    _always_run = True

    def _run_interface(self, runtime):
        sources = [Path(s) for s in self.inputs.source_file]
        in_file = str(self.inputs.in_file)
        is_nifti = in_file.endswith((".nii", ".nii.gz"))
        entities = dict(self.inputs.entities)
        if "extension" not in entities:
            entities["extension"] = ((".nii.gz" if self.inputs.compress else ".nii") if is_nifti
                                     else "".join(Path(in_file).suffixes[-1:]))
        out_file = derivative_path(self.inputs.base_directory, sources[0], **entities)
        meta_file = derivative_path(self.inputs.base_directory, sources[0],
                                    **dict(entities, extension=".json"))
        fields = parse_bids_name(out_file)
        if any(out_file.absolute() == s.absolute() for s in sources):
            raise OutputError(f"{out_file}: would overwrite its own source; choose an output "
                              "folder outside the input dataset")

        if fields["extension"] in (".nii", ".nii.gz"):
            _write_image(in_file, out_file, fields["suffix"])
        else:
            write_atomic(out_file, lambda tmp: shutil.copyfile(in_file, tmp))

        root = (Path(self.inputs.source_root) if isdefined(self.inputs.source_root)
                else _source_root(sources[0]))
        uris = [bids_uri(s, root, self.inputs.dataset_name) for s in sources]
        meta = dict(self.inputs.meta)
        extra = meta.pop("Sources", [])
        sidecar = {"Sources": list(dict.fromkeys(uris + list(extra)))}
        if is_nifti and "space" not in fields and "SpatialReference" not in meta:
            sidecar["SpatialReference"] = uris[0]
        if fields["suffix"] in ANAT_IMAGE_SUFFIXES and "SkullStripped" not in meta:
            sidecar["SkullStripped"] = _source_value(sources[0], "SkullStripped", False)
        sidecar.update(meta)
        try:
            out_meta = _write_json(meta_file, sidecar)
        except OutputError:  # no image without its sidecar (a full disk, say)
            out_file.unlink(missing_ok=True)
            raise
        self._results["out_file"] = str(out_file)
        self._results["out_meta"] = str(out_meta)
        return runtime


def _source_value(source: Path, key: str, default):
    """``key`` of the source's own JSON sidecar (same name, .json), else ``default``."""
    name = source.name
    stem = name[: -len(".nii.gz")] if name.endswith(".nii.gz") else source.stem
    sidecar = source.with_name(stem + ".json")
    try:
        return json.loads(sidecar.read_text()).get(key, default)
    except (OSError, ValueError, AttributeError):
        return default
