"""Participant level: check everything up front, build the workflow, run it."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

from .. import __version__
from ..context_set import check_pair, find_context_pairs
from ..context_spec import contexts_for, pick_context_pool, spec_from_args
from ..workflows.errors import MissingInputError, NeuroverseError

LOGGER = logging.getLogger("neuroverse3d")
BUNDLED_MODEL = Path(__file__).resolve().parent.parent / "data" / "neuroverse3d_default.safetensors"


@dataclass
class ParticipantPlan:
    workflow: object
    output_dir: Path
    work_dir: Path
    subjects: List[str]


def resolve_model(path) -> Path:
    if path is not None:
        return Path(path).resolve()
    if BUNDLED_MODEL.is_file():
        return BUNDLED_MODEL
    raise MissingInputError("no model given and no bundled model installed; pass --model with a "
                            "checkpoint (e.g. the released neuroverse3D.ckpt, see the README)")


def resolve_template(requested, model) -> str:
    """``--template``, else the template space the model was trained in, else the default."""
    from .parser import DEFAULT_TEMPLATE

    return requested or (model.metadata.get("grid") or {}).get("template") or DEFAULT_TEMPLATE


def template_files_for(template_id: str) -> Dict:
    """The template's files from TemplateFlow's home. MNI152NLin2009aSym, when missing, is
    written there from nilearn's wheel (offline) first; other templates must be prefetched."""
    from ..workflows.errors import OutputError
    from ..workflows.templates import (DEMO_TEMPLATE, fill_templateflow_home, get_template,
                                       templateflow_home)

    try:
        return get_template(template_id)
    except MissingInputError:
        if template_id != DEMO_TEMPLATE:
            raise
    home = templateflow_home()
    LOGGER.info("writing %s into TemplateFlow home %s from nilearn's copy (offline)",
                template_id, home)
    try:
        fill_templateflow_home(home)
    except OSError as error:
        raise OutputError(f"cannot write template {template_id} into TEMPLATEFLOW_HOME {home} "
                          f"({error.strerror}); set TEMPLATEFLOW_HOME to a writable folder") from None
    return get_template(template_id)


def write_grid_reference(template_files: Dict, grid: Dict, path: Path) -> Path:
    """The model grid in template space, rewritten only when it changed (keeps caches valid)."""
    import nibabel as nb
    import numpy as np

    from ..workflows.geometry import model_grid

    reference = model_grid(nb.load(str(template_files["brain_mask"])), grid["shape"],
                           grid["voxel_size_mm"])
    if path.is_file():
        old = nb.load(str(path))
        if old.shape == reference.shape and np.allclose(old.affine, reference.affine):
            return path
    path.parent.mkdir(parents=True, exist_ok=True)
    nb.save(reference, str(path))
    return path


def _subsets(subjects: List[str], pool: List[str], spec) -> (Dict, Dict):
    """Distinct context subsets (key -> subjects) and each target's key."""
    keys, subsets, subset_of = {}, {}, {}
    for subject in subjects:
        chosen = tuple(contexts_for(subject, pool, spec))
        if chosen not in keys:
            keys[chosen] = f"set{len(keys)}"
            subsets[keys[chosen]] = list(chosen)
        subset_of[subject] = keys[chosen]
    return subsets, subset_of


def plan_participant_run(args, bids_dir: Path, output_dir: Path, work_dir: Path) -> ParticipantPlan:
    from ..bids import (collect_anatomicals, load_layout, read_bids_filters, select_participants,
                        validate_bids)
    from ..model import load_checkpoint
    from ..workflows.derivatives import write_dataset_description, write_dseg_tsv
    from ..workflows.participant import init_main_wf

    validate_bids(bids_dir, skip=args.skip_bids_validation)
    spec = spec_from_args(args)
    layout = load_layout(bids_dir, database_dir=work_dir / "bids_db")
    subjects = select_participants(layout, args.participant_label)
    filters = read_bids_filters(args.bids_filters) if args.bids_filters else {}
    targets = {s: collect_anatomicals(layout, s, sessions=args.session_label,
                                      filters=filters.get(spec.image_suffix.lower()),
                                      suffix=spec.image_suffix) for s in subjects}
    pairs = find_context_pairs(spec, bids_dir)
    pool = pick_context_pool(list(pairs), spec, subjects)
    for subject in pool:
        check_pair(pairs[subject])
    subsets, subset_of = _subsets(subjects, pool, spec)

    model_path = resolve_model(args.model)
    model = load_checkpoint(model_path)
    grid = model.metadata.get("grid") or {}
    if "shape" not in grid or "voxel_size_mm" not in grid:
        raise NeuroverseError(f"{model_path}: the model has no input grid in its metadata; convert "
                              "it with neuroverse3d-convert (which records the grid)", exit_code=65)
    template = resolve_template(args.template, model)
    template_files = template_files_for(template)
    grid_reference = write_grid_reference(template_files, grid,
                                          work_dir / "grid" / f"tpl-{template}_grid.nii.gz")

    if spec.task == "segmentation":
        output_names = [s.name for s in spec.structures]
        generated_suffix = ""
    else:
        output_names = [spec.output_name]
        generated_suffix = spec.output_suffix or spec.image_suffix
    static_meta = {
        "ContextSpec": spec.to_dict(),
        "Template": template,
        "Software": f"neuroverse3d {__version__}",
    }
    inference = {"device": args.device, "precision": args.precision,
                 "mini_context_size": args.mini_context_size}
    if args.mem_gb:
        inference["mem_gb"] = args.mem_gb
    workflow = init_main_wf(
        targets=targets, pairs=[pairs[s] for s in pool], subsets=subsets, subset_of=subset_of,
        template_file=str(template_files["t1w"]), grid_reference=str(grid_reference),
        template=template, model=str(model_path), output_names=output_names, task=spec.task,
        degradation=spec.degradation or "", output_dir=str(output_dir),
        source_suffix=spec.image_suffix, generated_suffix=generated_suffix,
        static_meta=static_meta, inference=inference, sloppy=args.sloppy, seed=spec.seed)
    workflow.base_dir = str(work_dir)

    write_dataset_description(output_dir, source_datasets=[{"path": str(bids_dir), "name": "raw"}],
                              version=__version__, container=_container())
    if spec.task == "segmentation" and len(output_names) > 1:
        write_dseg_tsv(output_dir, {i + 1: n for i, n in enumerate(output_names)})
    return ParticipantPlan(workflow, output_dir, work_dir, subjects)


def _container():
    """``{"Type": ..., "Tag": ...}`` when running inside Docker or Apptainer, else None."""
    if os.environ.get("APPTAINER_CONTAINER") or os.environ.get("SINGULARITY_CONTAINER"):
        return {"Type": "apptainer", "Tag": os.environ.get("NEUROVERSE3D_IMAGE_TAG", __version__)}
    if Path("/.dockerenv").exists():
        return {"Type": "docker", "Tag": os.environ.get("NEUROVERSE3D_IMAGE_TAG", __version__)}
    return None


def run_workflow(plan: ParticipantPlan, plugin: Dict, args) -> int:
    workflow = plan.workflow
    crash_dir = plan.output_dir / "logs"
    workflow.config["execution"].update({
        "crashdump_dir": str(crash_dir),
        "crashfile_format": "txt",
        "hash_method": "content",
        "stop_on_first_crash": bool(args.stop_on_first_crash),
        "remove_unnecessary_outputs": False,
        "poll_sleep_duration": 0.1,  # MultiProc's scheduling loop (default 2 s per round)
    })
    if args.omp_nthreads:
        os.environ["OMP_NUM_THREADS"] = str(args.omp_nthreads)
        os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(args.omp_nthreads)
    from ..logs import ProgressReporter

    plugin = dict(plugin, plugin_args=dict(plugin["plugin_args"],
                                           status_callback=ProgressReporter(workflow)))
    LOGGER.info("running %d participant(s) with the %s plugin", len(plan.subjects), plugin["plugin"])
    try:
        workflow.run(**plugin)
    except RuntimeError as error:
        write_reports(plan)  # the reports list the crash files
        crashes = sorted(str(p) for p in crash_dir.glob("crash-*"))
        raise NeuroverseError(f"the workflow failed ({error}); crash reports: "
                              f"{', '.join(crashes) or crash_dir}", exit_code=1) from None
    reports = write_reports(plan)
    print(f"neuroverse3d: finished {len(plan.subjects)} participant(s); outputs in {plan.output_dir}"
          + (f"; reports: {', '.join(str(r) for r in reports)}" if reports else ""))
    return 0


def write_reports(plan: ParticipantPlan) -> List[Path]:
    """One HTML report per participant; a report that cannot be made is logged, not fatal."""
    from ..workflows.reports import build_subject_report

    reports = []
    for subject in plan.subjects:
        try:
            reports.append(build_subject_report(plan.output_dir, subject, work_dir=plan.work_dir))
        except Exception as error:  # a report problem must not fail a finished run
            LOGGER.warning("no report for sub-%s: %s", subject, error)
    return reports
