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
