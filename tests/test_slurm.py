"""A real scheduler: a one-node SLURM on this machine (``scripts/start-local-slurm.sh``, root).

1. ``neuroverse3d-slurm`` runs the participant level as a job array (one subject per task),
   then the group level after it; the context set is built once and reused by the other tasks.
2. One participant level runs through Nipype's SLURM plugin (``--use-plugin``).

Without root (or when SLURM cannot start) the tests skip and say why; CI runs them as root
(``.ci/run`` installs slurm-wlm and munge). A tiny model (16^3 grid) keeps them short.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

START = Path(__file__).resolve().parent.parent / "scripts" / "start-local-slurm.sh"
SUBJECTS = ["01", "02"]


@pytest.fixture(scope="module")
def slurm():
    if os.geteuid() != 0:
        pytest.skip("starting a local SLURM needs root (CI runs these tests as root)")
    if shutil.which("slurmctld") is None and shutil.which("apt-get") is None:
        pytest.skip("no SLURM packages and no apt-get to install them (apt install slurm-wlm munge)")
    done = subprocess.run(["bash", str(START)], capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        pytest.skip(f"local SLURM did not start: {(done.stderr or done.stdout).strip()[-500:]}")
    return True


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from neuroverse_bids.model import Neuroverse3D, save_checkpoint

    torch.manual_seed(0)
    grid = {"shape": [16, 16, 16], "voxel_size_mm": 12.0, "template": "MNI152NLin2009aSym"}
    return save_checkpoint(Neuroverse3D(channels=(4, 8, 8)),
                           tmp_path_factory.mktemp("model") / "tiny.safetensors", grid=grid)


def _env(demo_dataset):
    env = dict(os.environ, TEMPLATEFLOW_HOME=str(demo_dataset / "templateflow"))
    env.pop("LOGNAME", None)  # as in containers and CI: the app sets it for Nipype's plugin
    return env


def _participant_options(demo_dataset, model, spec):
    return ["--context-spec", str(spec), "--model", str(model), "--sloppy", "--device", "cpu",
            "--precision", "float32", "--skip-bids-validation"]


@pytest.fixture(scope="module")
def spec(demo_dataset, tmp_path_factory):
    data = json.loads((demo_dataset / "context-spec.json").read_text())
    data.update(num_contexts=1, structures=[{"name": "brain", "mask": "brain"}])
    data["images"]["dataset"] = str(demo_dataset / "bids")
    data["labels"]["dataset"] = str(demo_dataset / "derivatives" / "labels")
    path = tmp_path_factory.mktemp("spec") / "spec.json"
    path.write_text(json.dumps(data))
    return path


@pytest.fixture(scope="module")
def array_run(slurm, demo_dataset, tiny_checkpoint, spec, tmp_path_factory):
    root = tmp_path_factory.mktemp("slurm")
    command = [sys.executable, "-m", "neuroverse_bids.cli.slurm", str(demo_dataset / "bids"),
               str(root / "out"), "-w", str(root / "work"), "--participant-label", *SUBJECTS,
               "--sbatch-args", "--cpus-per-task=1 --mem=1500M", "--wait", "--",
               *_participant_options(demo_dataset, tiny_checkpoint, spec)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1500,
                          env=_env(demo_dataset), cwd=root)  # not the source tree
    logs = "\n".join(p.read_text()[-1500:] for p in sorted((root / "work" / "slurm").glob("*.out")))
    assert done.returncode == 0, done.stdout + done.stderr + logs
    return root


def test_array_builds_the_context_set_once_then_group(array_run):
    out = array_run / "out"
    entries = [p for p in (out / "cache" / "context-sets").iterdir() if p.is_dir()]
    assert len(entries) == 1, entries
    manifest = json.loads((entries[0] / "manifest.json").read_text())
    assert "SLURM_ARRAY_TASK_ID" in manifest["BuiltBy"]
    statuses = [json.loads(p.read_text()) for p in sorted((out / "logs").glob("context-set_*.json"))]
    assert len(statuses) == len(SUBJECTS)
    assert sorted(s["Reused"] for s in statuses) == [False] + [True] * (len(SUBJECTS) - 1)
    assert {s["CacheKey"] for s in statuses} == {entries[0].name}
    for subject in SUBJECTS:
        sidecar = json.loads((out / f"sub-{subject}" / "anat" /
                              f"sub-{subject}_desc-brain_mask.json").read_text())
        assert sidecar["ContextSet"]["CacheKey"] == entries[0].name
        assert subject not in sidecar["ContextSubjects"]
    assert (out / "group_volumes.tsv").is_file()
    rows = (out / "group_volumes.tsv").read_text().splitlines()
    assert len(rows) == 1 + len(SUBJECTS)


def test_one_participant_through_nipype_slurm_plugin(array_run, demo_dataset, tiny_checkpoint, spec):
    """Nodes run as SLURM jobs; the context set comes from the array's cache."""
    out, work = array_run / "out", array_run / "work_plugin"
    plugin = array_run / "slurm_plugin.json"
    plugin.write_text(json.dumps({"plugin": "SLURM",
                                  "plugin_args": {"sbatch_args": "--mem=1500M --cpus-per-task=1"}}))
    command = [sys.executable, "-m", "neuroverse_bids.cli.run", str(demo_dataset / "bids"),
               str(out), "participant", "--participant-label", "03", "-w", str(work),
               "--use-plugin", str(plugin), *_participant_options(demo_dataset, tiny_checkpoint, spec)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1500,
                          env=_env(demo_dataset), cwd=array_run)  # not the source tree
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (out / "sub-03" / "anat" / "sub-03_desc-brain_mask.nii.gz").is_file()
    # the nodes ran as batch jobs: Nipype's SLURM plugin leaves its batch scripts
    assert list(work.rglob("batch/batchscript_*.sh"))
    statuses = [json.loads(p.read_text()) for p in (out / "logs").glob("context-set_*.json")]
    assert [s["Reused"] for s in statuses if s["Subjects"] == ["03"]] == [True]


def test_icl_node_reserves_its_memory_plan(tiny_checkpoint):
    """--mem is the scheduler's total; each ICL node reserves the predictor's plan for the
    model grid and as many processors as --omp-nthreads."""
    from neuroverse_bids.cli.parser import build_parser
    from neuroverse_bids.config import RunConfig
    from neuroverse_bids.resources import icl_resources
    from neuroverse_bids.model import load_checkpoint
    from neuroverse_bids.workflows.errors import UsageError

    model = load_checkpoint(tiny_checkpoint)
    base = ["bids", "out", "participant", "--device", "cpu", "--precision", "float32",
            "--omp-nthreads", "3"]
    def sections(extra):
        config = RunConfig.from_arguments(build_parser().parse_args(base + extra))
        return config.inference, config.nipype

    small, inference = icl_resources(model, {"shape": [16] * 3}, 2, 4, *sections(["--mem", "8GB"]))
    assert small.n_procs == 3 and 0 < small.mem_gb < 8
    assert inference.mini_context_size >= 1 and inference.memory_gb == 8.0
    large, _ = icl_resources(model, {"shape": [64] * 3}, 2, 4, *sections(["--mem", "8GB"]))
    assert large.mem_gb > small.mem_gb
    assert build_parser().parse_args(base + ["--mem", "8000"]).mem_gb == 8000 / 1024  # MB
    with pytest.raises(UsageError, match="--mem"):
        icl_resources(model, {"shape": [64] * 3}, 2, 4, *sections(["--mem", "300MB"]))


def test_dry_run_writes_the_array_and_group_scripts(tmp_path, capsys):
    from neuroverse_bids.cli.slurm import main

    bids = tmp_path / "bids"
    code = main([str(bids), str(tmp_path / "out"), "-w", str(tmp_path / "work"),
                 "--participant-label", "sub-01", "02", "--max-parallel", "1", "--dry-run",
                 "--sbatch-args", "--cpus-per-task=4 --mem=8G", "--", "--context-spec", "s.json"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "--array=1-2%1 --cpus-per-task=4 --mem=8G" in printed
    assert "--dependency=afterok:" in printed and "--kill-on-invalid-dep=yes" in printed
    folder = tmp_path / "work" / "slurm"
    assert (folder / "participants.txt").read_text() == "01\n02\n"
    script = (folder / "participant.sbatch").read_text()
    assert f"--context-cache {tmp_path / 'out' / 'cache' / 'context-sets'}" in script
    assert '--participant-label "$label"' in script and "--context-spec s.json" in script
    assert "--nprocs ${SLURM_CPUS_PER_TASK:-1}" in script and "--mem ${SLURM_MEM_PER_NODE" in script
    assert " group " in (folder / "group.sbatch").read_text()
    assert main([str(bids), str(tmp_path / "out"), "--dry-run", "--", "-w", "x"]) == 64
