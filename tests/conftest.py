"""Shared fixtures: paths to the reference data and a small random model."""
from pathlib import Path

import pytest
import torch

DATA = Path(__file__).parent / "data"
SMALL_CHANNELS = (4, 8, 16, 32, 64)


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
