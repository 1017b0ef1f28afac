"""Checkpoint I/O: the released Lightning checkpoint and the project's safetensors format.

Project format: one ``.safetensors`` file; the weights are the tensors, and the header's
metadata holds one JSON document under the key ``neuroverse3d``::

    {"format": "neuroverse3d", "format_version": 2,
     "architecture": {"channels": [...], "convs_per_block": 2},
     "grid": {"shape": [128, 128, 128], "voxel_size_mm": 1.5, "template": "MNI152NLin2009cAsym"},
     "provenance": {...}}

Tensors are named as the network's parameters (format version 2). Version 1 files (the
bundled default model among them) name them as the released checkpoint does; those names, and
the released checkpoint's, map onto the network's through :data:`RELEASED_NAMES`.

Released format: ``torch.save`` of a Lightning dict (``state_dict`` with keys ``net.*``,
``hyper_parameters``, possibly an ``argparse.Namespace``). It is read with
``torch.load(weights_only=True)`` and an explicit allowlist; a file that needs any other
Python type is refused, naming the type, and nothing from it is executed.
"""
from __future__ import annotations

import argparse
import json
import pickle
import re
import zipfile
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from .exit_codes import ExitCode
from .hashing import file_sha256
from .spaces import DEFAULT_TEMPLATE

from .fileio import write_atomic
from .network import Neuroverse3D, NetworkConfig

FORMAT_NAME = "neuroverse3d"
FORMAT_VERSION = 2  # 1: tensors under the released checkpoint's names
METADATA_KEY = "neuroverse3d"
RELEASED_PREFIX = "net."

#: The released model's input grid (our choice of documentation: 128^3 voxels at 1.5 mm in MNI).
RELEASED_GRID = {"shape": [128, 128, 128], "voxel_size_mm": 1.5, "template": DEFAULT_TEMPLATE}

#: Python types a released checkpoint may contain besides tensors and plain containers.
SAFE_GLOBALS = [argparse.Namespace]


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and the fix.

    ``exit_code``: bad input data here, missing input for a file that is not there.
    """

    exit_code = ExitCode.BAD_INPUT


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    exit_code = ExitCode.MISSING_INPUT


# ------------------------------------------------------------------------------ released
def _unsafe_globals(path: Path):
    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # pragma: no cover - only for files torch cannot even open
        return []


def read_released(path) -> Tuple[Dict[str, Tensor], dict]:
    """Read a released (Lightning) checkpoint safely -> (state_dict without ``net.``, hparams)."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        allowed = {f"{t.__module__}.{t.__qualname__}" for t in SAFE_GLOBALS}
        offending = [g for g in _unsafe_globals(path) if g not in allowed]
        names = ", ".join(offending) or str(error).splitlines()[0]
        raise CheckpointError(
            f"{path}: refused to load: the file needs Python objects outside the safe allowlist "
            f"({names}). Only use checkpoints from a source you trust; the released "
            f"neuroverse3D.ckpt needs none of these."
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile) as error:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({error})") from None
    if not isinstance(payload, dict) or "state_dict" not in payload:
        raise CheckpointError(f"{path}: no 'state_dict' in the checkpoint; is it a Neuroverse3D file?")
    state = {}
    for key, value in payload["state_dict"].items():
        state[key[len(RELEASED_PREFIX):] if key.startswith(RELEASED_PREFIX) else key] = value
    hparams = payload.get("hyper_parameters") or {}
    if isinstance(hparams, argparse.Namespace):
        hparams = vars(hparams)
    provenance = {k: payload[k] for k in ("epoch", "global_step") if k in payload}
    provenance["hyper_parameters"] = {k: v for k, v in dict(hparams).items()
                                      if isinstance(v, (int, float, str, bool, list, type(None)))}
    return state, provenance


#: Parameter names of :class:`.network.Neuroverse3D` (left) and of the released checkpoint
#: (right, after the Lightning ``net.`` prefix). ``{i}``: a stage, expanded over 0..S-2;
#: ``{last}``: S-1 (the released context bottleneck is its encoder's last stage). Inside a
#: residual block conv j is ``convs.{j}`` here and ``layers.{2j}`` in the release (GELUs sat
#: between the convs of an ``nn.Sequential``); ``.module`` wrapped the release's per-pair layers.
RELEASED_NAMES = (
    ("target_encoder.embed", "target_encoder.target_embedding"),
    ("target_encoder.blocks.{i}", "target_encoder.enc_blocks.{i}.target_conv"),
    ("target_encoder.downs.{i}", "target_encoder.downsample_blocks.{i}.target_linear_layer"),
    ("context_unet.embed", "context_unet.context_embedding.module"),
    ("context_unet.blocks.{i}", "context_unet.enc_blocks.{i}.context_conv.module"),
    ("context_unet.target_fusion.{i}", "context_unet.enc_blocks.{i}.combine_conv_context.module"),
    ("context_unet.downs.{i}", "context_unet.downsample_blocks.{i}.context_linear_layer.module"),
    ("context_unet.bottleneck", "context_unet.enc_blocks.{last}.context_conv.module"),
    ("context_unet.ups.{i}.merge", "context_unet.upsample_blocks.{i}.context_conv_layer.module"),
    ("context_unet.ups.{i}.block", "context_unet.dec_blocks.{i}.context_conv.module"),
    ("target_decoder.bottleneck.block", "target_decoder.enc_blocks.0.target_conv"),
    ("target_decoder.bottleneck.fuse", "target_decoder.enc_blocks.0.combine_conv_target.module"),
    ("target_decoder.merges.{i}", "target_decoder.upsample_blocks.{i}.target_conv_layer"),
    ("target_decoder.stages.{i}.block", "target_decoder.dec_blocks.{i}.target_conv"),
    ("target_decoder.stages.{i}.fuse", "target_decoder.dec_blocks.{i}.combine_conv_target.module"),
    ("target_decoder.output", "target_decoder.output_block.block.0"),
    ("target_decoder.head", "target_decoder.output_block.block.1"),
)
_RESIDUAL_CONV = re.compile(r"(convs|layers)\.(\d+)\.(weight|bias)")


def _prefixes(stages: int) -> Dict[str, str]:
    """:data:`RELEASED_NAMES` expanded for a network of ``stages`` stages."""
    table = {}
    for ours, released in RELEASED_NAMES:
        for i in range(stages - 1) if "{i}" in ours else [None]:
            table[ours.format(i=i)] = released.format(i=i, last=stages - 1)
    return table


def _rename(state: Dict[str, Tensor], table: Dict[str, str], to_released: bool):
    """``state`` with the prefixes of ``table`` (ours -> released) swapped; a residual block's
    ``convs.{j}`` <-> ``layers.{2j}``. Unknown keys are kept (``load_state_dict`` names them)."""
    prefixes = {v: k for k, v in table.items()} if not to_released else table
    out = {}
    for key, value in state.items():
        prefix, _, leaf = key.rpartition(".")
        rest = ""
        while prefix and prefix not in prefixes:  # the leaf may be 'convs.1.weight'
            prefix, _, part = prefix.rpartition(".")
            rest = f"{part}.{rest}"
        if not prefix:
            out[key] = value
            continue
        leaf = rest + leaf
        conv = _RESIDUAL_CONV.fullmatch(leaf)
        if conv:
            index = int(conv.group(2)) * 2 if to_released else int(conv.group(2)) // 2
            leaf = f"{'layers' if to_released else 'convs'}.{index}.{conv.group(3)}"
        out[f"{prefixes[prefix]}.{leaf}"] = value
    return out


def to_released_names(state: Dict[str, Tensor], config: NetworkConfig) -> Dict[str, Tensor]:
    """A :class:`Neuroverse3D` ``state_dict`` under the released checkpoint's key names."""
    return _rename(state, _prefixes(config.stages), to_released=True)


def is_released_naming(state: Dict[str, Tensor]) -> bool:
    return "target_encoder.target_embedding.weight" in state


def from_released_names(state: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """Released key names -> :class:`Neuroverse3D` parameter names (other names pass)."""
    if not is_released_naming(state):
        return state
    stages = 1 + sum(1 for key in state if re.fullmatch(
        r"target_encoder\.downsample_blocks\.\d+\.target_linear_layer\.weight", key))
    return _rename(state, _prefixes(stages), to_released=False)


def infer_config(state: Dict[str, Tensor]) -> NetworkConfig:
    """Architecture from tensor shapes (our parameter names): stage channels and convs per
    residual block."""
    channels = []
    while f"target_encoder.blocks.{len(channels)}.convs.0.weight" in state:
        channels.append(state[f"target_encoder.blocks.{len(channels)}.convs.0.weight"].shape[0])
    bottleneck = state.get("target_decoder.bottleneck.block.convs.0.weight")
    if not channels or bottleneck is None:
        raise CheckpointError("the weights do not look like a Neuroverse3D network")
    channels.append(bottleneck.shape[0])
    pattern = re.compile(r"target_encoder\.blocks\.0\.convs\.(\d+)\.weight")
    convs = sum(1 for key in state if pattern.fullmatch(key))
    return NetworkConfig(channels, convs)


def _config_from_hparams(hparams: dict, inferred: NetworkConfig) -> NetworkConfig:
    channels = hparams.get("nb_inner_channels")
    convs = hparams.get("nb_conv_layers_per_stage")
    if channels is None or convs is None:
        return inferred
    declared = NetworkConfig(channels, convs)
    if declared != inferred:
        raise CheckpointError(
            f"hyper_parameters declare {declared} but the tensors have {inferred}"
        )
    return declared


# ------------------------------------------------------------------------- project format
def save_checkpoint(model: Neuroverse3D, path, grid: Optional[dict] = None,
                    provenance: Optional[dict] = None) -> Path:
    """Write ``model`` in the project's format (atomically: temporary file, then rename)."""
    path = Path(path)
    metadata = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "architecture": model.config.to_dict(),
        "grid": grid or getattr(model, "metadata", {}).get("grid") or RELEASED_GRID,
        "provenance": provenance or {},
    }
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous()
               for k, v in model.state_dict().items()}
    return _write_project(path, tensors, metadata)


def _write_project(path: Path, tensors: Dict[str, Tensor], metadata: dict) -> Path:
    from safetensors.torch import save_file

    write_atomic(path, lambda tmp: save_file(tensors, tmp, metadata={METADATA_KEY: json.dumps(metadata)}))
    return path


def record_precision_agreement(path, precision: str, record: dict) -> Path:
    """Write the measured agreement of ``precision`` with float32 into a project-format file's
    metadata (``precision_agreement``, replacing an earlier record of that precision); the
    tensors are written back unchanged. ``record``: ``dice_min`` (worst Dice of the masks),
    ``psnr_min_db`` (worst PSNR of generated images) and provenance; the Predictor's ``auto``
    precision honours it (``predictor.AGREEMENT_TARGETS``)."""
    path = Path(path)
    state, metadata = read_project(path)
    agreement = dict(metadata.get("precision_agreement") or {}, **{precision: dict(record)})
    return _write_project(path, state, dict(metadata, precision_agreement=agreement))


def read_project(path) -> Tuple[Dict[str, Tensor], dict]:
    """Read a project-format file -> (state_dict, metadata)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            header = handle.metadata() or {}
            state = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path}: not a readable safetensors file ({error})") from None
    if METADATA_KEY not in header:
        raise CheckpointError(f"{path}: safetensors file without Neuroverse3D metadata; "
                              f"write it with `neuroverse3d-convert` or save_checkpoint()")
    metadata = json.loads(header[METADATA_KEY])
    if metadata.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path}: format version {metadata['format_version']} is newer "
                              f"than this software supports ({FORMAT_VERSION}); upgrade neuroverse3d")
    return state, metadata


def is_project_file(path) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(9)
    # safetensors starts with a little-endian u64 header size, then '{'
    return len(head) == 9 and head[8:9] == b"{"


def load_checkpoint(path, map_location="cpu") -> Neuroverse3D:
    """Build a ready (eval-mode) model from a released ``.ckpt`` or a project ``.safetensors``.

    The model carries ``model.metadata``: architecture, grid, provenance, source file and sha256.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(f"{path}: model file not found; pass an existing checkpoint "
                                      "with --model")
    if is_project_file(path):
        state, metadata = read_project(path)
        state = from_released_names(state)
        config = infer_config(state)
        declared = NetworkConfig(**metadata.get("architecture", {}))
        if declared != config:
            raise CheckpointError(f"{path}: metadata declares {declared} but tensors have {config}")
    else:
        state, provenance = read_released(path)
        state = from_released_names(state)
        config = _config_from_hparams(provenance["hyper_parameters"], infer_config(state))
        metadata = {"format": "lightning", "architecture": config.to_dict(),
                    "grid": RELEASED_GRID, "provenance": provenance}
    with torch.device("meta"):  # no random initialisation (0.6 s): every tensor is read
        model = Neuroverse3D(config.channels, config.convs_per_block)
    try:
        model.load_state_dict({k: v.float() if v.is_floating_point() else v
                               for k, v in state.items()}, strict=True, assign=True)
    except RuntimeError as error:
        raise CheckpointError(f"{path}: weights do not fit the network ({error})") from None
    metadata = dict(metadata, source=str(path), sha256=file_sha256(path))
    model.metadata = metadata
    return model.to(map_location).eval()


def convert_released(source, destination, grid: Optional[dict] = None) -> Path:
    """Convert a released Lightning checkpoint into the project's format."""
    model = load_checkpoint(source)
    provenance = dict(model.metadata["provenance"], converted_from=Path(source).name,
                      source_sha256=model.metadata["sha256"])
    return save_checkpoint(model, destination, grid=grid or RELEASED_GRID, provenance=provenance)
