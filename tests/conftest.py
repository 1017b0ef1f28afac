"""Shared fixtures: paths to the reference data, a small random model, the demo dataset and
one real participant run of the app on it (shared by the end-to-end and the reports' tests)."""
import os
import subprocess
import time
from pathlib import Path

import pytest
import torch

DATA = Path(__file__).parent / "data"
SMALL_CHANNELS = (4, 8, 16, 32, 64)


@pytest.fixture(scope="session", autouse=True)
def _model_cache_in_tmp(tmp_path_factory):
    """The bfloat16 self-check cache (``NEUROVERSE3D_CACHE_DIR``) in a temporary folder, never
    the user's; subprocesses inherit it."""
    patch = pytest.MonkeyPatch()
    patch.setenv("NEUROVERSE3D_CACHE_DIR", str(tmp_path_factory.mktemp("model-cache")))
    yield
    patch.undo()


@pytest.fixture(scope="session")
def needs_bf16():
    """Skip where this CPU cannot run bfloat16 convolutions (AVX2 only, or
    ``NEUROVERSE3D_BF16=off``), naming what it lacks."""
    from neuroverse_bids.model.capability import bfloat16_support

    support = bfloat16_support("cpu")
    if not support.runs:
        pytest.skip(f"bfloat16 unsupported on this CPU: {support.reason}")
    return support


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture(scope="session")
def official_small_ckpt() -> Path:
    return DATA / "official_small.ckpt"


@pytest.fixture(scope="session")
def official_io() -> dict:
    return torch.load(DATA / "official_small_io.pt", weights_only=True)


@pytest.fixture
def tiny_model():
    """A 3-stage model with few channels (divisor 4), random weights, seeded."""
    from neuroverse_bids.model import Neuroverse3D

    torch.manual_seed(0)
    return Neuroverse3D(channels=(4, 8, 8), convs_per_block=2).double()


@pytest.fixture(scope="session")
def demo_dataset(tmp_path_factory) -> Path:
    """Synthetic demo data (4 subjects, 2.5 mm, seed 0), generated once: returns OUT with
    bids/, derivatives/labels/, templateflow/, context-spec.json, sourcedata/demo_truth.json."""
    from neuroverse_bids.demo import make_demo_dataset

    return make_demo_dataset(tmp_path_factory.mktemp("demo") / "demo", subjects=4, seed=0,
                             voxel_size=2.5)


@pytest.fixture(scope="session")
def templateflow_home(demo_dataset) -> Path:
    """A TEMPLATEFLOW_HOME holding tpl-MNI152NLin2009aSym (res-1), filled offline."""
    return demo_dataset / "templateflow"


@pytest.fixture(scope="session")
def bundled_grid():
    """The bundled default model's input grid shape (it lives in MNI152NLin2009aSym)."""
    from neuroverse_bids.model.pretrained import default_model_path
    from neuroverse_bids.model import load_checkpoint

    assert default_model_path().is_file(), f"the default model is missing: {default_model_path()}"
    grid = load_checkpoint(default_model_path()).metadata["grid"]
    assert grid["template"] == "MNI152NLin2009aSym"
    return tuple(grid["shape"])


def _snapshot(folder: Path):
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


def _run_app(demo, out, work, *extra):
    """``neuroverse3d`` participant level on the demo's sub-01 and sub-02 -> (result, seconds)."""
    env = dict(os.environ, TEMPLATEFLOW_HOME=str(demo / "templateflow"))
    command = ["neuroverse3d", str(demo / "bids"), str(out), "participant",
               "--participant-label", "01", "sub-02", "--context-spec", str(demo / "context-spec.json"),
               "--sloppy", "-w", str(work), "--nprocs", "2", "--precision", "float32",
               "--device", "cpu", *extra]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1200)
    return result, time.perf_counter() - start


@pytest.fixture(scope="session")
def app_run(demo_dataset, bundled_grid, tmp_path_factory):
    """One participant run with the bundled model: ``out``, ``work``, ``demo``, the input
    dataset's ``before`` snapshot, ``grid``, ``first_seconds``, ``first_outputs`` (what the
    run wrote: relative paths, before other tests add to ``out``); ``run`` and ``snapshot`` to
    run again and compare. Tests that change ``out`` work on a copy (it is shared)."""
    root = tmp_path_factory.mktemp("app")
    out, work = root / "out", root / "work"
    before = _snapshot(demo_dataset / "bids")
    first, first_seconds = _run_app(demo_dataset, out, work)
    assert first.returncode == 0, first.stderr[-3000:]
    return {"out": out, "work": work, "demo": demo_dataset, "before": before,
            "grid": bundled_grid, "first_seconds": first_seconds, "run": _run_app,
            "snapshot": _snapshot, "first_outputs": sorted(
                str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())}
