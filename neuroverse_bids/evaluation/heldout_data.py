"""The held-out evaluation's inputs: a ``neuroverse3d-make-labelmap-data`` folder (maps on
the model grid, transforms, manifests) and the native 1 mm label maps it was built from."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

import numpy as np

from ..model.hashing import file_sha256
from ..workflows.errors import BadInputError, MissingInputError, UsageError


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise MissingInputError(f"{path}: {what} not found; build the folder with "
                                "neuroverse3d-make-labelmap-data NATIVE OUT")
    try:
        return json.loads(path.read_text())
    except (ValueError, OSError) as error:
        raise BadInputError(f"{path}: not readable JSON ({error}); rebuild it with "
                            "neuroverse3d-make-labelmap-data") from None


def _load_labels(path: Path, what: str):
    from ..anatomy.labelmaps import read_label_map

    if not path.is_file():
        raise MissingInputError(f"{path}: {what} not found")
    try:
        img = read_label_map(path)
    except Exception as error:  # nibabel raises many types for damaged files
        raise BadInputError(f"{path}: cannot read this {what} ({error})") from None
    return img, np.asanyarray(img.dataobj)


class LabelmapSet:
    """A ``neuroverse3d-make-labelmap-data`` folder and the native folder it was built from:
    grid maps, native maps (sha256 checked against generation.json), transforms."""

    def __init__(self, folder: Path, native: Path):
        self.folder, self.native_folder = Path(folder), Path(native)
        if not self.folder.is_dir():
            raise MissingInputError(f"{folder}: label-map folder not found; pass --labelmaps the "
                                    "output of neuroverse3d-make-labelmap-data")
        if not self.native_folder.is_dir():
            raise MissingInputError(f"{native}: native label-map folder not found; pass --native "
                                    "the folder the label maps were built from")
        self.generation_file = self.folder / "generation.json"
        self.generation = _read_json(self.generation_file, "generation.json")
        self.maps: Dict[str, dict] = self.generation.get("maps") or {}
        self.registration = (self.generation.get("registration") or {}).get("mode", "none")
        self.grid_spec = self.generation.get("grid") or {}
        self._native: Dict[str, tuple] = {}
        self._grid: Dict[str, np.ndarray] = {}
        self.sha256: Dict[str, str] = {"generation.json": file_sha256(self.generation_file)}
        first = self.grid_file(next(iter(self.maps), "?"))
        self.grid = _load_labels(first, "grid label map")[0]

    def ids(self, split: str) -> List[str]:
        return list((self.generation.get("splits") or {}).get(split) or [])

    def heldout(self) -> List[str]:
        manifest = _read_json(self.folder / "manifest-heldout.json", "manifest-heldout.json")
        return [s["id"] for d in manifest.get("datasets", []) for s in d.get("subjects", [])]

    def resolve(self, names: List[str], what: str) -> List[str]:
        """Map ids (``map-17``) or numbers (``17``) to the folder's ids, in the given order."""
        by_number = {int(k.split("-")[-1]): k for k in self.maps if k.split("-")[-1].isdigit()}
        out = []
        for name in names:
            key = name if name in self.maps else by_number.get(int(name)) if str(name).isdigit() \
                else None
            if key is None:
                raise UsageError(f"{what} {name}: not in {self.generation_file} (it has "
                                 f"{', '.join(self.maps)})")
            out.append(key)
        return list(dict.fromkeys(out))

    def grid_file(self, key: str) -> Path:
        return self.folder / "maps" / f"{key}_dseg.nii.gz"

    def grid_labels(self, key: str) -> np.ndarray:
        """int16 labels of ``key`` on the grid (cached)."""
        if key not in self._grid:
            path = self.grid_file(key)
            img, self._grid[key] = _load_labels(path, "grid label map")
            if img.shape[:3] != self.grid.shape[:3] or \
                    not np.allclose(img.affine, self.grid.affine):
                raise BadInputError(f"{path}: not on the folder's grid; rebuild {self.folder}")
            self.sha256[f"maps/{path.name}"] = file_sha256(path)
        return self._grid[key]

    def check_native(self, key: str) -> Path:
        """The native file of ``key``, checked: present, and its sha256 as recorded."""
        record = self.maps[key]
        path = self.native_folder / record["file"]
        if f"native/{path.name}" in self.sha256:
            return path
        if not path.is_file():
            raise MissingInputError(f"{path}: native label map of {key} not found; pass "
                                    "--native the folder the label maps were built from "
                                    f"({(self.generation.get('source') or {}).get('folder')})")
        sha = file_sha256(path)
        if record.get("sha256") and sha != record["sha256"]:
            raise BadInputError(f"{path}: sha256 differs from {self.generation_file}'s "
                                f"record of {key}; pass --native the files the label maps "
                                "were built from, or rebuild --labelmaps from these")
        self.sha256[f"native/{path.name}"] = sha
        return path

    def native(self, key: str):
        """(nibabel image, int16 labels) of ``key``'s native map (cached)."""
        if key not in self._native:
            self._native[key] = _load_labels(self.check_native(key), "native label map")
        return self._native[key]

    def transforms(self, key: str):
        """(forward, inverse) ``.mat`` paths of ``key``; (None, None) when not registered."""
        if self.registration == "none":
            return None, None
        record = self.maps[key]
        paths = []
        for field in ("transform", "inverse"):
            path = self.folder / record.get(field, "")
            if not record.get(field) or not path.is_file():
                raise MissingInputError(f"{path}: {field} of {key} not found; rebuild "
                                        f"{self.folder} with neuroverse3d-make-labelmap-data")
            self.sha256.setdefault(str(path.relative_to(self.folder)), file_sha256(path))
            paths.append(path)
        return tuple(paths)
