"""Participant level: check everything up front, build the workflow, run it.

:func:`plan_participant_run` reads the BIDS layout and the model for a :class:`~..config.RunConfig`
and makes the typed :class:`~..workflows.plan.MainWorkflowConfig`; :func:`run_workflow` builds
the context set into the cache (or reuses it), then runs :func:`~..workflows.participant.init_main_wf`.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Optional

from .. import __version__
from ..config import RunConfig
from ..context_cache_store import CACHE_FOLDER
from ..context_set import Datasets, check_pair, find_context_pairs
from ..context_spec import context_subsets, pick_context_pool, spec_from_config
from ..logs import container_info, job_tag
from ..model.strategies import get_strategy
from ..workflows.errors import ExitCode, NeuroverseError
from ..workflows.plan import EnsemblePlan, MainWorkflowConfig, TaskOutputs

LOGGER = logging.getLogger("neuroverse3d")


@dataclass
class ParticipantPlan:
    """Everything checked and chosen before any work: the workflow is made by
    :func:`prepare_context_set` once the context set is in the cache (its status goes into the
    sidecars)."""

    output_dir: Path
    work_dir: Path
    subjects: List[str]
    main: MainWorkflowConfig                             # init_main_wf's configuration
    cache_dir: Optional[Path] = None
    cache_request: Dict = field(default_factory=dict)    # what the context pool depends on
    workflow: object = None
    cache_max_gb: Optional[float] = None                 # --context-cache-max-gb
    cache_entry: Optional[str] = None                    # held in use until the run ends


def plan_participant_run(config: RunConfig) -> ParticipantPlan:
    from .. import context_cache
    from ..bids import (collect_anatomicals, load_layout, read_bids_filters, select_participants,
                        validate_bids)
    from ..model import load_checkpoint
    from ..model.pretrained import resolve_model_path
    from ..resources import icl_resources
    from ..template_grid import resolve_template, template_space
    from ..workflows.derivatives import write_dataset_description, write_dseg_tsv

    execution = config.execution
    bids_dir, output_dir, work_dir = execution.bids_dir, execution.output_dir, execution.work_dir
    validate_bids(bids_dir, skip=execution.skip_bids_validation)
    spec = spec_from_config(config.workflow, config.seeds.context, execution.derivatives)
    layout = load_layout(bids_dir, database_dir=work_dir / "bids_db")
    subjects = select_participants(layout, execution.participant_label)
    filters = read_bids_filters(execution.bids_filter_file) if execution.bids_filter_file else {}
    targets = {s: collect_anatomicals(layout, s, sessions=execution.session_label,
                                      filters=filters.get(spec.image_suffix.lower()),
                                      suffix=spec.image_suffix) for s in subjects}
    pairs = find_context_pairs(spec, Datasets(bids_dir, work_dir / "bids_db", raw_layout=layout))
    pool = pick_context_pool(list(pairs), spec, subjects)
    for subject in pool:
        check_pair(pairs[subject])
    subsets, subset_of = context_subsets(subjects, pool, spec)

    model_path = resolve_model_path(config.workflow.model)
    model = load_checkpoint(model_path)
    grid = model.metadata.get("grid") or {}
    if "shape" not in grid or "voxel_size_mm" not in grid:
        raise NeuroverseError(f"{model_path}: the model has no input grid in its metadata; convert "
                              "it with neuroverse3d-convert (which records the grid)",
                              exit_code=ExitCode.BAD_INPUT)
    template = resolve_template(config.workflow.template, model)
    compares = spec.pooled and get_strategy(spec.selection).compares_images
    space, grid_mask = template_space(template, grid, work_dir, with_grid_mask=compares)
    ensemble = None
    if spec.pooled:  # each ICL node chooses its members out of the pool, leaving its own out
        ensemble = EnsemblePlan(spec.selection, spec.ensemble, spec.num_contexts,
                                str(grid_mask or ""))
    if spec.task == "segmentation":
        outputs = TaskOutputs("segmentation", tuple(s.name for s in spec.structures),
                              source_suffix=spec.image_suffix)
    else:
        outputs = TaskOutputs("generation", (spec.output_name,), source_suffix=spec.image_suffix,
                              generated_suffix=spec.output_suffix or spec.image_suffix,
                              degradation=spec.degradation or "")
    resources, inference = icl_resources(model, grid, len(outputs.names), spec.num_contexts,
                                         config.inference, config.nipype,
                                         stacked=len(pool) if spec.pooled else None)
    pool_pairs = [pairs[s] for s in pool]
    main = MainWorkflowConfig(
        targets=targets, subsets=subsets, subset_of=subset_of, space=space, outputs=outputs,
        model=str(model_path), output_dir=str(output_dir), inference=inference,
        resources=resources, pairs=pool_pairs, ensemble=ensemble,
        static_meta={"ContextSpec": spec.to_dict(), "Template": template,
                     "Software": f"neuroverse3d {__version__}"},
        sloppy=config.workflow.sloppy, seed=spec.seed)
    cache_dir = execution.context_cache or output_dir / CACHE_FOLDER
    cache_max_gb = execution.context_cache_max_gb
    context_cache.max_cache_bytes(cache_max_gb)  # a bad limit stops here (exit 64)
    request = context_cache.pool_request(spec, pool_pairs, grid, template, space.t1w,
                                         config.workflow.sloppy)

    write_dataset_description(output_dir, source_datasets=[{"path": str(bids_dir), "name": "raw"}],
                              version=__version__, container=container_info())
    if spec.task == "segmentation" and len(outputs.names) > 1:
        write_dseg_tsv(output_dir, {i + 1: n for i, n in enumerate(outputs.names)})
    return ParticipantPlan(output_dir, work_dir, subjects, main, cache_dir, request,
                           cache_max_gb=cache_max_gb)


def prepare_context_set(plan: ParticipantPlan, plugin: Dict) -> Dict:
    """Build the context pool into the cache once (or wait for the job building it), then make
    the participant workflow read it. Returns the cache status (also in every sidecar)."""
    from .. import context_cache

    status = context_cache.ensure_entry(
        plan.cache_dir, plan.cache_request,
        lambda folder: _build_pool(plan, folder, plugin),
        sources=context_cache.pool_sources(plan.main.pairs), max_gb=plan.cache_max_gb)
    plan.cache_entry = status["Entry"]  # in use (never evicted) until run_workflow releases it
    pool_file = str(Path(status["Entry"]) / context_cache.POOL_FILE)
    # the sidecars name the entry (stable across reruns); what this job reused and how long it
    # waited go to logs/context-set_<key>_<job>.json
    meta = dict(plan.main.static_meta, ContextSet={"CacheKey": status["CacheKey"]})
    from ..workflows.participant import init_main_wf

    plan.workflow = init_main_wf(replace(plan.main, static_meta=meta, context_pool=pool_file))
    plan.workflow.base_dir = str(plan.work_dir)
    log = plan.output_dir / "logs" / f"context-set_{status['CacheKey']}_{job_tag()}.json"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(json.dumps(dict(status, Subjects=plan.subjects), indent=2, default=str) + "\n")
    print(f"neuroverse3d: context set {status['CacheKey']} "
          f"{'reused from' if status['Reused'] else 'built into'} {status['Entry']} "
          f"({status['SecondsPreparing']:.1f} s)")
    return status


def _build_pool(plan: ParticipantPlan, folder: Path, plugin: Dict):
    """Register the plan's context pairs onto the model grid and stack them into ``folder``."""
    from .. import context_cache

    main = plan.main
    return context_cache.build_pool(
        folder, pairs=main.pairs, template_file=main.space.t1w,
        grid_reference=main.space.grid_reference, task=main.outputs.task,
        degradation=main.outputs.degradation, sloppy=main.sloppy, seed=main.seed,
        plugin=plugin, work_dir=plan.work_dir)


def run_workflow(plan: ParticipantPlan, plugin: Dict, config: RunConfig) -> int:
    threads = config.nipype.omp_nthreads
    if threads:
        os.environ["OMP_NUM_THREADS"] = str(threads)
        os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(threads)
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
        "stop_on_first_crash": config.nipype.stop_on_first_crash,
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
