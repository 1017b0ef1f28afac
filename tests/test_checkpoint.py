"""Checkpoint loading: released format, project format, conversion, refusal of unsafe files."""
import argparse
import json
import os

import pytest
import torch

from neuroverse_bids.model import CheckpointError, Neuroverse3D, load_checkpoint, save_checkpoint
from neuroverse_bids.model.checkpoint import read_project, to_released_names
from neuroverse_bids.model.convert import main as convert_main


def test_released_checkpoint_loads_with_config_from_hyperparameters(official_small_ckpt):
    model = load_checkpoint(official_small_ckpt)
    assert model.config.channels == (4, 8, 16, 32, 64)
    assert model.config.convs_per_block == 2
    assert not model.training
    assert model.metadata["format"] == "lightning"
    assert len(model.metadata["sha256"]) == 64


def test_config_is_inferred_from_shapes_without_hyperparameters(tmp_path):
    torch.manual_seed(0)
    source = Neuroverse3D(channels=(4, 8, 12), convs_per_block=3)
    path = tmp_path / "bare.ckpt"
    torch.save({"state_dict": {f"net.{k}": v for k, v in source.state_dict().items()}}, path)
    model = load_checkpoint(path)
    assert model.config.channels == (4, 8, 12) and model.config.convs_per_block == 3


def test_converter_writes_the_project_format_with_identical_outputs(official_small_ckpt, official_io, tmp_path):
    out = tmp_path / "small.safetensors"
    assert convert_main([str(official_small_ckpt), str(out), "--grid-shape", "32", "32", "32",
                         "--voxel-size", "6"]) == 0
    state, metadata = read_project(out)
    assert metadata["architecture"] == {"channels": [4, 8, 16, 32, 64], "convs_per_block": 2}
    assert metadata["grid"]["shape"] == [32, 32, 32] and metadata["grid"]["voxel_size_mm"] == 6
    assert metadata["provenance"]["converted_from"] == "official_small.ckpt"
    model = load_checkpoint(out)
    with torch.inference_mode():
        output = model(official_io["target_in"], official_io["context_in"], official_io["context_out"], 2)
    assert (output - official_io["output_l2"]).abs().max() <= 1e-5


def test_full_released_model_converts_to_the_manifest_key_set(data_dir, tmp_path):
    model = Neuroverse3D()
    path = save_checkpoint(model, tmp_path / "full.safetensors", provenance={"note": "random"})
    state, metadata = read_project(path)
    state = to_released_names(state, model.config)  # the loader's table, backwards
    rows = (data_dir / "official_full_manifest.tsv").read_text().splitlines()[1:]
    manifest = {r.split("\t")[0][len("net."):]: r.split("\t")[1] for r in rows}
    assert {k: "x".join(map(str, v.shape)) for k, v in state.items()} == manifest
    assert sum(v.numel() for v in state.values()) == 70_854_913


class _Exploit:
    """Unpickling this would run a shell command that creates a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickled_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    state = {f"net.{k}": v for k, v in Neuroverse3D(channels=(4, 8)).state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": _Exploit(marker)}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert "system" in str(info.value) and str(path) in str(info.value)
    assert not marker.exists()


def test_namespace_hyperparameters_are_allowed(tmp_path):
    path = tmp_path / "ns.ckpt"
    state = {f"net.{k}": v for k, v in Neuroverse3D(channels=(4, 8)).state_dict().items()}
    hp = argparse.Namespace(nb_inner_channels=[4, 8], nb_conv_layers_per_stage=2, lr=1e-5)
    torch.save({"state_dict": state, "hyper_parameters": hp, "epoch": 3}, path)
    model = load_checkpoint(path)
    assert model.metadata["provenance"]["epoch"] == 3


def test_inconsistent_hyperparameters_are_refused(tmp_path):
    path = tmp_path / "bad.ckpt"
    state = {f"net.{k}": v for k, v in Neuroverse3D(channels=(4, 8)).state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": {"nb_inner_channels": [4, 16],
                                                           "nb_conv_layers_per_stage": 2}}, path)
    with pytest.raises(CheckpointError, match="declare"):
        load_checkpoint(path)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"\x00" * 64])
def test_garbage_files_are_refused_clearly(tmp_path, content):
    path = tmp_path / "junk.ckpt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=str(path)):
        load_checkpoint(path)


def test_missing_file_is_reported(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.ckpt")


def test_project_format_round_trip_keeps_metadata(tmp_path):
    torch.manual_seed(0)
    model = Neuroverse3D(channels=(4, 8, 8))
    grid = {"shape": [16, 16, 16], "voxel_size_mm": 8.0, "template": "MNI152NLin2009aSym"}
    path = save_checkpoint(model, tmp_path / "m.safetensors", grid=grid, provenance={"steps": 5})
    loaded = load_checkpoint(path)
    assert loaded.metadata["grid"] == grid and loaded.metadata["provenance"] == {"steps": 5}
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind
    header_json = json.dumps(loaded.metadata)
    assert "sha256" in header_json


def test_files_with_the_released_key_names_load(tmp_path):
    """Version-1 files (the first bundled default model) hold the released checkpoint's names."""
    torch.manual_seed(0)
    source = Neuroverse3D(channels=(4, 8, 8), convs_per_block=3)
    path = tmp_path / "v1.safetensors"
    from safetensors.torch import save_file

    save_file(to_released_names(source.state_dict(), source.config), str(path), metadata={
        "neuroverse3d": json.dumps({"format": "neuroverse3d", "format_version": 1,
                                    "architecture": source.config.to_dict()})})
    loaded = load_checkpoint(path)
    for key, value in source.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
