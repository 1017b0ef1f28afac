"""Geometry: the model grid, affine registration to a template and THE one resampler.

World coordinates are RAS millimetres as nibabel reads them (``img.affine``); images are handed
to ANTs (which works in LPS) through :func:`to_ants`, so nibabel's reading of a header is the
only one used. Transforms are ANTs/ITK affine ``.mat`` files in ANTs' resampling convention: the
forward transform (``from-<moving>_to-<fixed>``) resamples a moving-space image onto a
fixed-space grid; the inverse file brings fixed-space images back.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

import nibabel as nb
import numpy as np

from .errors import BadInputError, MissingInputError
from .niftiio import load_volume, write_nifti_atomic
from .templates import write_atomic

# ITK's Mattes mutual information sums its per-thread histograms in whatever order threads
# finish, so multi-threaded registrations differ from run to run. ITK reads this variable once,
# at its first use in a process: set it before any ANTs call (a user's own value wins, at the
# price of bit-reproducibility).
os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")

INTERPOLATIONS = {"linear": "linear", "nearest": "nearestNeighbor"}
_LPS = np.diag([-1.0, -1.0, 1.0])


def mask_bounding_box(mask, affine, world_affine=None):
    """World-space (RAS mm) bounding box ``(low[3], high[3])`` of a boolean voxel ``mask``.

    The 8 corners of the voxel-index box (voxel centres) are mapped through ``affine``, then
    through the optional 4x4 ``world_affine`` (e.g. a map into another world frame).
    """
    voxels = np.argwhere(mask)
    if voxels.size == 0:
        raise BadInputError("the brain mask is empty; check the template's mask")
    corners = np.array(np.meshgrid(*zip(voxels.min(0), voxels.max(0)), indexing="ij"))
    world = nb.affines.apply_affine(affine, corners.reshape(3, -1).T)
    if world_affine is not None:
        world = nb.affines.apply_affine(world_affine, world)
    return world.min(0), world.max(0)


def model_grid(brain_mask_img, shape, voxel_size_mm) -> nb.Nifti1Image:
    """A reference image of the model grid: RAS axes, centred on the brain's bounding box.

    ``brain_mask_img``: a mask image (path or nibabel image) in template space; ``shape``: int or
    3 ints (voxels); ``voxel_size_mm``: float or 3 floats. The grid's centre (between its middle
    voxels) is the centre of the mask's bounding box in world coordinates. Returns a uint8 image
    of zeros with sform/qform code 2 (aligned).
    """
    img = nb.load(str(brain_mask_img)) if isinstance(brain_mask_img, (str, os.PathLike)) \
        else brain_mask_img
    shape = np.broadcast_to(np.asarray(shape, dtype=int), (3,))
    zooms = np.broadcast_to(np.asarray(voxel_size_mm, dtype=float), (3,))
    if np.any(shape < 1) or np.any(zooms <= 0):
        raise BadInputError(f"model grid: invalid shape {tuple(shape)} or voxel size "
                            f"{tuple(zooms)} mm")
    data = np.asanyarray(img.dataobj)
    low, high = mask_bounding_box(data.reshape(data.shape[:3]) > 0.5, img.affine)
    centre = (low + high) / 2
    affine = np.diag(np.append(zooms, 1.0))
    affine[:3, 3] = centre - zooms * (shape - 1) / 2
    grid = nb.Nifti1Image(np.zeros(tuple(shape), dtype=np.uint8), affine)
    grid.set_sform(affine, code=2)
    grid.set_qform(affine, code=2)
    grid.header.set_xyzt_units("mm")
    return grid


def _as_image(image):
    """(nibabel image, float32 data) from a path or an image; errors name the file."""
    from ..model import fileio  # the one shape check (imported here: its package loads torch)

    if isinstance(image, (str, os.PathLike)):
        return load_volume(image)
    try:
        return image, fileio.as_volume(np.asanyarray(image.dataobj, dtype=np.float32),
                                       image.get_filename() or "image")
    except fileio.VolumeShapeError as error:
        raise BadInputError(str(error)) from None


def _header_only(image):
    """A nibabel image from a path or an image, without reading its voxels."""
    if not isinstance(image, (str, os.PathLike)):
        return image
    path = Path(image)
    if not path.is_file():
        raise MissingInputError(f"{path}: reference image not found")
    try:
        return nb.load(str(path))
    except Exception as error:  # nibabel raises many types for damaged files
        raise BadInputError(f"{path}: cannot read this reference image ({error})") from None


def to_ants(img, data=None):
    """A float32 ANTs image of ``img`` (nibabel) with its RAS affine turned into LPS geometry."""
    import ants

    if data is None:
        data = np.asanyarray(img.dataobj, dtype=np.float32)
    matrix = img.affine[:3, :3]
    spacing = np.linalg.norm(matrix, axis=0)
    direction = _LPS @ (matrix / spacing)
    origin = _LPS @ img.affine[:3, 3]
    return ants.from_numpy(np.ascontiguousarray(data, dtype=np.float32),
                           origin=[float(v) for v in origin],
                           spacing=[float(v) for v in spacing], direction=direction)


@contextmanager
def ants_seed(seed):
    """Make ``ants.registration`` pass ``--random-seed seed+1`` (antspyx reads a module global;
    ANTs takes 0 to mean "seed from the clock")."""
    import ants

    if int(seed) < 0:
        raise BadInputError(f"registration seed must be >= 0, got {seed}")
    previous = ants.config._random_seed
    ants.config._random_seed = int(seed) + 1
    try:
        yield
    finally:
        ants.config._random_seed = previous


#: registration settings: both images are block-averaged to about ``voxel_mm``; each stage
#: (rigid, affine) runs the pyramid levels given by shrink factors, smoothing sigmas (voxels)
#: and iterations
REGISTRATION_SETTINGS = {
    "normal": {"voxel_mm": 2.0, "shrink": (4, 2, 1), "sigmas": (2, 1, 0),
               "iterations": (500, 250, 100)},
    "sloppy": {"voxel_mm": 4.0, "shrink": (2, 1), "sigmas": (1, 0),
               "iterations": (100, 50)},
}


def _downsampled(img, data, voxel_mm):
    """An ANTs image of ``data`` block-averaged to about ``voxel_mm`` (integer factor per axis)."""
    zooms = np.linalg.norm(img.affine[:3, :3], axis=0)
    factors = np.maximum(1, np.round(voxel_mm / zooms)).astype(int)
    if np.all(factors == 1):
        return to_ants(img, data)
    crop = [n // k * k for n, k in zip(data.shape, factors)]
    blocks = data[:crop[0], :crop[1], :crop[2]].reshape(
        crop[0] // factors[0], factors[0], crop[1] // factors[1], factors[1],
        crop[2] // factors[2], factors[2])
    scale = np.eye(4)
    scale[:3, :3] = np.diag(factors)
    scale[:3, 3] = (factors - 1) / 2.0  # the centre of each block
    small = nb.Nifti1Image(np.zeros(1, np.uint8), img.affine @ scale)
    return to_ants(small, blocks.mean(axis=(1, 3, 5)))


def register_affine(moving, fixed, out_dir, sloppy=False, seed=0, moving_space="T1w",
                    fixed_space="template") -> dict:
    """Register ``moving`` to ``fixed``: rigid, then affine, Mattes mutual information (ANTs).

    The rigid stage starts from a centre-of-mass alignment; the affine stage starts from the
    rigid result. Both images are block-averaged to about 2 mm (``sloppy``: 4 mm, fewer levels
    and iterations; see ``REGISTRATION_SETTINGS``); 32 bins, 25 % regular sampling perturbed with
    ``seed``; ITK runs single-threaded (see top of module), so reruns write identical files.
    Writes
    ``from-<moving_space>_to-<fixed_space>_mode-image_xfm.mat`` (resamples moving images onto the
    fixed grid) and its exact inverse ``from-<fixed_space>_to-<moving_space>_mode-image_xfm.mat``
    into ``out_dir``. Returns ``dict(forward=Path, inverse=Path)``.
    """
    import ants

    settings = REGISTRATION_SETTINGS["sloppy" if sloppy else "normal"]
    moving_img, moving_data = _as_image(moving)
    fixed_img, fixed_data = _as_image(fixed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fixed_ants = _downsampled(fixed_img, fixed_data, settings["voxel_mm"])
    moving_ants = _downsampled(moving_img, moving_data, settings["voxel_mm"])
    options = dict(aff_metric="mattes", aff_sampling=32, aff_random_sampling_rate=0.25,
                   aff_shrink_factors=settings["shrink"],
                   aff_smoothing_sigmas=settings["sigmas"],
                   aff_iterations=settings["iterations"])
    work = Path(tempfile.mkdtemp(prefix=".register.", dir=out_dir))
    try:
        with ants_seed(seed):
            rigid = ants.registration(fixed=fixed_ants, moving=moving_ants,
                                      type_of_transform="Rigid",
                                      outprefix=str(work / "rigid_"), **options)
            affine = ants.registration(fixed=fixed_ants, moving=moving_ants,
                                       type_of_transform="Affine",
                                       initial_transform=list(rigid["fwdtransforms"]),
                                       outprefix=str(work / "affine_"), **options)
        matrices = [f for f in affine["fwdtransforms"] if f.endswith(".mat")]
        if len(matrices) != 1:
            raise RuntimeError(f"ANTs wrote {affine['fwdtransforms']}, expected one affine")
        forward = out_dir / f"from-{moving_space}_to-{fixed_space}_mode-image_xfm.mat"
        inverse = out_dir / f"from-{fixed_space}_to-{moving_space}_mode-image_xfm.mat"
        transform = ants.read_transform(matrices[0])
        write_atomic(forward, lambda tmp: shutil.copyfile(matrices[0], tmp))
        write_atomic(inverse, lambda tmp: ants.write_transform(transform.invert(), tmp))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"forward": forward, "inverse": inverse}


def resample(in_file, reference, transform, out_file, interpolation="linear",
             invert=False) -> Path:
    """Resample ``in_file`` onto ``reference``'s grid through ``transform``: THE one resampler.

    ``transform``: an ANTs ``.mat`` path, a list of them (ANTs order: the last is applied to the
    points first) or ``None`` (identity: same world coordinates). ``invert``: bool or one bool per
    transform. ``interpolation``: ``"linear"`` (images, probabilities; writes float32) or
    ``"nearest"`` (label maps; keeps an integer input's dtype). Points outside ``in_file`` get 0.
    The output has ``reference``'s affine and shape and is written atomically to ``out_file``.
    """
    import ants

    if interpolation not in INTERPOLATIONS:
        raise BadInputError(f"interpolation must be one of {sorted(INTERPOLATIONS)}, "
                            f"got {interpolation!r}")
    in_img, in_data = _as_image(in_file)
    ref_img = _header_only(reference)
    transforms = [] if transform is None else (
        [transform] if isinstance(transform, (str, os.PathLike)) else list(transform))
    for path in transforms:
        if not Path(path).is_file():
            raise MissingInputError(f"{path}: transform file not found")
    flags = invert if isinstance(invert, Sequence) else [bool(invert)] * len(transforms)
    moving = to_ants(in_img, in_data)
    fixed = to_ants(ref_img, np.zeros(ref_img.shape[:3], dtype=np.float32))
    if transforms:
        out = ants.apply_transforms(fixed=fixed, moving=moving,
                                    transformlist=[str(p) for p in transforms],
                                    interpolator=INTERPOLATIONS[interpolation],
                                    whichtoinvert=[bool(f) for f in flags])
    else:
        out = ants.resample_image_to_target(moving, fixed, interp_type=INTERPOLATIONS[
            interpolation])
    data = out.numpy().astype(np.float32)
    dtype = np.float32
    on_disk = in_img.get_data_dtype()
    if interpolation == "nearest" and np.issubdtype(on_disk, np.integer) and \
            np.array_equal(np.round(in_data), in_data):
        dtype = on_disk
        data = np.round(data)
    return write_nifti_atomic(data, ref_img, out_file, dtype=dtype)


def transform_to_ras_affine(transform) -> np.ndarray:
    """The 4x4 RAS-world matrix of an ITK affine ``.mat`` file.

    ITK maps points of the fixed (reference) space to the moving space, in LPS:
    ``y = M (x - c) + t + c``. The returned matrix does the same on RAS coordinates, so for a
    forward transform ``from-T1w_to-template`` it maps template-world points to T1w-world points.
    """
    import ants

    path = Path(transform)
    if not path.is_file():
        raise MissingInputError(f"{path}: transform file not found")
    itk = ants.read_transform(str(path))
    params = np.asarray(itk.parameters, dtype=float)
    centre = np.asarray(itk.fixed_parameters, dtype=float)
    matrix, translation = params[:9].reshape(3, 3), params[9:12]
    out = np.eye(4)
    out[:3, :3] = _LPS @ matrix @ _LPS
    out[:3, 3] = _LPS @ (translation + centre - matrix @ centre)
    return out
