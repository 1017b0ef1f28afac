"""The per-subject report: ``<output_dir>/sub-<label>.html``, figures in ``sub-<label>/figures/``.

The page is rendered from the subject's facts (what the report nodes were given and drew, see
:mod:`.reportlets`), saved as ``sub-<label>/figures/sub-<label>_report.json``, plus the crash
files in ``logs/`` at rendering time. Rendering reads nothing else, so a page can be rebuilt from
an output folder alone (:func:`.rebuild.rebuild_reports`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Optional

from ..errors import MissingInputError
from .common import render, write_text_atomic
from .crash import crash_files
from .figures import COLOUR_NAMES
from ..prediction_info import PredictionInfo
from .reportlets import figures_dir

FACTS_VERSION = 1


def facts_path(output_dir, subject: str) -> Path:
    return figures_dir(output_dir, subject) / f"sub-{subject}_report.json"


def subject_facts(*, subject: str, images, context: Dict, static_meta: Dict, task: str,
                  output_names) -> Dict:
    """Everything a subject page shows: the images' facts, the context set's, the run's."""
    return {"version": FACTS_VERSION, "subject": subject, "task": task,
            "output_names": list(output_names), "images": list(images), "context": context,
            "template": static_meta.get("Template", "n/a"),
            "software": static_meta.get("Software", "n/a"),
            "context_spec": static_meta.get("ContextSpec", {})}


def write_facts(output_dir, facts: Dict) -> Path:
    return write_text_atomic(facts_path(output_dir, facts["subject"]),
                             json.dumps(facts, indent=2) + "\n")


def read_facts(output_dir, subject: str) -> Optional[Dict]:
    """The saved facts of ``sub-<subject>``; None when the run never saved them."""
    path = facts_path(output_dir, subject)
    if not path.is_file():
        return None
    facts = json.loads(path.read_text())
    if facts.get("version") != FACTS_VERSION:
        raise MissingInputError(f"{path}: report facts of another version "
                                f"({facts.get('version')}); rerun the participant level")
    return facts


def _strategy_summary(name: Optional[str]) -> Optional[str]:
    """The registered strategy's one-sentence summary (None for a name it does not know)."""
    from ...model.strategies import strategies

    strategy = strategies().get(name or "")
    return strategy.summary if strategy else None


def _ensemble_view(info: Dict) -> Dict:
    """What the page shows of an ICL node's context selection and ensemble (``info``):
    ``uncertainty`` rows (ensembles: structure, Disagreement, BoundarySpread; see
    model.ensemble) and ``selection`` (method, each member's context subjects with their NCC
    to the target)."""
    record = PredictionInfo.from_dict(info)
    members = record.ensemble  # a single member's summaries are 0 by definition
    uncertainty = [{"name": name, "disagreement": values["disagreement"],
                    "boundary_spread": values["boundary_spread"]}
                   for name, values in (record.uncertainty or {}).items() if members > 1]
    selection = None
    if record.pooled:
        scores = record.similarity or {}
        selection = {"method": record.selection or "n/a",
                     "summary": _strategy_summary(record.selection),
                     "members": [[{"subject": s, "ncc": scores.get(s)} for s in chosen]
                                 for chosen in record.context_sets]}
    return {"uncertainty": uncertainty, "selection": selection}


def _crash_rows(output_dir: Path, crashes):
    return [dict(summary, file=path.relative_to(output_dir).as_posix(), name=path.name)
            for path, summary in crashes]


def render_subject_report(output_dir, subject: str, facts: Optional[Dict] = None) -> Path:
    """Write ``<output_dir>/sub-<subject>.html`` from ``facts`` (None: the saved ones) and the
    crash files in ``logs/``; return its path. Without facts (the run failed before the report)
    the page shows its errors; with neither facts nor crash files of its own nodes:
    :class:`MissingInputError`."""
    output_dir = Path(output_dir)
    subject = subject[4:] if subject.startswith("sub-") else subject
    facts = facts if facts is not None else read_facts(output_dir, subject)
    own, other = crash_files(output_dir, subject)
    if facts is None and not own:
        raise MissingInputError(f"{facts_path(output_dir, subject)}: no report facts and no crash "
                                f"files for sub-{subject}; run the participant level for it first")
    images, context, about, missing = [], None, {}, {}
    if facts is not None:
        images = [dict(image, anchor=f"image{number}", spread=image.get("spread"),
                       **_ensemble_view(image["info"]))
                  for number, image in enumerate(facts["images"])]
        context = facts["context"]
        record = PredictionInfo.from_dict(images[0]["info"] if images else {})
        about = {"model": record.model or "n/a", "sha256": str(record.model_sha256 or "n/a"),
                 "precision": record.precision or "n/a",
                 "precision_reason": record.precision_reason,
                 "mini_context_size": record.mini_context_size or "n/a"}
        shown = [context.get("figure")] + [f for i in images for f in
                                           [i["registration"], i["segmentation"],
                                            i.get("spread")] +
                                           [g["figure"] for g in i["generated"]]]
        missing = {f: "rerun the participant level to draw it" for f in shown
                   if f and not (output_dir / f).is_file()}
    names = (facts or {}).get("output_names", [])
    colours = list(COLOUR_NAMES) * (len(names) // len(COLOUR_NAMES) + 1)
    sections = [(i["anchor"], i["stem"]) for i in images]
    if facts is not None:
        sections += [("context", "Context set"), ("about", "About"), ("methods", "Methods")]
    sections.append(("errors", "Errors"))
    text = render(
        "subject.html.j2", title=f"Neuroverse3D report: sub-{subject}", sections=sections,
        subject=subject, images=images, context=context, about=about, missing=missing,
        task=(facts or {}).get("task", "n/a"), output_names=names, colours=colours,
        outline_legend=", ".join(f"{n} ({c})" for n, c in zip(names, colours)),
        template=(facts or {}).get("template", "n/a"),
        software=(facts or {}).get("software", "n/a"),
        spec_json=json.dumps((facts or {}).get("context_spec", {}), indent=2),
        own=_crash_rows(output_dir, own), other=_crash_rows(output_dir, other))
    return write_text_atomic(output_dir / f"sub-{subject}.html", text)
