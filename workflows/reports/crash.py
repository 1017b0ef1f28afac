"""Nipype crash files, summarised: which node failed, on which input, with what error.

Nipype writes a crash file per failed node into the run's ``logs/`` folder, as text
(``crash-*.txt``: the app's setting) or as a gzipped pickle (``crash-*.pklz``: Nipype's default).
Text files are parsed; pickles are read with an unpickler that builds every non-builtin object
as an inert placeholder holding its state, so nothing stored in the file is ever executed.
"""
from __future__ import annotations

import gzip
import io
import pickle
import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple

#: builtins a crash pickle may construct for real; anything else becomes an :class:`_Inert`
_SAFE_BUILTINS = {"dict", "list", "tuple", "set", "frozenset", "str", "bytes", "int", "float",
                  "bool", "complex", "bytearray", "slice", "range"}
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Warning)\b.*")
#: inputs that name the data a node works on, in the order they are reported
_DATA_INPUTS = ("in_file", "target", "in_files", "source_file", "image", "context_set")
#: a node's participant, from the name of the workflow it lives in (see :func:`node_subject`)
_NODE_SUBJECT = re.compile(
    r"(?:^|\.)(context_|ds_|report_)?sub_([A-Za-z0-9]+?)(?:_\d+)?_wf(?:\.|$)")


def node_subject(fullname: str) -> str:
    """``sub-01`` for a node of subject 01's workflows (``sub_01_wf``, ``ds_sub_01_wf``,
    ``report_sub_01_wf``), ``context sub-03`` for a context pair's (``context_sub_03_wf``),
    ``run`` for run-level nodes (the stacked context set)."""
    match = _NODE_SUBJECT.search(fullname)
    if not match:
        return "run"
    return ("context " if match.group(1) == "context_" else "") + f"sub-{match.group(2)}"


class _Inert:
    """Stands for any object of a crash pickle: keeps what it was given, runs no code."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs, self.state = args, kwargs, None

    def __setstate__(self, state):
        self.state = state


class _InertUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if module == "builtins" and name in _SAFE_BUILTINS:
            return super().find_class(module, name)
        if (module, name) == ("collections", "OrderedDict"):
            return dict
        return type(name, (_Inert,), {"__module__": f"inert.{module}"})


def _state(obj) -> dict:
    """The attribute dict an inert object was given (from BUILD or a reconstructor call)."""
    if not isinstance(obj, _Inert):
        return {}
    state = obj.state
    if isinstance(state, tuple):  # (dict, slots)
        state = next((s for s in state if isinstance(s, dict)), None)
    if isinstance(state, dict):
        return state
    for arg in obj.args:  # copyreg._reconstructor(cls, base, state) and the like
        if isinstance(arg, _Inert) and _state(arg):
            return _state(arg)
    return {}


def _plain(value):
    """A printable stand-in for a value of an inert object."""
    if isinstance(value, _Inert):
        return f"<{type(value).__name__}>"
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _read_pickle(path: Path) -> Tuple[str, Dict[str, str], List[str]]:
    opener = gzip.open if path.suffix == ".pklz" else open
    with opener(path, "rb") as stream:
        content = stream.read()
    if content.startswith(b"{"):  # Nipype's versioned pickles start with a JSON line
        content = content.split(b"\n", 1)[1]
    record = _InertUnpickler(io.BytesIO(content)).load()
    if not isinstance(record, dict):
        raise ValueError("not a Nipype crash record")
    node = _state(record.get("node"))
    name = ".".join(str(p) for p in (node.get("_hierarchy"), node.get("_id")) if p)
    interface = _state(node.get("_interface"))
    inputs = _state(interface.get("inputs"))
    values = {k: str(_plain(v)) for k, v in inputs.items()
              if not k.startswith("_") and "Undefined" not in str(_plain(v))}
    traceback = record.get("traceback") or []
    lines = "".join(traceback if isinstance(traceback, list) else [str(traceback)]).splitlines()
    return name, values, lines


def _node_report_inputs(work_dir: str) -> Dict[str, str]:
    """The inputs the node ran with, from the text report Nipype keeps in its working
    directory (``_report/report.rst``, "Original Inputs"): a crash file written by the main
    process lists connected inputs as undefined."""
    try:
        text = Path(work_dir, "_report", "report.rst").read_text(errors="replace")
    except OSError:
        return {}
    section = text.split("Original Inputs", 1)[-1].split("Execution Inputs", 1)[0]
    found = (line[2:].partition(" : ") for line in section.splitlines() if line.startswith("* "))
    return {key.strip(): value.strip() for key, _, value in found
            if value.strip() not in ("", "<undefined>")}


def _read_text(path: Path) -> Tuple[str, Dict[str, str], List[str]]:
    lines = path.read_text(errors="replace").splitlines()
    name, work_dir, inputs, in_inputs, traceback = "", "", {}, False, lines
    for number, line in enumerate(lines):
        if line.startswith("Node: ") and not name:
            name = line[len("Node: "):].strip()
        elif line.startswith("Working directory: ") and not work_dir:
            work_dir = line[len("Working directory: "):].strip()
        elif line.strip() == "Node inputs:":
            in_inputs = True
        elif in_inputs and line.startswith("Traceback"):
            traceback = lines[number:]
            break
        elif in_inputs and " = " in line:
            key, _, value = line.partition(" = ")
            if value.strip() != "<undefined>":
                inputs[key.strip()] = value.strip()
    if work_dir:
        inputs = dict(_node_report_inputs(work_dir), **inputs)
    return name, inputs, traceback


def _culprit(inputs: Dict[str, str], error_text: str) -> Optional[str]:
    """``name = value`` of the input the error is about: a path the traceback mentions, else
    the node's main data input."""
    for key, value in inputs.items():
        if "/" in value and value.strip("'[]\" ") in error_text:
            return f"{key} = {value}"
    for key in _DATA_INPUTS:
        if key in inputs:
            return f"{key} = {inputs[key]}"
    return None


def summarise_crash(path) -> Dict[str, Optional[str]]:
    """``dict(node, input, error)`` of a Nipype crash file (``.txt``, ``.pklz`` or ``.pkl``).

    ``node``: the failed node's full name; ``input``: ``name = value`` of the input that
    caused it (None when the file does not say); ``error``: the last line of the error (the
    exception and its message). An unreadable file gives its reason as the error.
    """
    path = Path(path)
    try:
        reader = _read_text if path.suffix == ".txt" else _read_pickle
        name, inputs, lines = reader(path)
    except Exception as error:  # a damaged crash file must not hide the others
        return {"node": _node_from_filename(path), "input": None,
                "error": f"unreadable crash file ({type(error).__name__}: {error})"}
    text = [line.strip() for line in lines if line.strip()]
    errors = [line for line in text if _EXCEPTION_LINE.match(line)]
    error = (errors or text or ["(no traceback in the crash file)"])[-1]
    return {"node": name or _node_from_filename(path),
            "input": _culprit(inputs, "\n".join(text)), "error": error[:500]}


def _node_from_filename(path: Path) -> str:
    """Nipype names crash files ``crash-<date>-<time>-<user>-<node id>-<uuid>.<ext>``."""
    parts = path.name.split(".")[0].split("-")
    return "-".join(parts[4:-5]) if len(parts) > 9 else path.name


def crash_files(output_dir, subject: str):
    """``(this subject's crash summaries, other crash summaries)`` of ``output_dir/logs``.

    Each is ``(path, summary)``; a crash belongs to ``subject`` when its node lives in one of
    the subject's workflows (``sub_<label>_wf``, ``ds_sub_<label>_wf``, ``report_sub_<label>_wf``).
    """
    own, other = [], []
    for crash in sorted(Path(output_dir, "logs").glob("crash-*")):
        if crash.suffix not in (".txt", ".pklz", ".pkl"):
            continue
        summary = summarise_crash(crash)
        mine = node_subject(summary["node"] or "") == f"sub-{subject}"
        (own if mine else other).append((crash, summary))
    return own, other
