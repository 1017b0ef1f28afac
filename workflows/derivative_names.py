"""Derivative file names: the one place they are made and read back.

A derivative's name is its source's entities with the derivative's own (``space``, ``label``,
``desc``, ``from``/``to``/``mode``...) overriding them, written by pybids'
:func:`bids.layout.writing.build_path` through :data:`PATH_PATTERNS`: the patterns fix which
entities a derivative may carry and their order (the BIDS specification's, schema 1.x), so a
combination they cannot name raises instead of inventing a name.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict

DATATYPES = ("anat", "func", "dwi", "fmap", "perf", "pet", "meg", "eeg", "ieeg", "beh", "micr",
             "nirs", "motion", "mrs", "emg")

#: the entities any derivative may carry, each optional, in the specification's order
_ENTITIES = ("[_ses-{ses}][_cohort-{cohort}][_sample-{sample}][_task-{task}]"
             "[_tracksys-{tracksys}][_acq-{acq}][_nuc-{nuc}][_voi-{voi}][_ce-{ce}][_trc-{trc}]"
             "[_stain-{stain}][_rec-{rec}][_dir-{dir}][_run-{run}][_mod-{mod}][_echo-{echo}]"
             "[_flip-{flip}][_inv-{inv}][_mt-{mt}][_part-{part}][_proc-{proc}][_hemi-{hemi}]"
             "[_space-{space}][_split-{split}][_recording-{recording}][_chunk-{chunk}]"
             "[_atlas-{atlas}][_seg-{seg}][_scale-{scale}][_res-{res}][_den-{den}]"
             "[_label-{label}][_desc-{desc}]")
_FOLDER = "sub-{sub}[/ses-{ses}]/{datatype|anat}/sub-{sub}"

#: build_path patterns (pybids syntax: ``[...]`` optional, ``<a|b>`` allowed values, ``|x``
#: default), tried in order; each names a file and its JSON sidecar (extension ``.json``)
PATH_PATTERNS = (
    # transforms: from/to/mode as niworkflows writes them (not in BIDS yet: .bidsignore'd)
    _FOLDER + _ENTITIES + "_from-{from}_to-{to}_mode-{mode<image|points>}_{suffix<xfm>}"
                          "{extension<.mat|.txt|.h5|.json>}",
    # masks, probseg, dseg, generated images and spread maps: any suffix
    _FOLDER + _ENTITIES + "_{suffix}{extension<.nii.gz|.nii|.json>}",
)
#: every key the patterns know (short BIDS entity names), plus suffix/extension/datatype
KNOWN_KEYS = tuple(dict.fromkeys(re.findall(r"\{(\w+)", "".join(PATH_PATTERNS))))
#: pybids-style long names accepted as keys
LONG_NAMES = {"subject": "sub", "session": "ses", "acquisition": "acq",
              "nucleus": "nuc", "volume": "voi", "ceagent": "ce", "tracer": "trc",
              "reconstruction": "rec", "direction": "dir", "modality": "mod", "inversion": "inv",
              "mtransfer": "mt", "processing": "proc", "hemisphere": "hemi",
              "segmentation": "seg", "resolution": "res", "density": "den",
              "description": "desc", "from_": "from"}
_VALUE = re.compile(r"^[A-Za-z0-9]+$")


def parse_bids_name(path) -> Dict[str, str]:
    """Entities of a BIDS file name, plus ``suffix``, ``extension`` and ``datatype``.

    ``sub-01/ses-1/anat/sub-01_ses-1_run-2_T1w.nii.gz`` -> ``{"sub": "01", "ses": "1",
    "run": "2", "suffix": "T1w", "extension": ".nii.gz", "datatype": "anat"}``.
    """
    path = Path(path)
    name = path.name
    extension = ".nii.gz" if name.endswith(".nii.gz") else path.suffix
    parts = name[: len(name) - len(extension)].split("_")
    entities = {}
    for part in parts[:-1]:
        key, sep, value = part.partition("-")
        if not sep or not key or not value:
            raise ValueError(f"{path}: not a BIDS file name (bad part {part!r})")
        entities[key] = value
    if "sub" not in entities:
        raise ValueError(f"{path}: not a BIDS file name (no sub-<label>)")
    entities.update(suffix=parts[-1], extension=extension)
    if path.parent.name in DATATYPES:
        entities["datatype"] = path.parent.name
    return entities


def derivative_path(output_dir, source_file, **entities) -> Path:
    """The derivative's path: the source's entities with ``entities`` overriding them.

    Keys: short BIDS entities (``space``, ``label``, ``desc``, ``from``/``to``/``mode``...; pass
    ``from`` as ``from_`` or via ``**{"from": ...}``), their pybids long names, ``suffix``,
    ``extension``, ``datatype``; a value of None drops an entity. Folder:
    ``output_dir/sub-<label>[/ses-<label>]/<datatype>/``. Entities, suffix or extension that
    no pattern of :data:`PATH_PATTERNS` names (a mask with ``from``, a transform without
    ``to``, a ``.mat`` image...) raise ValueError, as do values that are not alphanumeric.
    """
    fields = parse_bids_name(source_file)
    for key, value in entities.items():
        key = LONG_NAMES.get(key, key)
        if key not in KNOWN_KEYS:
            raise ValueError(f"unknown BIDS entity {key!r}; known: {', '.join(KNOWN_KEYS)}")
        if value is None:
            fields.pop(key, None)
        else:
            fields[key] = str(value)
    unknown = [k for k in fields if k not in KNOWN_KEYS]
    if unknown:
        raise ValueError(f"{source_file}: unknown BIDS entities {unknown}")
    for key, value in fields.items():
        if key not in ("extension", "datatype") and not _VALUE.match(value):
            what = "suffix " if key == "suffix" else f"entity {key}-"
            raise ValueError(f"BIDS {what}{value!r}: values must be alphanumeric "
                             "(no '-', '_' or spaces)")
    # pybids (a third of a second to import) loads when a name is first built, not for reading one
    from bids.layout.writing import build_path

    built = build_path(fields, list(PATH_PATTERNS), strict=True)
    if built is None:
        named = ", ".join(f"{k}={v!r}" for k, v in fields.items())
        raise ValueError(f"no derivative file name for {named}: transforms need from, to, "
                         "mode, suffix xfm and .mat/.txt/.h5; other derivatives are .nii.gz, "
                         ".nii or .json without from/to/mode (workflows.derivative_names)")
    return Path(output_dir) / built
