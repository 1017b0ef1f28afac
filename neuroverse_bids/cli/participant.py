"""Participant level: check everything up front, build the workflow, run it."""
from __future__ import annotations

import json
import logging
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from .. import __version__
from ..context_cache_store import CACHE_FOLDER  # noqa: F401  (<output_dir>/cache/context-sets)
from ..context_set import Datasets, check_pair, find_context_pairs
from ..context_spec import contexts_for, pick_context_pool, spec_from_args
from ..workflows.errors import ExitCode, NeuroverseError, UsageError

LOGGER = logging.getLogger("neuroverse3d")


@dataclass
class ParticipantPlan:
    """Everything checked and chosen before any work: the workflow is made by :func:`run_workflow`
    once the context set is in the cache (its status goes into the sidecars)."""

    output_dir: Path
    work_dir: Path
    subjects: List[str]
    workflow_args: Dict = field(default_factory=dict)    # init_main_wf keyword arguments
    cache_dir: Optional[Path] = None
    cache_request: Dict = field(default_factory=dict)    # what the context pool depends on
    build_args: Dict = field(default_factory=dict)       # context_cache.build_pool arguments
    workflow: object = None
    cache_max_gb: Optional[float] = None                 # --context-cache-max-gb
    cache_entry: Optional[str] = None                    # held in use until the run ends


def resolve_model(path) -> Path:
    """``--model``, else the bundled model (:func:`~..model.pretrained.default_model_path`)."""
    from ..model.pretrained import default_model_path

    return Path(path).resolve() if path is not None else default_model_path()


def resolve_template(requested, model) -> str:
    """``--template``, else the template space the model was trained in, else the default."""
    from ..model.spaces import DEFAULT_TEMPLATE

    return requested or (model.metadata.get("grid") or {}).get("template") or DEFAULT_TEMPLATE


def template_files_for(template_id: str, work_dir: Path) -> Dict:
    """The template's files through TemplateFlow (never downloading; see workflows.templates)."""
    from ..workflows.templates import resolve_template_files

    return resolve_template_files(template_id, private_home=work_dir / "templateflow")


def write_grid_reference(template_files: Dict, grid: Dict, path: Path) -> Path:
    """The model grid in template space, rewritten only when it changed (keeps caches valid)."""
    import nibabel as nb
    import numpy as np

    from ..workflows.geometry import model_grid
    from ..workflows.niftiio import write_atomic

    reference = model_grid(nb.load(str(template_files["brain_mask"])), grid["shape"],
                           grid["voxel_size_mm"])
    if path.is_file():
        old = nb.load(str(path))
        if old.shape == reference.shape and np.allclose(old.affine, reference.affine):
            return path
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, lambda tmp: nb.save(reference, tmp))


def pick_pool(candidates: List[str], spec, targets: List[str]) -> List[str]:
    """The labelled subjects the run stacks: today's seeded pool for one random draw; for
    ``similar`` every candidate, for a random ensemble of K the first K*L+1 of the seeded
    shuffle (so that K disjoint draws fit whichever target is left out). A request the pool
    cannot serve is a usage error (exit 64) that gives the numbers."""
    from ..model.selection import check_request

    if not spec.pooled:
        return pick_context_pool(candidates, spec, targets)
    pool = sorted(candidates)
    random.Random(spec.seed).shuffle(pool)
    if spec.selection == "random":
        pool = pool[: spec.ensemble * spec.num_contexts + 1]
    for target in targets:
        problem = check_request(len([s for s in pool if s != target]), spec.num_contexts,
                                spec.ensemble)
        if problem:
            raise UsageError(f"{spec.source}: sub-{target}: {problem} (--context-selection "
                             f"{spec.selection}, --ensemble {spec.ensemble}, --num-contexts "
                             f"{spec.num_contexts}); lower --ensemble or --num-contexts, or add "
                             "labelled subjects")
    return pool


def write_grid_mask(template_files: Dict, grid_reference: Path, path: Path) -> Path:
    """The template brain mask on the model grid (where ``similar`` compares images)."""
    from ..workflows.geometry import resample

    path.parent.mkdir(parents=True, exist_ok=True)
    return resample(template_files["brain_mask"], grid_reference, None, path,
                    interpolation="nearest")


def _subsets(subjects: List[str], pool: List[str], spec) -> (Dict, Dict):
    """Distinct context subsets (key -> subjects) and each target's key; with a pool
    (``spec.pooled``) every target gets the whole pool and its ICL node leaves it out."""
    keys, subsets, subset_of = {}, {}, {}
    for subject in subjects:
        chosen = tuple(pool if spec.pooled else contexts_for(subject, pool, spec))
        if chosen not in keys:
            keys[chosen] = f"set{len(keys)}"
            subsets[keys[chosen]] = list(chosen)
        subset_of[subject] = keys[chosen]
    return subsets, subset_of


def icl_resources(model, grid: Dict, structures: int, pairs: int, args,
                  stacked: Optional[int] = None) -> (Dict, Dict):
    """What each ICL node reserves (``mem_gb`` from the predictor's memory plan for the model
    grid, ``n_procs`` from --omp-nthreads) and the inference settings it runs with.

    ``--mem`` is the scheduler's total; the plan must fit in it (else exit 64 before any work).
    The node reserves its planned peak from that total (so the scheduler never runs more ICL
    nodes than fit), runs the planned mini-context size, and checks it against its own
    inference budget (``--icl-mem``, else ``--mem``, else a safe fraction of free memory). On
    a GPU the plan is the GPU's, made when the node runs; the node reserves the host memory of
    its arrays. ``stacked``: the pairs the node loads when it chooses ``pairs`` out of a pool
    (default ``pairs``).
    """
    from ..model.predictor import Predictor, resolve_device

    GB = 1024 ** 3

    n_procs = args.omp_nthreads or args.nprocs or os.cpu_count() or 1
    inference = {"device": args.device, "precision": args.precision,
                 "mini_context_size": args.mini_context_size}
    shape = list(grid["shape"])
    arrays_gb = 4 * (1 + structures) * ((stacked or pairs) + 1) * int(np.prod(shape)) / GB
    try:
        device = resolve_device(args.device)
    except ValueError as error:
        raise UsageError(str(error)) from None
    if device.type != "cpu":
        if args.icl_mem_gb:
            inference["mem_gb"] = args.icl_mem_gb
        return {"mem_gb": round(arrays_gb + 1.0, 2), "n_procs": n_procs}, inference
    precision = args.precision if args.precision in ("float32", "bfloat16") else "float32"
    budget = args.icl_mem_gb or args.mem_gb
    predictor = Predictor(model, device="cpu", precision=precision,
                          mini_context_size=args.mini_context_size, memory_gb=budget)
    try:
        chunk = predictor.plan(shape, pairs=pairs, structures=structures)
    except ValueError as error:  # MemoryBudgetError: even one pair does not fit
        raise UsageError(f"the ICL node cannot run within its memory budget: {error}") from None
    mem_gb = round(predictor.last_required_bytes / GB + arrays_gb, 2)
    if args.mem_gb and mem_gb > args.mem_gb:
        raise UsageError(f"one ICL node needs about {mem_gb} GB for the {shape} grid with "
                         f"{pairs} context pairs, more than --mem {args.mem_gb} GB; raise --mem or "
                         "lower --mini-context-size")
    inference["mini_context_size"] = chunk
    if budget:
        inference["mem_gb"] = budget
    return {"mem_gb": mem_gb, "n_procs": n_procs}, inference


def plan_participant_run(args, bids_dir: Path, output_dir: Path, work_dir: Path) -> ParticipantPlan:
    from .. import context_cache
    from ..bids import (collect_anatomicals, load_layout, parse_derivatives, read_bids_filters,
                        select_participants, validate_bids)
    from ..model import load_checkpoint
    from ..workflows.derivatives import write_dataset_description, write_dseg_tsv

    validate_bids(bids_dir, skip=args.skip_bids_validation)
    if not isinstance(getattr(args, "derivatives", None), dict):
        args.derivatives = parse_derivatives(getattr(args, "derivatives", None))
    spec = spec_from_args(args)
    layout = load_layout(bids_dir, database_dir=work_dir / "bids_db")
    subjects = select_participants(layout, args.participant_label)
    filters = read_bids_filters(args.bids_filters) if args.bids_filters else {}
    targets = {s: collect_anatomicals(layout, s, sessions=args.session_label,
                                      filters=filters.get(spec.image_suffix.lower()),
                                      suffix=spec.image_suffix) for s in subjects}
    pairs = find_context_pairs(spec, Datasets(bids_dir, work_dir / "bids_db", raw_layout=layout))
    pool = pick_pool(list(pairs), spec, subjects)
    for subject in pool:
        check_pair(pairs[subject])
    subsets, subset_of = _subsets(subjects, pool, spec)

    model_path = resolve_model(args.model)
    model = load_checkpoint(model_path)
    grid = model.metadata.get("grid") or {}
    if "shape" not in grid or "voxel_size_mm" not in grid:
        raise NeuroverseError(f"{model_path}: the model has no input grid in its metadata; convert "
                              "it with neuroverse3d-convert (which records the grid)", exit_code=ExitCode.BAD_INPUT)
    template = resolve_template(args.template, model)
    template_files = template_files_for(template, work_dir)
    grid_reference = write_grid_reference(template_files, grid,
                                          work_dir / "grid" / f"tpl-{template}_grid.nii.gz")
    ensemble = None
    if spec.pooled:  # each ICL node chooses its members out of the pool, leaving its own out
        ensemble = {"selection": spec.selection, "ensemble": spec.ensemble,
                    "num_contexts": spec.num_contexts}
        if spec.selection == "similar":
            ensemble["similarity_mask"] = str(write_grid_mask(
                template_files, grid_reference, work_dir / "grid" / f"tpl-{template}_grid_mask.nii.gz"))

    if spec.task == "segmentation":
        output_names = [s.name for s in spec.structures]
        generated_suffix = ""
    else:
        output_names = [spec.output_name]
        generated_suffix = spec.output_suffix or spec.image_suffix
    resources, inference = icl_resources(model, grid, len(output_names), spec.num_contexts, args,
                                         stacked=len(pool) if spec.pooled else None)
    static_meta = {
        "ContextSpec": spec.to_dict(),
        "Template": template,
        "Software": f"neuroverse3d {__version__}",
    }
    pool_pairs = [pairs[s] for s in pool]
    workflow_args = dict(
        targets=targets, pairs=pool_pairs, subsets=subsets, subset_of=subset_of,
        template_file=str(template_files["t1w"]), grid_reference=str(grid_reference),
        template_mask=str(template_files["brain_mask"]),
        template=template, model=str(model_path), output_names=output_names, task=spec.task,
        degradation=spec.degradation or "", output_dir=str(output_dir),
        source_suffix=spec.image_suffix, generated_suffix=generated_suffix,
        static_meta=static_meta, inference=inference, sloppy=args.sloppy, seed=spec.seed,
        icl_resources=resources, ensemble=ensemble)
    cache_dir = Path(args.context_cache).resolve() if getattr(args, "context_cache", None) \
        else output_dir / CACHE_FOLDER
    cache_max_gb = getattr(args, "context_cache_max_gb", None)
    context_cache.max_cache_bytes(cache_max_gb)  # a bad limit stops here (exit 64)
    request = context_cache.pool_request(spec, pool_pairs, grid, template, template_files["t1w"],
                                         args.sloppy)
    build_args = dict(pairs=pool_pairs, template_file=template_files["t1w"],
                      grid_reference=grid_reference, task=spec.task,
                      degradation=spec.degradation or "", sloppy=args.sloppy, seed=spec.seed,
                      work_dir=work_dir)

    write_dataset_description(output_dir, source_datasets=[{"path": str(bids_dir), "name": "raw"}],
                              version=__version__, container=_container())
    if spec.task == "segmentation" and len(output_names) > 1:
        write_dseg_tsv(output_dir, {i + 1: n for i, n in enumerate(output_names)})
    return ParticipantPlan(output_dir, work_dir, subjects, workflow_args, cache_dir, request,
                           build_args, cache_max_gb=cache_max_gb)


def prepare_context_set(plan: ParticipantPlan, plugin: Dict) -> Dict:
    """Build the context pool into the cache once (or wait for the job building it), then make
    the participant workflow read it. Returns the cache status (also in every sidecar)."""
    from .. import context_cache

    status = context_cache.ensure_entry(
        plan.cache_dir, plan.cache_request,
        lambda folder: context_cache.build_pool(folder, plugin=plugin, **plan.build_args),
        sources=context_cache.pool_sources(plan.build_args["pairs"]), max_gb=plan.cache_max_gb)
    plan.cache_entry = status["Entry"]  # in use (never evicted) until run_workflow releases it
    pool_file = str(Path(status["Entry"]) / context_cache.POOL_FILE)
    # the sidecars name the entry (stable across reruns); what this job reused and how long it
    # waited go to logs/context-set_<key>_<job>.json
    meta = dict(plan.workflow_args["static_meta"], ContextSet={"CacheKey": status["CacheKey"]})
    from ..workflows.participant import init_main_wf

    plan.workflow = init_main_wf(**dict(plan.workflow_args, static_meta=meta,
                                        context_pool=pool_file))
    plan.workflow.base_dir = str(plan.work_dir)
    log = plan.output_dir / "logs" / f"context-set_{status['CacheKey']}_{_job_tag()}.json"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(json.dumps(dict(status, Subjects=plan.subjects), indent=2, default=str) + "\n")
    print(f"neuroverse3d: context set {status['CacheKey']} "
          f"{'reused from' if status['Reused'] else 'built into'} {status['Entry']} "
          f"({status['SecondsPreparing']:.1f} s)")
    return status


def _job_tag() -> str:
    if "SLURM_ARRAY_JOB_ID" in os.environ:
        return f"job-{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}"
    if "SLURM_JOB_ID" in os.environ:
        return f"job-{os.environ['SLURM_JOB_ID']}"
    return f"pid-{os.getpid()}_{int(time.time())}"


def _container():
    """``{"Type": ..., "Tag": ...}`` when running inside Docker or Apptainer, else None."""
    if os.environ.get("APPTAINER_CONTAINER") or os.environ.get("SINGULARITY_CONTAINER"):
        return {"Type": "apptainer", "Tag": os.environ.get("NEUROVERSE3D_IMAGE_TAG", __version__)}
    if Path("/.dockerenv").exists():
        return {"Type": "docker", "Tag": os.environ.get("NEUROVERSE3D_IMAGE_TAG", __version__)}
    return None


def run_workflow(plan: ParticipantPlan, plugin: Dict, args) -> int:
    if args.omp_nthreads:
        os.environ["OMP_NUM_THREADS"] = str(args.omp_nthreads)
        os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(args.omp_nthreads)
    if "SLURM" in str(plugin["plugin"]).upper() and not os.environ.get("LOGNAME"):
        import pwd  # Nipype's SLURM plugins read $LOGNAME (unset in containers, cron, CI)

        os.environ["LOGNAME"] = pwd.getpwuid(os.getuid()).pw_name
    from ..execution import report_crashes, reporting

    crash_dir, started = plan.output_dir / "logs", time.time()
    try:
        with reporting(plugin) as build_plugin:
            prepare_context_set(plan, build_plugin)
    except RuntimeError:  # a node of the context build failed (Nipype's text: a traceback)
        crashes = report_crashes([plan.work_dir / "crash"], since=started)
        raise NeuroverseError(f"building the context set failed ({len(crashes)} step(s)): see "
                              f"the summaries above and the crash files in "
                              f"{plan.work_dir / 'crash'}", exit_code=ExitCode.FAILURE) from None
    workflow = plan.workflow
    workflow.config["execution"].update({
        "crashdump_dir": str(crash_dir),
        "crashfile_format": "txt",
        "hash_method": "content",
        "stop_on_first_crash": bool(args.stop_on_first_crash),
        "remove_unnecessary_outputs": False,
        "poll_sleep_duration": 0.1,  # MultiProc's scheduling loop (default 2 s per round)
    })
    LOGGER.info("running %d participant(s) with the %s plugin", len(plan.subjects), plugin["plugin"])
    try:
        with reporting(plugin, workflow) as run_plugin:
            workflow.run(**run_plugin)
    except RuntimeError:  # Nipype ran every step it could; the others crashed
        crashes = report_crashes([crash_dir], since=started)
        write_reports(plan)  # the reports list the crash files
        raise NeuroverseError(
            f"{len(crashes) or 'some'} step(s) failed: see the summaries above and the crash "
            f"files in {crash_dir}; the outputs of the participants whose steps all finished "
            "are written", exit_code=ExitCode.FAILURE) from None
    finally:
        from .. import context_cache

        context_cache.release_entry(plan.cache_entry)  # evictable again
    reports = write_reports(plan)
    print(f"neuroverse3d: finished {len(plan.subjects)} participant(s); outputs in {plan.output_dir}"
          + (f"; reports: {', '.join(str(r) for r in reports)}" if reports else ""))
    return 0


def write_reports(plan: ParticipantPlan) -> List[Path]:
    """Render each participant's page again with the crash files now in ``logs/`` (the report
    nodes drew the figures and saved the facts during the run; a participant whose steps
    failed gets a page with its errors). A report that cannot be made is logged, not fatal."""
    from ..workflows.reports import render_subject_report

    reports = []
    for subject in plan.subjects:
        try:
            reports.append(render_subject_report(plan.output_dir, subject))
        except Exception as error:  # a report problem must not fail a finished run
            LOGGER.warning("no report for sub-%s: %s", subject, error)
    return reports
