"""The per-subject report: ``<output_dir>/sub-<label>.html`` with PNGs in ``sub-<label>/figures/``.

Everything is read back from what the participant level wrote (derivatives, JSON sidecars,
transforms, crash files in ``logs/``), plus, when the work directory is given, the ICL node's
``info.json`` (timings, device) and the stacked context set (thumbnail of one pair).
"""
from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional
from urllib.parse import unquote, urlparse

import numpy as np

from ..derivatives import derivative_path, parse_bids_name
from ..errors import MissingInputError, NeuroverseError
from . import figures
from .common import CITATION, esc, figure, mask_volume_mm3, page, table, write_text_atomic


@dataclass
class ImageOutputs:
    """The derivatives of one source image (a T1w of one session/run)."""

    source_uri: str
    source: Optional[Path]                   # the input file, when it can be found
    masks: Dict[str, Path] = field(default_factory=dict)
    generated: Dict[str, Path] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)  # one sidecar (model, context, template...)

    @property
    def stem(self) -> str:
        """Source entities without the suffix, e.g. ``sub-01_ses-1``."""
        return self.source_uri.rsplit("/", 1)[-1].split(".")[0].rsplit("_", 1)[0]

    @property
    def relpath(self) -> str:
        return self.source_uri.split(":", 2)[-1]


def dataset_links(output_dir: Path) -> Dict[str, Path]:
    """Local folders of the source datasets named in ``dataset_description.json``."""
    try:
        links = json.loads((output_dir / "dataset_description.json").read_text()).get(
            "DatasetLinks", {})
    except (OSError, ValueError):
        return {}
    folders = {}
    for name, uri in links.items():
        parsed = urlparse(str(uri))
        if parsed.scheme in ("", "file"):
            folders[name] = Path(unquote(parsed.path))
    return folders


def collect_subject_outputs(output_dir, subject: str) -> List[ImageOutputs]:
    """Native-space derivatives of ``sub-<subject>``, grouped by their source image."""
    output_dir = Path(output_dir)
    folder = output_dir / f"sub-{subject}"
    if not folder.is_dir():
        raise MissingInputError(f"{folder}: no outputs for sub-{subject}; run the participant "
                                "level for this subject first")
    links = dataset_links(output_dir)
    images: Dict[str, ImageOutputs] = {}
    for sidecar in sorted(folder.glob("**/anat/*.json")):
        nifti = sidecar.with_name(sidecar.name[:-5] + ".nii.gz")
        try:
            meta = json.loads(sidecar.read_text())
            entities = parse_bids_name(nifti)
        except (OSError, ValueError):
            continue
        sources = meta.get("Sources") or []
        if not nifti.is_file() or "space" in entities or not sources:
            continue
        uri = str(sources[0])
        if uri not in images:
            dataset, _, rel = uri[len("bids:"):].partition(":") if uri.startswith("bids:") \
                else ("", "", uri)
            source = links.get(dataset, Path("/nonexistent")) / rel if rel else None
            images[uri] = ImageOutputs(uri, source if source and source.is_file() else None,
                                       meta=meta)
        entry = images[uri]
        if entities["suffix"] == "mask" and "desc" in entities:
            entry.masks[entities["desc"]] = nifti
        elif entities["suffix"] not in ("mask", "probseg", "dseg") and "desc" in entities:
            entry.generated[entities["desc"]] = nifti
    return list(images.values())


# --------------------------------------------------------------------------- work directory
def _icl_info(work_dir: Optional[Path], subject: str) -> List[dict]:
    """The ICL node's ``info.json`` of each image of ``subject`` (work dir), with its source."""
    if work_dir is None or not Path(work_dir).is_dir():
        return []
    found = []
    pattern = re.compile(rf"^sub_{re.escape(subject)}(_\d+)?_wf$")
    for info_file in sorted(Path(work_dir).glob("*/*/icl/info.json")):
        if not pattern.match(info_file.parent.parent.name):
            continue
        try:
            info = json.loads(info_file.read_text())
        except (OSError, ValueError):
            continue
        info["_in_file"] = _register_input(info_file.parent.parent / "register")
        found.append(info)
    return found


def _register_input(node_dir: Path) -> Optional[str]:
    """The native image a registration node read (from Nipype's result file)."""
    from nipype.utils.filemanip import loadpkl

    try:
        return str(loadpkl(node_dir / "result_register.pklz").inputs["in_file"])
    except Exception:  # missing or unreadable: the caller falls back to the image order
        return None


def _info_for(image: ImageOutputs, infos: List[dict], count: int) -> dict:
    for info in infos:
        if info.get("_in_file") and Path(info["_in_file"]).name == image.relpath.rsplit("/")[-1]:
            return info
    return infos[0] if len(infos) == 1 and count == 1 else {}


def _context_thumbnail(work_dir, subjects, names, out_png) -> Optional[Path]:
    """Draw the first pair of the stacked context set whose subjects are ``subjects``."""
    import nibabel as nb

    if work_dir is None:
        return None
    for stack in sorted(Path(work_dir).glob("**/context_set.npz")):
        with np.load(stack) as data:
            if [str(s) for s in data["subjects"]] != list(subjects):
                continue
            image, outputs = data["images"][0], data["outputs"][:, 0]
        grids = [g for g in sorted(Path(work_dir).glob("grid/*.nii*"))
                 if nb.load(str(g)).shape[:3] == image.shape]
        affine = nb.load(str(grids[0])).affine if grids else np.eye(4)
        image_img = nb.Nifti1Image(image.astype(np.float32), affine)
        if len(names) == len(outputs) and outputs.max() <= 1 and np.isin(outputs, (0, 1)).all():
            labels = [nb.Nifti1Image(o.astype(np.float32), affine) for o in outputs]
            return figures.context_pair(image_img, labels, out_png, title=f"sub-{subjects[0]}")
        figures.before_after(image_img, nb.Nifti1Image(outputs[0].astype(np.float32), affine),
                             out_png, cuts=4, labels=("context input", "context output"))
        return out_png
    return None


# --------------------------------------------------------------------------- crash files
def crash_files(output_dir: Path, subject: str):
    """``(this subject's crash files, other crash files)`` in ``output_dir/logs``."""
    own, other = [], []
    node = re.compile(rf"(^|\.)(ds_)?sub_{re.escape(subject)}(_\d+)?_wf\.")
    for crash in sorted((output_dir / "logs").glob("crash-*")):
        try:
            first = crash.read_text(errors="replace").splitlines()[0]
        except (OSError, IndexError):
            first = ""
        name = first.split("Node:", 1)[-1].strip()
        (own if node.search(name) else other).append((crash, name))
    return own, other


def _last_error_line(crash: Path) -> str:
    lines = [l for l in crash.read_text(errors="replace").splitlines() if l.strip()]
    return lines[-1].strip()[:300] if lines else ""


# --------------------------------------------------------------------------- the page
def methods_text(meta: dict, n_context: int, task: str) -> str:
    model = meta.get("Model") or {}
    what = "segmented" if task == "segmentation" else "processed (image generation)"
    return (
        f"<p>Anatomical images were {what} with Neuroverse3D [Hu et al., ICCV 2025], a 3D "
        "in-context learning model that performs the task shown by a set of image-label "
        f"example pairs without retraining, run with the Neuroverse3D BIDS-App ({esc(meta.get('Software', 'neuroverse3d'))}). "
        f"Each image was registered to the {esc(meta.get('Template', 'template'))} template "
        "(ANTs, rigid then affine, Mattes mutual information), resampled onto the model's "
        "grid, and its intensities were clipped to the 0.5-99.5 percentiles and scaled to "
        f"[0, 1]. The context set had {n_context} pairs from other participants, registered "
        "and resampled in the same way; the target's own data were never in its context. "
        f"Context features were computed in mini-contexts of "
        f"{esc(meta.get('MiniContextSize', 'n/a'))} (structure, context) pairs at a time and "
        f"averaged across them (adaptive parallel-sequential processing), in {esc(meta.get('Precision', 'n/a'))} precision, with model "
        f"{esc(model.get('Name', 'n/a'))} (SHA256 {esc(str(model.get('SHA256', 'n/a'))[:16])}...). "
        "Predictions were mapped back to the native grid through the inverse transform "
        "(linear interpolation) and segmentations thresholded at 0.5.</p>"
        "<blockquote>" + esc(CITATION) + "</blockquote>"
        "<p class=\"note\">This text is released under the CC0 license: copy it into your "
        "manuscript unchanged or edited.</p>")


def _registration_figure(image: ImageOutputs, output_dir, template_files, out_png, tmp):
    from ..geometry import resample

    forward = derivative_path(output_dir, image.relpath, **{
        "from": parse_bids_name(image.relpath)["suffix"], "to": image.meta.get("Template"),
        "mode": "image", "suffix": "xfm", "extension": ".mat"})
    if image.source is None or not forward.is_file() or template_files is None:
        return None, "registration check not drawn: the source image, the transform or the " \
                     "template is not available"
    registered = resample(image.source, template_files["brain_mask"], forward,
                          Path(tmp) / "registered.nii.gz", interpolation="linear")
    figures.outline_mosaic(registered, {"template brain": template_files["brain_mask"]}, out_png,
                           title=f"in {image.meta.get('Template')}")
    return out_png, ""


def build_subject_report(output_dir, subject: str, work_dir=None,
                         template_files: Optional[dict] = None) -> Path:
    """Write ``<output_dir>/sub-<subject>.html`` (and its figures); return its path.

    ``template_files``: ``dict(t1w=..., brain_mask=...)``; default: looked up (offline) in
    ``$TEMPLATEFLOW_HOME`` by the sidecars' ``Template``. Missing pieces (no template, no work
    dir, no source image) leave a note in the report instead of a figure.
    """
    output_dir = Path(output_dir)
    subject = subject[4:] if subject.startswith("sub-") else subject
    images = collect_subject_outputs(output_dir, subject)
    if not images:
        raise MissingInputError(f"{output_dir}/sub-{subject}: no derivatives with sidecars found")
    fig_dir = output_dir / f"sub-{subject}" / "figures"
    rel = lambda p: Path(p).relative_to(output_dir).as_posix()  # noqa: E731
    meta = images[0].meta
    task = (meta.get("ContextSpec") or {}).get("task", "segmentation")
    if template_files is None and meta.get("Template"):
        from ..templates import get_template

        try:
            template_files = get_template(meta["Template"])
        except NeuroverseError:
            template_files = None
    infos = _icl_info(Path(work_dir) if work_dir else None, subject)
    sections, summary_rows = [], []
    with tempfile.TemporaryDirectory(prefix="nv3d-report-") as tmp:
        for number, image in enumerate(images):
            body = [f"<p>Source: <code>{esc(image.source_uri)}</code></p>"]
            png, note = _registration_figure(image, output_dir, template_files,
                                             fig_dir / f"{image.stem}_desc-registration_T1w.png",
                                             Path(tmp))
            body.append("<h3>Registration check</h3>")
            body.append(figure(rel(png), f"{image.stem} in {meta.get('Template')} space, with "
                                         "the template brain outline") if png else
                        f'<p class="note">{esc(note)}</p>')
            if image.masks:
                rows = []
                for name, mask in image.masks.items():
                    rows.append((name, f"{mask_volume_mm3(mask):,.0f}",
                                 ("html", f'<a href="{esc(rel(mask))}">{esc(rel(mask))}</a>')))
                body.append("<h3>Segmentation (native space)</h3>")
                body.append(table(["structure", "volume (mm³)", "file"], rows, numeric=(1,)))
                for name, mask in image.masks.items():
                    if image.source is None:
                        continue
                    out = figures.outline_mosaic(image.source, {name: mask},
                                                 fig_dir / f"{image.stem}_desc-{name}_mask.png")
                    body.append(figure(rel(out), f"{name}: outline of the native-space mask "
                                                 "(sagittal, coronal, axial rows)"))
            for name, path in image.generated.items():
                body.append(f"<h3>Generation: {esc(name)}</h3>")
                if image.source is not None:
                    out = figures.before_after(image.source, path,
                                               fig_dir / f"{image.stem}_desc-{name}_beforeafter.png",
                                               labels=("input", name))
                    body.append(figure(rel(out), f"before (input) and after ({name}), native "
                                                 "space, axial slices"))
            if image.source is None:
                body.append('<p class="note">The source image was not found (dataset link in '
                            'dataset_description.json): native-space figures not drawn.</p>')
            info = _info_for(image, infos, len(images))
            summary_rows.append((image.stem, ", ".join(image.masks) or ", ".join(image.generated),
                                 info.get("device", "n/a"), info.get("seconds_load", "n/a"),
                                 info.get("seconds_inference", "n/a")))
            sections.append((f"image{number}", image.stem, "".join(body)))

        model = meta.get("Model") or {}
        about = table(None, [
            ("model", model.get("Name", "n/a")), ("SHA256", model.get("SHA256", "n/a")),
            ("precision", meta.get("Precision", "n/a")),
            ("mini-context size ((structure, context) pairs at a time)",
             meta.get("MiniContextSize", "n/a")),
            ("template", meta.get("Template", "n/a")),
            ("software", meta.get("Software", "n/a"))])
        about += table(["image", "outputs", "device", "model load (s)", "inference (s)"],
                       summary_rows, numeric=(3, 4))
        if not infos:
            about += '<p class="note">Timings come from the work directory (not given).</p>'

        subjects = [str(s) for s in meta.get("ContextSubjects") or []]
        spec = meta.get("ContextSpec") or {}
        names = [s.get("name") for s in spec.get("structures", [])] or \
            [spec.get("name") or spec.get("degradation") or "output"]
        context = (f"<p>{len(subjects)} context pairs, task <b>{esc(task)}</b>, outputs "
                   f"<b>{esc(', '.join(map(str, names)))}</b>, from: "
                   f"{esc(', '.join('sub-' + s for s in subjects))}</p>")
        thumb = _context_thumbnail(work_dir, subjects, names,
                                   fig_dir / f"sub-{subject}_desc-context_T1w.png")
        colours = ", ".join(f"{n} ({c})" for n, c in zip(names, figures.COLOUR_NAMES * 8))
        context += figure(rel(thumb), f"first context pair (sub-{subjects[0]}) on the model "
                                      f"grid, as the model saw it; outlines: {colours}") \
            if thumb else \
            '<p class="note">Context thumbnail: needs the work directory (-w).</p>'
        context += f"<details><summary>context specification</summary><pre>" \
                   f"{esc(json.dumps(spec, indent=2))}</pre></details>"

    own, other = crash_files(output_dir, subject)
    if own or other:
        rows = [(("html", f'<a href="{esc(rel(c))}">{esc(c.name)}</a>'), node, _last_error_line(c))
                for c, node in own + other]
        errors = (f'<p class="bad">{len(own)} crash file(s) for this subject, {len(other)} '
                  "other(s) in this run.</p>" + table(["crash file", "node", "error"], rows))
    else:
        errors = '<p class="ok">No errors: no crash files in logs/.</p>'
    sections += [("context", "Context set", context), ("about", "About", about),
                 ("methods", "Methods", methods_text(meta, len(subjects), task)),
                 ("errors", "Errors", errors)]
    return write_text_atomic(output_dir / f"sub-{subject}.html",
                             page(f"Neuroverse3D report: sub-{subject}", sections))
