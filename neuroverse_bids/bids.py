"""BIDS input: validation, layout, participant and image selection.

Nothing here writes inside the input dataset: the validator runs with read-only permissions and
the pybids index (when cached) lives in a folder of the work directory. Every error names the
dataset, subject or file and how to fix it, and carries the BIDS-Apps exit code.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

from .model.hashing import text_sha256
from .workflows.derivatives import bids_uri  # noqa: F401  (the one BIDS-URI builder)
from .workflows.errors import (
    BadInputError,
    ExitCode,
    MissingInputError,
    NeuroverseError,
    NothingSelectedError,
    UsageError,
    ValidationError,
)

#: how many validator errors an error message lists
MAX_LISTED = 5
IMAGE_EXTENSIONS = [".nii", ".nii.gz"]


def _strip(label, prefix: str) -> str:
    label = str(label).strip()
    return label[len(prefix):] if label.startswith(prefix) else label


def _require_description(bids_dir: Path):
    """A BIDS dataset is a folder with a dataset_description.json holding a JSON object."""
    if not bids_dir.is_dir():
        raise MissingInputError(f"{bids_dir}: the BIDS dataset folder does not exist")
    description = bids_dir / "dataset_description.json"
    if not description.is_file():
        raise BadInputError(
            f"{bids_dir} is not a BIDS dataset: it has no dataset_description.json. Point "
            "bids_dir at the dataset root (the folder holding dataset_description.json and the "
            "sub-<label> folders), or convert the data to BIDS first (e.g. with dcm2bids or "
            "HeuDiConv)")
    try:
        content = json.loads(description.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadInputError(f"{description}: not valid JSON ({error}); fix the file") from None
    if not isinstance(content, dict):
        raise BadInputError(f"{description}: must hold a JSON object with Name and BIDSVersion")


def require_dataset(root: Path, what: str):
    """A derivatives dataset the spec names: a folder with a dataset_description.json."""
    root = Path(root)
    if not root.is_dir():
        raise MissingInputError(f"{root}: {what} does not exist; fix the path in the spec or in "
                                "-d/--derivatives NAME=PATH")
    if not (root / "dataset_description.json").is_file():
        raise BadInputError(
            f"{root}: {what} has no dataset_description.json, so it is not a BIDS derivatives "
            "dataset; add one, e.g. {\"Name\": \"labels\", \"BIDSVersion\": \"1.9.0\", "
            "\"DatasetType\": \"derivative\", \"GeneratedBy\": [{\"Name\": \"<tool>\"}]}")
    _require_description(root)


def read_participant_file(path: Path) -> list:
    """Labels from ``--participant-label-file``: one a line, ``sub-`` optional, ``#`` comments."""
    if not path.is_file():
        raise MissingInputError(f"{path}: participant label file not found")
    labels = []
    for line in path.read_text().splitlines():
        label = line.split("#", 1)[0].strip()
        if label:
            labels.append(label[4:] if label.startswith("sub-") else label)
    if not labels:
        raise UsageError(f"{path}: no participant labels in this file; write one label a line "
                         "(e.g. 01 or sub-01)")
    return labels


def parse_derivatives(values: Optional[Sequence[str]]) -> Dict[str, Path]:
    """``-d/--derivatives`` values ``NAME=PATH`` (or a bare ``PATH``, named by its folder)."""
    named: Dict[str, Path] = {}
    for value in values or []:
        name, _, path = str(value).partition("=")
        if not path:
            name, path = Path(value).name, value
        if not name or not path:
            raise UsageError(f"-d/--derivatives {value!r}: expected NAME=PATH, e.g. "
                             "fmriprep=/data/derivatives/fmriprep")
        if name in named and named[name] != Path(path).resolve():
            raise UsageError(f"-d/--derivatives: the name {name!r} is given twice")
        named[name] = Path(path).resolve()
    return named


def _validator_command() -> List[str]:
    """argv prefix running bids-validator-deno read-only and offline.

    The PyPI package ships deno and a bundled validator (with its schema): run the bundle with
    only read and environment permissions, so it can neither write nor reach the network. Fall
    back to a ``bids-validator-deno`` executable on PATH.
    """
    try:
        import bids_validator_deno
        from deno import find_deno_bin

        bundle = Path(bids_validator_deno.__file__).parent / "bids-validator.js"
        if bundle.is_file():
            return [os.fsdecode(find_deno_bin()), "run", "--no-prompt", "--allow-read",
                    "--allow-env", str(bundle)]
    except Exception:  # not installed as the PyPI package: try PATH
        pass
    executable = shutil.which("bids-validator-deno")
    if executable is None:
        raise NeuroverseError(
            "bids-validator-deno is not installed: install it (pip install bids-validator-deno) "
            "or pass --skip-bids-validation", exit_code=ExitCode.FAILURE)
    return [executable]


def validator_issues(dataset_dir, timeout: Optional[float] = None) -> List[dict]:
    """Run bids-validator-deno on ``dataset_dir``; its issues, each a dict with ``severity``
    (``"error"``/``"warning"``), ``code``, ``location`` and ``message``."""
    command = _validator_command() + [str(dataset_dir), "--format", "json", "--no-color"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise NeuroverseError(f"{dataset_dir}: cannot run bids-validator-deno ({error}); pass "
                              "--skip-bids-validation to skip it", exit_code=ExitCode.FAILURE) from None
    try:
        report = json.loads(done.stdout)
        issues = report["issues"]["issues"]
        messages = report["issues"].get("codeMessages", {})
    except (ValueError, KeyError, TypeError):
        tail = (done.stderr or done.stdout).strip()[-800:]
        raise NeuroverseError(f"{dataset_dir}: bids-validator-deno failed (exit {done.returncode}):"
                              f" {tail}; pass --skip-bids-validation to skip it",
                              exit_code=ExitCode.FAILURE) from None
    for issue in issues:
        message = (issue.get("issueMessage") or messages.get(issue.get("code"), "")).strip()
        issue["message"] = message.splitlines()[0] if message else ""
    return issues


def format_issues(issues: Sequence[dict], limit: int = MAX_LISTED) -> str:
    """The first ``limit`` issues, one per line: ``CODE location [subCode]: message``."""
    lines = []
    for issue in issues[:limit]:
        sub = f" [{issue['subCode']}]" if issue.get("subCode") else ""
        lines.append(f"  {issue.get('code')} {issue.get('location', '')}{sub}: "
                     f"{issue.get('message', '')}")
    if len(issues) > limit:
        lines.append(f"  ... and {len(issues) - limit} more")
    return "\n".join(lines)


def validate_bids(bids_dir, skip: bool = False):
    """Check ``bids_dir`` is a valid BIDS dataset; warnings are ignored.

    Always: the folder exists and has a readable dataset_description.json (else
    :class:`BadInputError`, exit 65). Unless ``skip``: bids-validator-deno reports no errors
    (else :class:`ValidationError`, exit 16, listing the first errors).
    """
    bids_dir = Path(bids_dir).absolute()
    _require_description(bids_dir)
    if skip:
        return
    errors = [i for i in validator_issues(bids_dir) if i.get("severity") == "error"]
    if errors:
        raise ValidationError(
            f"{bids_dir}: the BIDS validator found {len(errors)} error(s):\n"
            f"{format_issues(errors)}\nFix them (run bids-validator-deno {bids_dir} for the full "
            "report), or pass --skip-bids-validation to run anyway")


def load_layout(bids_dir, derivatives: Iterable = (), database_dir=None):
    """A pybids ``BIDSLayout`` of ``bids_dir`` (validate=False), never writing inside it.

    ``database_dir`` (a folder of the work dir) holds the SQLite index, one per dataset, rebuilt
    on each call so it cannot go stale.
    """
    from bids import BIDSLayout

    bids_dir = Path(bids_dir).absolute()
    _require_description(bids_dir)
    derivatives = [str(Path(d).absolute()) for d in derivatives]
    database_path = None
    if database_dir is not None:
        database_dir = Path(database_dir).absolute()
        if database_dir == bids_dir or bids_dir in database_dir.parents:
            raise UsageError(f"{database_dir}: the BIDS database must not be inside the input "
                             f"dataset {bids_dir}; put it in the work directory")
        key = text_sha256("\n".join([str(bids_dir), *derivatives]), 12)
        database_path = database_dir / key
        database_path.mkdir(parents=True, exist_ok=True)
    try:
        # the derivatives entities (space, res, desc, label) are parsed in every dataset
        return BIDSLayout(str(bids_dir), validate=False, derivatives=derivatives or False,
                          config=["bids", "derivatives"],
                          database_path=None if database_path is None else str(database_path),
                          reset_database=True)
    except (ValueError, OSError) as error:  # pybids: bad description, unreadable folder
        raise BadInputError(f"{bids_dir}: cannot index this BIDS dataset ({error})") from None


def select_participants(layout, labels: Optional[Sequence[str]] = None) -> List[str]:
    """Subject labels (without ``sub-``) to process; ``labels`` may carry ``sub-``.

    None or empty: every subject. An unknown label raises :class:`MissingInputError` (exit 66)
    listing the subjects the dataset has.
    """
    available = sorted(layout.get_subjects(scope="raw"))
    root = layout.root
    if not available:
        raise MissingInputError(f"{root}: the dataset has no sub-<label> folders with data")
    if not labels:
        return available
    if isinstance(labels, str):
        labels = [labels]
    wanted = list(dict.fromkeys(_strip(label, "sub-") for label in labels))
    unknown = [label for label in wanted if label not in available]
    if unknown:
        shown = ", ".join(available[:20]) + (", ..." if len(available) > 20 else "")
        raise MissingInputError(
            f"{root}: participant(s) {', '.join('sub-' + u for u in unknown)} not found; the "
            f"dataset has: {shown}. Fix --participant-label")
    return wanted


def read_bids_filters(path) -> Dict[str, dict]:
    """Read a ``--bids-filter-file``: ``{"t1w": {"session": "01", "acquisition": null}, ...}``.

    Keys (image suffixes) are lower-cased; each value is a dict of pybids entity filters.
    ``null`` matches files without the entity and ``"*"`` files with any value. A missing or
    invalid file raises :class:`UsageError` (exit 64).
    """
    path = Path(path)
    try:
        content = json.loads(path.read_text())
    except OSError as error:
        raise UsageError(f"{path}: cannot read the BIDS filter file ({error.strerror})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UsageError(f"{path}: the BIDS filter file is not valid JSON ({error}); expected "
                         'e.g. {"t1w": {"session": "01"}}') from None
    if not isinstance(content, dict) or not all(isinstance(v, dict) for v in content.values()):
        raise UsageError(f"{path}: the BIDS filter file must map image types to entity filters, "
                         'e.g. {"t1w": {"session": "01", "run": 1}}')
    return {str(key).lower(): value for key, value in content.items()}


def _pybids_filters(filters: Optional[dict]) -> dict:
    from bids.layout import Query

    special = {None: Query.NONE, "*": Query.ANY}
    out = {}
    for key, value in (filters or {}).items():
        if isinstance(value, list):
            value = [special.get(v, v) if not isinstance(v, (dict, list)) else v for v in value]
        elif not isinstance(value, dict):
            value = special.get(value, value)
        out[key] = value
    return out


def collect_anatomicals(layout, subject: str, sessions: Optional[Sequence[str]] = None,
                        filters: Optional[dict] = None, suffix: str = "T1w",
                        check: bool = True) -> List[Path]:
    """Every ``anat/*_<suffix>.nii[.gz]`` of ``subject`` (all sessions and runs), sorted.

    ``sessions`` (with or without ``ses-``) and pybids entity ``filters`` narrow the choice.
    A subject without any such image raises :class:`MissingInputError` (66); images that exist
    but are all filtered out raise :class:`NothingSelectedError` (18). With ``check``, each
    selected image is read once: corrupt, truncated, non-3D or non-finite images raise
    :class:`BadInputError` (65) naming the file.
    """
    subject = _strip(subject, "sub-")
    base = {"subject": subject, "datatype": "anat", "suffix": suffix,
            "extension": IMAGE_EXTENSIONS, "return_type": "file", "scope": "raw"}
    everything = sorted(layout.get(**base))
    if not everything:
        raise MissingInputError(
            f"{layout.root}: sub-{subject} has no {suffix} image (looked for "
            f"sub-{subject}/[ses-*/]anat/*_{suffix}.nii[.gz]); add one or leave the subject out "
            "with --participant-label")
    query = dict(base, **_pybids_filters(filters))
    if isinstance(sessions, str):
        sessions = [sessions]
    if sessions:
        query["session"] = [_strip(s, "ses-") for s in sessions]
    try:
        selected = sorted(layout.get(**query))
    except (ValueError, KeyError) as error:
        raise UsageError(f"invalid BIDS filter {filters!r} for {suffix} ({error}); use pybids "
                         "entity names such as session, acquisition, run") from None
    if not selected:
        names = ", ".join(Path(f).name for f in everything[:10])
        raise NothingSelectedError(
            f"sub-{subject}: the filters (sessions={list(sessions or [])}, {suffix.lower()}="
            f"{filters or {}}) select none of its {suffix} images ({names}); loosen "
            "--session-label or --bids-filter-file")
    paths = [Path(f) for f in selected]
    if check:
        check_images(paths)
    return paths


def check_images(paths: Iterable) -> None:
    """Read each image once; raise :class:`BadInputError` (65) for a corrupt, truncated,
    non-3D or non-finite one, naming the file."""
    from .workflows.niftiio import load_volume

    for path in paths:
        load_volume(path)
