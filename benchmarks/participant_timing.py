"""Per-image wall time of a finished participant run, split by step, from a Nipype work dir.

Usage: python benchmarks/participant_timing.py WORK_DIR

Reads every node's result file and sums ``runtime.duration`` by step: registration
(``register``), resampling (``*to_grid``, ``to_native``, ``normalise``, ``extract``; for the context set also
stacking), inference
(``icl``), masks (``*_masks``) and writing (``ds_*`` derivatives sinks). The context set, built
once per run, is reported separately.
"""
from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

from nipype.utils.filemanip import loadpkl

STEPS = (("registration", ("register",)),
         ("resampling", ("to_grid", "to_native", "normalise", "extract", "image_to_grid",
                         "outputs_to_grid", "stack_", "merge_")),
         ("inference", ("icl",)),
         ("masks", ("native_masks", "template_masks")),
         ("writing", ("ds_", "pick_", "meta")))


def step_of(node: str) -> str:
    for step, prefixes in STEPS:
        if any(node.startswith(p) for p in prefixes):
            return step
    return "other"


def durations(work_dir: Path):
    totals = defaultdict(lambda: defaultdict(float))
    for result in work_dir.rglob("result_*.pklz"):
        parts = result.relative_to(work_dir).parts
        if "mapflow" in parts:  # MapNode iterations: counted through the MapNode's own result
            continue
        owner = next((p for p in parts if p.startswith(("sub_", "ds_sub_", "context_set_wf"))), "other")
        owner = owner.replace("ds_sub_", "sub_")
        runtimes = getattr(loadpkl(result), "runtime", None)
        runtimes = runtimes if isinstance(runtimes, list) else [runtimes]
        seconds = sum(float(getattr(r, "duration", 0.0) or 0.0) for r in runtimes)
        totals[owner][step_of(result.parent.name)] += seconds
    return totals


def main(argv=None) -> int:
    work_dir = Path((argv or sys.argv[1:])[0])
    totals = durations(work_dir)
    steps = [s for s, _ in STEPS] + ["other"]
    print("| image | " + " | ".join(steps) + " | total |")
    print("|---" * (len(steps) + 2) + "|")
    for owner in sorted(totals):
        row = totals[owner]
        print(f"| {owner} | " + " | ".join(f"{row[s]:.1f}" for s in steps) + f" | {sum(row.values()):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
