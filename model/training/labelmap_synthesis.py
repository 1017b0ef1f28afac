"""SynthSeg-style episodes from label maps: new images, in a new contrast, every episode.

A label-map dataset (manifest ``"kind": "labelmap"``) holds one integer label map per person
(FreeSurfer codes, on the training grid) and no image: every episode draws its images afresh.

* **Protocol** (:func:`draw_protocol`, shared by the target and its contexts, like one MRI
  protocol): a contrast, i.e. a Gaussian (mean, std) per generation class, drawn from the priors
  of a mode chosen by weight (``t1``, ``t2``, ``pd``: tissue-ordered means of that weighting,
  jittered; ``random``: uniform means, SynthSeg's way); gamma; partial-volume blur; thick slices
  along one axis (resolution); the noise level; the bias-field strength.
* **Per subject** (:func:`deform_labels`, :func:`synthesize`): a random pose and smooth
  deformation of its label map (nearest), Gaussian sampling per label, bias field, blur and
  thick-slice resampling, noise, the one normaliser, gamma.

Segmentation episodes show a tissue class, one structure (bilateral or one side) or a merge of
structures (:func:`choose_segmentation`); every other task takes the synthesised image as its
clean image (drawn without bias field and noise, so restoration targets stay clean), and
modality transform maps one contrast draw to a second one of the same anatomy. Everything comes
from the episode's ``torch.Generator``: the same seed gives the same episode. Lengths are in
grid voxels; intensities in [0, 1].
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..intensity import normalise_intensity
from .augment import (centred_affine_coords, identity_coords, random_smooth_deformation,
                      rotation_matrix, warp)
from ..degradations import bias_field, uniform
from .synthesis import SEGMENTATION, make_pair

# ------------------------------------------------------------------------- label table
#: bilateral structures: name -> (left code, right code, generation class)
BILATERAL = {
    "Cerebral-White-Matter": (2, 41, "wm"), "Cerebral-Cortex": (3, 42, "cortex"),
    "Lateral-Ventricle": (4, 43, "csf"), "Inf-Lat-Vent": (5, 44, "csf"),
    "Cerebellum-White-Matter": (7, 46, "wm"), "Cerebellum-Cortex": (8, 47, "cerebellum-cortex"),
    "Thalamus": (10, 49, "thalamus"), "Caudate": (11, 50, "caudate"),
    "Putamen": (12, 51, "putamen"), "Pallidum": (13, 52, "pallidum"),
    "Hippocampus": (17, 53, "hippocampus"), "Amygdala": (18, 54, "amygdala"),
    "Lesion": (25, 57, "lesion"), "Accumbens-area": (26, 58, "accumbens"),
    "VentralDC": (28, 60, "ventral-dc"), "vessel": (30, 62, "vessel"),
    "choroid-plexus": (31, 63, "choroid"),
    # SynthSeg's maps split the ventricles; scored as lateral / inferior lateral ventricle
    "Lateral-Ventricle-b": (136, 163, "ventricle-b"), "Inf-Lat-Vent-b": (137, 164, "ventricle-b"),
}
#: midline structures: name -> (code, generation class)
MIDLINE = {"3rd-Ventricle": (14, "csf"), "4th-Ventricle": (15, "csf"), "Brain-Stem": (16, "brainstem"),
           "CSF": (24, "csf"), "5th-Ventricle": (72, "csf"), "Optic-Chiasm": (85, "wm")}
#: code -> name (FreeSurfer spelling; extra-cerebral codes >= 500 are ``extracerebral-<code>``)
LABEL_NAMES: Dict[int, str] = {**{l: f"Left-{n}" for n, (l, _, _) in BILATERAL.items()},
                               **{r: f"Right-{n}" for n, (_, r, _) in BILATERAL.items()},
                               **{c: n for n, (c, _) in MIDLINE.items()}}
_CLASS: Dict[int, str] = {**{l: k for l, _, k in BILATERAL.values()},
                          **{r: k for _, r, k in BILATERAL.values()},
                          **{c: k for c, k in MIDLINE.values()}}
EXTRACEREBRAL_MIN = 500  # SynthSeg's non-brain head tissues are 502..530


def generation_class(code: int) -> str:
    """The intensity class of a label: hemispheres share one, every unknown code has its own."""
    code = int(code)
    if code == 0:
        return "background"
    return _CLASS.get(code, f"label-{code}")


def _both(*names: str) -> List[int]:
    return sorted(c for n in names for c in BILATERAL[n][:2])


CORTEX = _both("Cerebral-Cortex")
CEREBRAL_WM = _both("Cerebral-White-Matter", "Lesion")
LATERAL_VENTRICLES = _both("Lateral-Ventricle", "Lateral-Ventricle-b")
VENTRICLES = sorted(LATERAL_VENTRICLES + _both("Inf-Lat-Vent", "Inf-Lat-Vent-b") + [14, 15, 72])
DEEP_GREY = _both("Thalamus", "Caudate", "Putamen", "Pallidum", "Accumbens-area", "VentralDC")
#: tissue classes (segmentation episodes and structures.json); "brain" = every code 1..499
TISSUES: Dict[str, List[int]] = {
    "cortex": CORTEX, "cerebral-white-matter": CEREBRAL_WM,
    "white-matter": sorted(CEREBRAL_WM + _both("Cerebellum-White-Matter") + [16, 85]),
    "grey-matter": sorted(CORTEX + DEEP_GREY + _both("Cerebellum-Cortex", "Hippocampus",
                                                     "Amygdala")),
    "deep-grey": DEEP_GREY, "lateral-ventricles": LATERAL_VENTRICLES, "ventricles": VENTRICLES,
    "csf": sorted(VENTRICLES + [24] + _both("choroid-plexus")),
    "cerebellum": _both("Cerebellum-White-Matter", "Cerebellum-Cortex"),
    "left-hemisphere": sorted(l for l, _, _ in BILATERAL.values()),
    "right-hemisphere": sorted(r for _, r, _ in BILATERAL.values()),
}


def is_brain(labels: Tensor) -> Tensor:
    """Brain mask (bool) of a label map: codes 1..499 (extra-cerebral tissue is >= 500)."""
    return (labels > 0) & (labels < EXTRACEREBRAL_MIN)


def named_structures() -> Dict[str, List[int]]:
    """Every named structure: tissues, brain, bilateral structures (e.g. ``Hippocampus``) and
    midline ones, as label lists (what ``structures.json`` of a label-map build holds)."""
    brain = sorted(set(LABEL_NAMES))
    named = {"brain": brain, **TISSUES}
    named.update({n: _both(n) for n in BILATERAL if not n.endswith("-b")})
    named.update({n: [c] for n, (c, _) in MIDLINE.items()})
    return named


# ---------------------------------------------------------------------- contrast priors
#: intensity priors per generation class: mode -> class -> mean in [0, 1]; classes without a
#: prior (extra-cerebral, unknown) draw a uniform mean. Tissue order, not measured values:
#: T1 WM > deep GM > GM > CSF; T2 CSF > GM > WM; PD low contrast, CSF brightest.
PRIORS: Dict[str, Dict[str, float]] = {
    "t1": {"background": 0.02, "wm": 0.80, "cortex": 0.48, "csf": 0.15, "ventricle-b": 0.25,
           "cerebellum-cortex": 0.50, "thalamus": 0.68, "caudate": 0.55, "putamen": 0.62,
           "pallidum": 0.72, "hippocampus": 0.47, "amygdala": 0.50, "accumbens": 0.55,
           "ventral-dc": 0.70, "brainstem": 0.70, "lesion": 0.45, "vessel": 0.40,
           "choroid": 0.35},
    "t2": {"background": 0.02, "wm": 0.30, "cortex": 0.52, "csf": 0.92, "ventricle-b": 0.75,
           "cerebellum-cortex": 0.50, "thalamus": 0.40, "caudate": 0.50, "putamen": 0.42,
           "pallidum": 0.30, "hippocampus": 0.56, "amygdala": 0.54, "accumbens": 0.50,
           "ventral-dc": 0.35, "brainstem": 0.35, "lesion": 0.70, "vessel": 0.25,
           "choroid": 0.60},
    "pd": {"background": 0.02, "wm": 0.55, "cortex": 0.68, "csf": 0.85, "ventricle-b": 0.80,
           "cerebellum-cortex": 0.68, "thalamus": 0.62, "caudate": 0.66, "putamen": 0.64,
           "pallidum": 0.58, "hippocampus": 0.70, "amygdala": 0.70, "accumbens": 0.66,
           "ventral-dc": 0.60, "brainstem": 0.58, "lesion": 0.75, "vessel": 0.40,
           "choroid": 0.70},
}
CONTRASTS = ("random",) + tuple(PRIORS)


@dataclass
class LabelmapConfig:
    """Ranges of every per-episode draw (lengths in grid voxels, intensities in [0, 1])."""

    contrast_weights: Dict[str, float] = field(default_factory=lambda: {
        "random": 0.5, "t1": 0.25, "t2": 0.15, "pd": 0.10})
    mean_jitter: float = 0.06                    # prior modes: mean ~ N(prior, jitter^2)
    std: Tuple[float, float] = (0.005, 0.06)     # prior modes: within-label std ~ U(std)
    random_std: Tuple[float, float] = (0.0, 0.12)  # random mode: within-label std ~ U
    scale: Tuple[float, float] = (0.9, 1.1)      # per-subject pose, per axis
    rotation_deg: float = 10.0
    deform_voxels: float = 2.0                   # smooth displacement, each component
    deform_points: int = 5
    blur: Tuple[float, float] = (0.0, 0.7)       # partial-volume Gaussian sigma per axis
    thick_prob: float = 0.4                      # thick slices along one random axis
    thickness: Tuple[float, float] = (1.5, 3.5)  # slice spacing (voxels) when thick
    log_gamma: float = 0.3                       # gamma = exp(N(0, log_gamma^2))
    bias_scale: Tuple[float, float] = (0.0, 0.4)
    noise_std: Tuple[float, float] = (0.0, 0.05)
    tissue_prob: float = 0.4                     # segmentation: a tissue class
    structure_prob: float = 0.35                 # one structure (else: a merge)
    max_merge: int = 5                           # merges: 2..max_merge structures
    min_voxels: int = 8                          # labels smaller than this are not shown alone


@dataclass
class Protocol:
    """One contrast and acquisition, shared by every member of an episode."""

    mode: str
    means: Dict[str, float]
    stds: Dict[str, float]
    gamma: float
    blur: List[float]                 # Gaussian sigma per axis (voxels)
    thick_axis: Optional[int]
    thickness: float                  # slice spacing along thick_axis (voxels)
    noise_std: float
    bias_scale: float


def _choice(generator: torch.Generator, n: int) -> int:
    return int(torch.randint(n, (1,), generator=generator))


def draw_protocol(codes: Sequence[int], generator: torch.Generator, cfg: LabelmapConfig,
                  mode: Optional[str] = None) -> Protocol:
    """A protocol for the label ``codes`` of an episode (``mode`` forces a contrast mode)."""
    names = sorted(cfg.contrast_weights)
    weights = torch.tensor([float(cfg.contrast_weights[n]) for n in names], dtype=torch.float64)
    drawn = names[int(torch.multinomial(weights, 1, generator=generator))]
    mode = mode or drawn
    if mode not in CONTRASTS:
        raise ValueError(f"unknown contrast {mode!r}; choose from {', '.join(CONTRASTS)}")
    prior = PRIORS.get(mode, {})
    means, stds = {}, {}
    for name in sorted({generation_class(c) for c in codes}):
        if name in prior:
            jitter = cfg.mean_jitter * float(torch.randn((), generator=generator))
            means[name] = min(max(prior[name] + jitter, 0.0), 1.0)
            stds[name] = uniform(generator, *cfg.std)
        else:  # random mode, and classes without a prior (extra-cerebral, unknown codes)
            means[name] = uniform(generator, 0.0, 1.0)
            stds[name] = uniform(generator, *cfg.random_std)
    gamma = math.exp(cfg.log_gamma * float(torch.randn((), generator=generator)))
    blur = [uniform(generator, *cfg.blur) for _ in range(3)]
    thick_axis, thickness = None, 1.0
    if torch.rand((), generator=generator) < cfg.thick_prob:
        thick_axis, thickness = _choice(generator, 3), uniform(generator, *cfg.thickness)
    return Protocol(mode, means, stds, gamma, blur, thick_axis, thickness,
                    uniform(generator, *cfg.noise_std), uniform(generator, *cfg.bias_scale))


# ------------------------------------------------------------------------- per subject
def deform_labels(labels: Tensor, generator: torch.Generator, cfg: LabelmapConfig) -> Tensor:
    """A random pose (scale, rotation about the centre) plus a smooth displacement of an int
    label map ``[D, H, W]``, nearest neighbour; same dtype and shape."""
    shape = labels.shape
    scale = torch.diag(torch.tensor([uniform(generator, *cfg.scale) for _ in range(3)]))
    angles = [math.radians(uniform(generator, -cfg.rotation_deg, cfg.rotation_deg)) for _ in range(3)]
    moved = centred_affine_coords(shape, rotation_matrix(angles) @ scale)
    smooth = random_smooth_deformation(shape, generator, cfg.deform_voxels, cfg.deform_points)
    out = warp(labels.float(), moved - identity_coords(shape) + smooth, "nearest")
    return out.round().to(labels.dtype)


def gaussian_blur(volume: Tensor, sigmas: Sequence[float]) -> Tensor:
    """Separable Gaussian blur of ``[D, H, W]`` with one sigma (voxels) per axis; edges replicate."""
    x = volume[None, None]
    for axis, sigma in enumerate(sigmas):
        if sigma < 0.1:
            continue
        radius = max(1, int(math.ceil(3 * sigma)))
        taps = torch.arange(-radius, radius + 1, dtype=volume.dtype)
        kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = kernel.numel()
        pad = [0] * 6
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius
        x = F.conv3d(F.pad(x, pad, mode="replicate"), (kernel / kernel.sum()).view(shape))
    return x[0, 0]


def thick_slices(volume: Tensor, axis: int, thickness: float) -> Tensor:
    """Acquire ``[D, H, W]`` with slices ``thickness`` voxels apart along ``axis`` (slab blur,
    subsampling) and interpolate back linearly: the look of a thick-slice scan."""
    sigmas = [0.0, 0.0, 0.0]
    sigmas[axis] = 0.42 * thickness  # a slab of that thickness, as a Gaussian
    blurred = gaussian_blur(volume, sigmas)
    low = list(volume.shape)
    low[axis] = max(2, int(round(volume.shape[axis] / thickness)))
    small = F.interpolate(blurred[None, None], size=low, mode="trilinear", align_corners=True)
    return F.interpolate(small, size=tuple(volume.shape), mode="trilinear", align_corners=True)[0, 0]


def synthesize(labels: Tensor, protocol: Protocol, generator: torch.Generator,
               clean: bool = False) -> Tensor:
    """An image ``[D, H, W]`` float32 in [0, 1] of ``labels`` under ``protocol``.

    ``clean``: without bias field and noise (the clean image of restoration tasks).
    """
    codes = torch.unique(labels).tolist()
    lut_mean = torch.zeros(int(max(codes)) + 1)
    lut_std = torch.zeros_like(lut_mean)
    for code in codes:
        name = generation_class(code)
        lut_mean[code], lut_std[code] = protocol.means[name], protocol.stds[name]
    index = labels.long()
    image = lut_mean[index] + lut_std[index] * torch.randn(labels.shape, generator=generator)
    image = image.clamp_min(0)
    if not clean and protocol.bias_scale > 0:
        image = image * bias_field(labels.shape, generator, 3, protocol.bias_scale)
    image = gaussian_blur(image, protocol.blur)
    if protocol.thick_axis is not None:
        image = thick_slices(image, protocol.thick_axis, protocol.thickness)
    if not clean and protocol.noise_std > 0:
        scale = float(image.max()) or 1.0
        image = image + protocol.noise_std * scale * torch.randn(labels.shape, generator=generator)
    image = torch.from_numpy(normalise_intensity(image.clamp_min(0).numpy()))
    return image.pow(protocol.gamma)


# ---------------------------------------------------------------------------- episodes
def choose_segmentation(labels: Tensor, generator: torch.Generator,
                        cfg: LabelmapConfig) -> Tuple[str, List[int]]:
    """(name, label codes) of a segmentation episode among the codes present in ``labels``:
    a tissue class (``tissue_prob``), one structure, bilateral or one side
    (``structure_prob``), else a merge of 2..``max_merge`` structures (``a+b+c``). Labels of
    fewer than ``min_voxels`` voxels (vessels, lesions on a coarse grid) are not candidates."""
    codes, counts = torch.unique(labels, return_counts=True)
    present = {int(c) for c, n in zip(codes, counts) if n >= cfg.min_voxels} - {0}
    if not present:
        return "none", []
    u = float(torch.rand((), generator=generator))
    if u < cfg.tissue_prob:
        tissues = [(n, sorted(present.intersection(v))) for n, v in TISSUES.items()]
        tissues = [t for t in tissues if t[1]] + [("brain", sorted(c for c in present
                                                                    if c < EXTRACEREBRAL_MIN))]
        tissues = [t for t in tissues if t[1]]
        if tissues:
            return tissues[_choice(generator, len(tissues))]
    units = [(n, sorted(present.intersection(_both(n)))) for n in BILATERAL]
    units = [unit for unit in units if unit[1]] + [(LABEL_NAMES.get(c, f"label-{c}"), [c])
                                                   for c in sorted(present)]
    if u < cfg.tissue_prob + cfg.structure_prob:
        return units[_choice(generator, len(units))]
    count = 2 + _choice(generator, max(1, min(cfg.max_merge, len(units)) - 1))
    order = torch.randperm(len(units), generator=generator)[:count].tolist()
    picked = [units[i] for i in sorted(order)]
    return "+".join(n for n, _ in picked), sorted({c for _, v in picked for c in v})


def labelmap_episode(task: str, label_maps: Sequence[Tensor], generator: torch.Generator,
                     cfg: Optional[LabelmapConfig] = None, synthesis=None,
                     overlay: Sequence[str] = (), contrast: Optional[str] = None
                     ) -> Tuple[Tensor, Tensor, List[int], Protocol]:
    """Inputs and outputs ``[N, D, H, W]`` of one episode from N people's label maps.

    Returns (inputs, outputs, segmentation codes, protocol). One protocol serves every member;
    each member gets its own deformation, texture, bias field and noise. ``synthesis``: the
    :class:`SynthesisConfig` of the task degradations; ``overlay``: extra degradations.
    """
    cfg = cfg or LabelmapConfig()
    codes = sorted({int(c) for labels in label_maps for c in torch.unique(labels)})
    protocol = draw_protocol(codes, generator, cfg, contrast)
    second = draw_protocol(codes, generator, cfg) if task == "modality-transform" else None
    warped = [deform_labels(labels, generator, cfg) for labels in label_maps]
    classes: List[int] = []
    if task == SEGMENTATION:
        classes = choose_segmentation(warped[0], generator, cfg)[1]
    inputs, outputs = [], []
    for labels in warped:
        clean = task not in (SEGMENTATION, "skull-stripping")
        volumes = {"image": synthesize(labels, protocol, generator, clean)}
        if task == SEGMENTATION:
            volumes["label"] = torch.isin(labels, torch.tensor(classes, dtype=labels.dtype))
        elif task == "skull-stripping":
            volumes["brain_mask"] = is_brain(labels)
        elif task == "modality-transform":
            volumes["paired"] = synthesize(labels, second, generator, clean=True)
        source, target = make_pair(task, volumes, generator, overlay, synthesis)
        inputs.append(source)
        outputs.append(target)
    return torch.stack(inputs), torch.stack(outputs), classes, protocol
