"""The pieces of ``neuroverse3d-eval-heldout`` (:mod:`.heldout`): the eleven structures, one
contrast per (target, contrast) shared by the target and its contexts, images synthesised from
label maps, the round trip native 1 mm <-> model grid, Dice, and joint label fusion.

Arrays are numpy ``[X, Y, Z]`` in the voxel order of their NIfTI file; world coordinates and
transforms follow :mod:`..workflows.geometry` (nibabel's RAS affine, ANTs ``.mat`` files in
ANTs' resampling convention). Intensities are arbitrary until normalised with the project's one
normaliser (:func:`..model.intensity.normalise_intensity`).
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import nibabel as nb
import numpy as np
import torch

from ..anatomy.labelmaps import block_majority
from ..anatomy.synth import subject_seed
from ..model.training.labelmap_synthesis import (EXTRACEREBRAL_MIN, LABEL_NAMES,
                                                 LabelmapConfig, bias_field, draw_protocol,
                                                 generation_class, named_structures)
from ..workflows.geometry import INTERPOLATIONS, to_ants

#: the eleven scored structures (FreeSurfer names of ``structures.json``; codes from
#: :func:`named_structures`: e.g. Lateral-Ventricle = 4, 43; Brain-Stem = 16)
STRUCTURE_NAMES = ("Cerebral-Cortex", "Cerebral-White-Matter", "Lateral-Ventricle", "Thalamus",
                   "Caudate", "Putamen", "Pallidum", "Hippocampus", "Amygdala", "Brain-Stem",
                   "Cerebellum-Cortex")
CONTRAST_MODES = ("t1", "t2", "random")
CONTRAST_TITLES = {"t1": "T1-like", "t2": "T2-like", "random": "random"}

# SynthSeg's T1 priors (github.com/BBillot/SynthSeg, Apache-2.0: data/labels_classes_priors/
# generation_labels.npy, generation_classes_contrast_specific.npy, prior_means_t1.npy,
# prior_stds_t1.npy), intensities 0..255. Per class: the mean ~ N(mu, sigma), the within-label
# std ~ N(mu, sigma), both clipped at 0.
SYNTHSEG_T1_CLASS = {
    0: 0, 2: 2, 3: 3, 4: 1, 5: 1, 7: 4, 8: 5, 10: 6, 11: 3, 12: 7, 13: 8, 14: 1, 15: 1, 16: 13,
    17: 3, 18: 3, 24: 1, 25: 10, 26: 3, 28: 9, 30: 11, 41: 2, 42: 3, 43: 1, 44: 1, 46: 4, 47: 5,
    49: 6, 50: 3, 51: 7, 52: 8, 53: 3, 54: 3, 57: 10, 58: 3, 60: 9, 62: 11, 72: 1, 85: 2,
    136: 12, 137: 12, 163: 12, 164: 12, 502: 14, 506: 15, 507: 16, 508: 17, 509: 18, 511: 19,
    512: 20, 514: 21, 515: 22, 516: 23, 530: 24}
#: class -> (mean mu, mean sigma, std mu, std sigma)
SYNTHSEG_T1_PRIORS = (
    (7.0, 1.8, 5.0, 2.5), (44.4, 11.2, 25.6, 9.8), (160.3, 21.7, 15.6, 5.5),
    (96.3, 12.2, 18.9, 6.3), (136.0, 13.4, 15.3, 5.7), (88.2, 10.6, 17.1, 5.5),
    (129.5, 17.7, 19.6, 7.8), (124.1, 15.7, 13.8, 7.1), (151.8, 19.5, 8.6, 4.1),
    (142.5, 16.1, 21.1, 7.0), (116.1, 14.8, 19.5, 7.2), (86.8, 17.5, 17.2, 8.5),
    (59.6, 10.4, 23.7, 11.1), (129.8, 12.2, 17.5, 6.8), (126.4, 24.8, 84.0, 49.4),
    (18.1, 3.8, 13.9, 7.4), (93.9, 9.1, 48.6, 12.6), (117.1, 11.7, 64.8, 28.5),
    (69.9, 9.2, 25.5, 13.1), (113.7, 12.4, 74.9, 20.5), (68.2, 11.1, 35.9, 18.4),
    (48.4, 8.6, 19.9, 9.0), (30.2, 6.9, 22.0, 11.6), (94.2, 18.3, 43.3, 20.1),
    (144.5, 16.3, 44.7, 26.2))
#: acquisition shared by every image of a contrast draw: multiplicative Legendre bias field
#: (coefficients ~ U(-BIAS, BIAS)) and Gaussian noise (NOISE x the image maximum); no
#: deformation, blur, gamma or thick slices, so every method sees the same clean anatomy
BIAS, NOISE = 0.1, 0.02


def structures() -> Dict[str, List[int]]:
    """``{name: FreeSurfer codes}`` of the eleven structures, in table order."""
    named = named_structures()
    return {name: named[name] for name in STRUCTURE_NAMES}


@dataclass
class Contrast:
    """One contrast: mean and within-label std per FreeSurfer code (intensity units of the
    mode; only their ratios matter after normalisation), shared by a target and its contexts."""

    mode: str
    seed: int
    means: Dict[int, float]
    stds: Dict[int, float]
    bias: float = BIAS
    noise: float = NOISE

    def lookup(self, code: int) -> Tuple[float, float]:
        """(mean, std) of ``code``; a code outside the drawn table gets a uniform mean, drawn
        from (seed, code) so that it is the same wherever it appears."""
        code = int(code)
        if code not in self.means:
            g = torch.Generator().manual_seed(subject_seed(self.seed, "extra-code", code))
            scale = max(self.means.values())
            self.means[code] = float(torch.rand((), generator=g)) * scale
            self.stds[code] = float(torch.rand((), generator=g)) * 0.1 * scale
        return self.means[code], self.stds[code]

    def to_dict(self) -> dict:
        record = asdict(self)
        record["means"] = {str(k): round(v, 4) for k, v in sorted(self.means.items())}
        record["stds"] = {str(k): round(v, 4) for k, v in sorted(self.stds.items())}
        return record


def draw_contrast(mode: str, seed: int) -> Contrast:
    """A contrast of ``mode`` for every known code (LABEL_NAMES, SynthSeg's table, background).

    ``t1``: SynthSeg's T1 priors (codes outside its table: the training's ``t1`` priors);
    ``t2``: the training's ``t2`` priors (CSF bright, GM > WM), jittered; ``random``: the
    training's random draw (uniform means). The table does not depend on the data, so the same
    seed gives the same contrast for every target.
    """
    if mode not in CONTRAST_MODES:
        raise ValueError(f"unknown contrast {mode!r}; choose from {', '.join(CONTRAST_MODES)}")
    codes = sorted({0, *LABEL_NAMES, *SYNTHSEG_T1_CLASS})
    g = torch.Generator().manual_seed(seed)
    protocol = draw_protocol(codes, g, LabelmapConfig(), mode)
    means = {c: protocol.means[generation_class(c)] for c in codes}
    stds = {c: protocol.stds[generation_class(c)] for c in codes}
    if mode == "t1":
        drawn = [(max(0.0, mu + sd * float(torch.randn((), generator=g))),
                  max(0.0, smu + ssd * float(torch.randn((), generator=g))))
                 for mu, sd, smu, ssd in SYNTHSEG_T1_PRIORS]
        for code, cls in SYNTHSEG_T1_CLASS.items():
            means[code], stds[code] = drawn[cls][0] / 255, drawn[cls][1] / 255
    return Contrast(mode, int(seed), means, stds)


def synthesize(labels: np.ndarray, contrast: Contrast, seed: int) -> np.ndarray:
    """An image (float32, same shape) of an int label map: Gaussian intensities per label,
    the contrast's bias field and noise, drawn from ``seed`` (deterministic)."""
    g = torch.Generator().manual_seed(seed)
    codes = np.unique(labels)
    if codes.min() < 0:
        raise ValueError("label maps must not hold negative codes")
    lut = np.zeros((2, int(codes.max()) + 1), np.float32)
    for code in codes:
        lut[:, code] = contrast.lookup(code)
    index = torch.from_numpy(labels.astype(np.int64))
    table = torch.from_numpy(lut)
    image = table[0][index] + table[1][index] * torch.randn(labels.shape, generator=g)
    image = image.clamp_min(0)
    if contrast.bias > 0:
        image = image * bias_field(labels.shape, g, 3, contrast.bias)
    if contrast.noise > 0:
        image = image + contrast.noise * float(image.max()) * torch.randn(labels.shape,
                                                                           generator=g)
    return image.clamp_min(0).numpy().astype(np.float32)


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean arrays; NaN when both are empty."""
    total = int(np.count_nonzero(pred)) + int(np.count_nonzero(truth))
    return float("nan") if total == 0 else 2.0 * np.count_nonzero(pred & truth) / total


def warp(data: np.ndarray, source: nb.Nifti1Image, reference: nb.Nifti1Image,
         transform: Optional[Path], interpolation: str = "linear",
         invert: bool = False) -> np.ndarray:
    """``data`` (on ``source``'s grid) resampled onto ``reference``'s grid through an ANTs
    ``.mat`` (``None``: identity), as :func:`..workflows.geometry.resample` does, in memory.
    Returns float32 ``reference.shape``; points outside ``source`` get 0."""
    import ants

    moving = to_ants(source, np.asarray(data, np.float32))
    fixed = to_ants(reference, np.zeros(reference.shape[:3], np.float32))
    if transform is None:
        out = ants.resample_image_to_target(moving, fixed,
                                            interp_type=INTERPOLATIONS[interpolation])
    else:
        out = ants.apply_transforms(fixed=fixed, moving=moving, transformlist=[str(transform)],
                                    interpolator=INTERPOLATIONS[interpolation],
                                    whichtoinvert=[bool(invert)])
    return out.numpy().astype(np.float32)


def to_native(maps: np.ndarray, grid: nb.Nifti1Image, native: nb.Nifti1Image,
              inverse: Optional[Path]) -> np.ndarray:
    """Grid maps ``[K, *grid]`` (probabilities or {0, 1}) -> native masks ``[K, *native]``
    (bool): linear interpolation through the inverse transform, then > 0.5."""
    return np.stack([warp(m, grid, native, inverse, "linear") > 0.5 for m in maps])


# ------------------------------------------------------------------ joint label fusion
@dataclass
class JLFConfig:
    """Joint label fusion at ``voxel_mm`` (block means / block majority of the 1 mm maps, each
    cropped to its head's bounding box + ``margin_mm``); ``ants.registration`` of type
    ``transform`` (``SyN``: antspyx's fixed affine stage, 2100x1200x1200x0 at shrink 4x2x2x1,
    then SyN; ``SyNOnly``: SyN from the template affines alone) with ``reg_iterations`` per
    SyN level; ``ants.joint_label_fusion`` with beta, patch radius and search radius."""

    voxel_mm: float = 2.0
    margin_mm: float = 8.0
    transform: str = "SyN"
    reg_iterations: Tuple[int, ...] = (40, 20, 0)
    beta: float = 4.0
    rad: int = 2
    r_search: int = 3


def head_box(labels: np.ndarray, affine: np.ndarray, margin_mm: float, factor: int):
    """Voxel index box ``(low[3], high[3])`` of the nonzero labels (the head) + margin, its
    size a multiple of ``factor`` (may reach outside the volume: padded with 0)."""
    nonzero = np.argwhere(labels > 0)
    if nonzero.size == 0:
        raise ValueError("empty label map")
    zooms = np.linalg.norm(affine[:3, :3], axis=0)
    margin = np.ceil(margin_mm / zooms).astype(int)
    low = nonzero.min(0) - margin
    size = nonzero.max(0) + 1 + margin - low
    return low, low + (-(-size // factor)) * factor


def _crop(data: np.ndarray, low, high) -> np.ndarray:
    out = np.zeros(tuple(high - low), data.dtype)
    src_lo, src_hi = np.maximum(low, 0), np.minimum(high, data.shape)
    out[tuple(slice(a - l, b - l) for a, b, l in zip(src_lo, src_hi, low))] = \
        data[tuple(slice(a, b) for a, b in zip(src_lo, src_hi))]
    return out


def box_affine(affine: np.ndarray, low, factor: int) -> np.ndarray:
    """The affine of a box starting at voxel ``low`` with ``factor``-times larger voxels
    (centre of each block)."""
    shift = np.eye(4)
    shift[:3, 3] = np.asarray(low, float) + (factor - 1) / 2.0
    scale = np.diag([factor, factor, factor, 1.0])
    return affine @ shift @ scale


def coarse(image: np.ndarray, labels: np.ndarray, affine: np.ndarray, cfg: JLFConfig,
           box=None):
    """(image, labels) as ANTs images at about ``cfg.voxel_mm``, cropped to ``box`` (default:
    the head box of ``labels``): block means and block majority of ``factor^3`` voxels.
    Returns (image, labels, box, factor)."""
    zooms = np.linalg.norm(affine[:3, :3], axis=0)
    factor = max(1, int(round(cfg.voxel_mm / float(zooms.mean()))))
    low, high = box if box is not None else head_box(labels, affine, cfg.margin_mm, factor)
    header = nb.Nifti1Image(np.zeros((1, 1, 1), np.uint8), box_affine(affine, low, factor))
    img = _crop(image.astype(np.float32), low, high)
    shape = [n // factor for n in img.shape]
    small = img.reshape(shape[0], factor, shape[1], factor, shape[2], factor).mean((1, 3, 5))
    lab = block_majority(_crop(labels.astype(np.int16), low, high), factor)
    return to_ants(header, small), to_ants(header, lab.astype(np.float32)), (low, high), factor


@dataclass
class Registered:
    """A context warped onto the target's coarse grid (ANTs images) and the SyN seconds."""

    image: object
    labels: object
    seconds: float


def initial_transform(target_forward: Optional[Path], context_forward: Optional[Path],
                      path: Path) -> str:
    """Write an ITK affine ``.mat`` mapping target-native points to context-native points
    through the template (context forward after the inverse of the target's forward; None:
    identity), the start of the registration; returns its path."""
    import ants

    from ..workflows.geometry import transform_to_ras_affine

    ras = [np.eye(4) if t is None else transform_to_ras_affine(t)
           for t in (target_forward, context_forward)]
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    lps = flip @ ras[1] @ np.linalg.inv(ras[0]) @ flip
    transform = ants.create_ants_transform(transform_type="AffineTransform", precision="double",
                                           dimension=3, matrix=lps[:3, :3],
                                           translation=lps[:3, 3], center=[0.0, 0.0, 0.0])
    ants.write_transform(transform, str(path))
    return str(path)


def register_context(target_small, image: np.ndarray, labels: np.ndarray, affine: np.ndarray,
                     cfg: JLFConfig, seed: int, target_forward: Optional[Path] = None,
                     context_forward: Optional[Path] = None) -> Registered:
    """SyN (``cfg.transform``; ``ants.registration``) of a native context image to the
    coarse target, started from the two maps' affines to the template (see
    :func:`initial_transform`); its labels follow (``genericLabel``). Timed from the coarse
    context on."""
    import ants

    from ..workflows.geometry import ants_seed

    start = time.perf_counter()
    moving, moving_labels, _, _ = coarse(image, labels, affine, cfg)
    with tempfile.TemporaryDirectory(prefix="neuroverse3d-jlf-") as work, ants_seed(seed):
        init = initial_transform(target_forward, context_forward, Path(work) / "init.mat")
        reg = ants.registration(fixed=target_small, moving=moving,
                                type_of_transform=cfg.transform, initial_transform=[init],
                                reg_iterations=tuple(cfg.reg_iterations),
                                outprefix=str(Path(work) / "syn_"))
        warped = ants.apply_transforms(fixed=target_small, moving=moving_labels,
                                       transformlist=reg["fwdtransforms"],
                                       interpolator="genericLabel")
    return Registered(reg["warpedmovout"], warped, time.perf_counter() - start)


def fuse(target_small, registered: Sequence[Registered], box, factor: int,
         native: nb.Nifti1Image, cfg: JLFConfig) -> np.ndarray:
    """Joint label fusion of the registered contexts on the coarse target, back to the native
    1 mm grid (nearest) -> int32 labels of ``native.shape``. Fusion runs inside the union of the
    warped contexts' brains (codes 1..499) dilated by 2 voxels, else 0; one context gives its
    warped labels."""
    import ants
    from scipy import ndimage

    if len(registered) == 1:  # one atlas: its warped labels (antspyx needs two or more)
        fused = registered[0].labels
    else:
        brain = np.any([(r.labels.numpy() > 0.5) & (r.labels.numpy() < EXTRACEREBRAL_MIN)
                        for r in registered], axis=0)
        mask = ndimage.binary_dilation(brain, iterations=2).astype(np.float32)
        mask = target_small.new_image_like(mask)
        with tempfile.TemporaryDirectory(prefix="neuroverse3d-jlf-") as work:
            fused = ants.joint_label_fusion(
                target_small, mask, [r.image for r in registered],
                label_list=[r.labels.clone() for r in registered], beta=cfg.beta, rad=cfg.rad,
                r_search=cfg.r_search, max_lab_plus_one=True,  # background is a label too
                output_prefix=str(Path(work) / "jlf_"))["segmentation"]
    low, high = box
    fine = nb.Nifti1Image(np.zeros((1, 1, 1), np.uint8), box_affine(native.affine, low, 1))
    fine_ants = to_ants(fine, np.zeros(tuple(high - low), np.float32))
    labels = ants.resample_image_to_target(fused, fine_ants, interp_type="nearestNeighbor")
    labels = np.rint(labels.numpy()).astype(np.int32)
    out = np.zeros(native.shape[:3], np.int32)
    src_lo, src_hi = np.maximum(low, 0), np.minimum(high, native.shape[:3])
    out[tuple(slice(a, b) for a, b in zip(src_lo, src_hi))] = \
        labels[tuple(slice(a - l, b - l) for a, b, l in zip(src_lo, src_hi, low))]
    return out


# -------------------------------------------------------------------------------- tables
