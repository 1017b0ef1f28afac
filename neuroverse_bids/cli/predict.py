"""``neuroverse3d-predict``: run the model on one target volume with explicit context pairs.

Volumes are taken as they come: the target and each context image may lie on its own grid
(any shape, voxel size and orientation). They are brought onto the model grid (the shape and
voxel size recorded in the model, RAS axes) with the app's geometry code (``workflows.geometry``:
:func:`model_grid` and the one resampler):

* by default each image gets a model grid centred on its own field of view, and its label is
  resampled onto its image's grid through world coordinates (so a label on another grid than
  its image works as long as both are aligned in space);
* ``--register`` registers each image to the template (``--template``, default the model's
  space; rigid then affine, as the app does) and resamples it, and its label, into the model
  grid in template space.

Volumes already on one grid of exactly the model's shape and voxel size (or, for a model that
records no grid, of any shape divisible by its divisor) are used as they are. The prediction
is brought back onto the target's own grid (linear interpolation of the probabilities) and
written with the target's header. Images are normalised (0.5-99.5 percentile clip, min-max to
[0, 1]). Labels are used as given (masks in [0, 1]; for ``--task seg`` a label map with other
values is refused, exit 65), or ``--dseg-label NAME|N`` / ``--label-value N`` pick structures
out of label maps: each flag is one structure; the output is then a label map with those values
(the most probable structure above 0.5 per voxel).

Every input file is decoded once, before any network work: checked (one 3D volume with several
slices in each direction, finite; labels as above), brought onto the model grid and, for the
contexts, kept in uncompressed temporary files that the predictor reads pair by pair.

Exit codes: 0 ok, 1 unexpected failure, 64 usage error, 65 bad input data, 66 missing input,
73 cannot write output.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import List, Optional, Tuple

import nibabel as nb
import numpy as np

from .. import __version__
from ..errors import ExitCode, run_with_exit_codes
from ..model import load_checkpoint
from ..model.intensity import normalise_intensity
from ..model.predictor import Predictor
from ..workflows.errors import BadInputError, MissingInputError, UsageError
from ..workflows.niftiio import load_volume, write_nifti_atomic
from .options import ExitCode64Parser, add_inference_options, inference_options


class ContextFiles:
    """Context volumes on the model grid, each kept in an uncompressed ``.npy`` file of a
    temporary folder and read back when the predictor reaches its pair: every input file is
    decoded once (before any work, where it is checked) and memory stays flat in the number
    of contexts."""

    def __init__(self, folder: Path, name: str):
        self.folder, self.name, self.paths = Path(folder), name, []

    def append(self, volume: np.ndarray):
        path = self.folder / f"{self.name}{len(self.paths)}.npy"
        np.save(path, np.asarray(volume, dtype=np.float32))
        self.paths.append(path)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> np.ndarray:
        return np.load(self.paths[index])


def build_parser() -> ExitCode64Parser:
    parser = ExitCode64Parser(
        prog="neuroverse3d-predict",
        description="Neuroverse3D in-context prediction for one target volume, from volumes as "
                    "they come (any grids).")
    parser.add_argument("--version", action="version", version=f"neuroverse3d {__version__}")
    io = parser.add_argument_group("Inputs and outputs")
    io.add_argument("--model", type=Path, metavar="CKPT",
                    help="checkpoint (.ckpt or .safetensors); default: the bundled model")
    io.add_argument("--target", required=True, type=Path, help="target volume (NIfTI)")
    io.add_argument("--context-images", required=True, nargs="+", type=Path, metavar="IMG",
                    help="context input volumes")
    io.add_argument("--context-labels", required=True, nargs="+", type=Path, metavar="LAB",
                    help="context output volumes, one per context image (masks or label maps "
                         "for segmentation)")
    io.add_argument("--output", required=True, type=Path, help="output NIfTI path")
    io.add_argument("--task", choices=("seg", "gen"), default="seg",
                    help="seg: threshold the output at 0.5 (uint8 mask or label map); gen: "
                         "write float32")
    labels = parser.add_argument_group(
        "Structures", "Pick structures out of label maps (each flag is one structure; the "
                      "default uses the labels as given)")
    labels.add_argument("--dseg-label", action="append", metavar="NAME|N",
                        help="a structure by its name in the dseg table, or by its value N in "
                             "the label maps (repeatable)")
    labels.add_argument("--label-value", action="append", type=int, metavar="N",
                        help="a structure by its value in the label maps (repeatable)")
    labels.add_argument("--dseg-tsv", type=Path, metavar="FILE",
                        help="the dseg table (columns index, name) for --dseg-label; default: "
                             "<label>.tsv beside the first context label, else the nearest "
                             "dseg.tsv in its folders")
    geometry = parser.add_argument_group("Geometry")
    geometry.add_argument("--register", action="store_true",
                          help="register every image to the template first, as the app does "
                               "(default: centre each image's field of view in the model grid)")
    geometry.add_argument("--template", metavar="ID",
                          help="TemplateFlow template for --register (default: the model's "
                               "space); fetched beforehand, see the README")
    geometry.add_argument("--sloppy", action="store_true",
                          help="coarse, fast registration (for testing only)")
    add_inference_options(parser)
    return parser


def _structures(args) -> Optional[List[Tuple[str, int]]]:
    """``[(name, label value)]`` picked by --dseg-label (a name in the dseg table, or a value),
    then --label-value; None: the labels as given."""
    picked, table_path, table = [], None, None
    for name in args.dseg_label or []:
        if name.strip().isdigit():
            picked.append((f"label-{int(name)}", int(name)))
            continue
        if table is None:
            from ..context_set import read_dseg_table

            table_path = args.dseg_tsv or _find_dseg_table(args.context_labels[0])
            table = read_dseg_table(table_path)
        if name not in table:
            raise BadInputError(f"{table_path}: no structure {name!r}; names there: "
                                f"{', '.join(sorted(table, key=table.get)[:20])}")
        picked.append((name, table[name]))
    picked += [(f"label-{v}", int(v)) for v in args.label_value or []]
    if picked and args.task == "gen":
        raise UsageError("--dseg-label/--label-value pick structures to segment; they do not go "
                         "with --task gen")
    return picked or None


#: how far outside [0, 1] a mask may stray (rounding of an interpolated mask) and stay a mask
MASK_TOLERANCE = 1e-3


def _check_mask(path: Path, data: np.ndarray):
    """Labels used as given must be masks (values in [0, 1]): a label map needs its structure
    picked, else the network would read every label above 1 as a mask value."""
    if data.size and data.min() >= -MASK_TOLERANCE and data.max() <= 1 + MASK_TOLERANCE:
        return
    found = np.unique(np.rint(data)).astype(np.int64)
    listing = ", ".join(str(v) for v in found[:12]) + (
        f", ... ({found.size} labels)" if found.size > 12 else "")
    example = next((v for v in found if v > 1), found[-1])
    raise BadInputError(f"{path}: a label map with labels {listing}, not a mask of 0 and 1; pick "
                        f"the structure to segment with --dseg-label N (e.g. --dseg-label "
                        f"{example}; or its name in the dseg table)")


def _find_dseg_table(label: Path) -> Path:
    beside = label.with_name(label.name.split(".nii")[0] + ".tsv")
    if beside.is_file():
        return beside
    for folder in label.resolve().parents:
        if (folder / "dseg.tsv").is_file():
            return folder / "dseg.tsv"
        if (folder / "dataset_description.json").is_file():
            break
    raise MissingInputError(f"{label}: no dseg table found (looked for {beside.name} beside it "
                            "and dseg.tsv in its folders); pass --dseg-tsv FILE")


def _model_grid_spec(model, target_img) -> Tuple[List[int], float, Optional[str], bool]:
    """``(shape, voxel mm, template, recorded)``: the model's grid, else the target's voxel size
    and field of view rounded up to the model's divisor."""
    grid = model.metadata.get("grid") or {}
    if "shape" in grid and "voxel_size_mm" in grid:
        shape = [int(s) for s in np.broadcast_to(grid["shape"], (3,))]
        return shape, float(np.min(grid["voxel_size_mm"])), grid.get("template"), True
    zooms = np.linalg.norm(target_img.affine[:3, :3], axis=0)
    voxel = float(zooms.min())
    divisor = model.divisor
    shape = [int(np.ceil(n * z / voxel / divisor) * divisor)
             for n, z in zip(target_img.shape[:3], zooms)]
    return shape, voxel, None, False


def _usable_as_given(images, shape, voxel: float, recorded: bool, divisor: int) -> bool:
    first = images[0]
    if any(i.shape[:3] != first.shape[:3] or not np.allclose(i.affine, first.affine)
           for i in images):
        return False
    if recorded:
        zooms = np.linalg.norm(first.affine[:3, :3], axis=0)
        return list(first.shape[:3]) == list(shape) and np.allclose(zooms, voxel)
    return not any(s % divisor for s in first.shape[:3])


def _header(path: Path) -> nb.Nifti1Image:
    """The image without its voxels (nibabel reads only the header); a file it cannot open is
    reported by :func:`load_volume` (exit 65/66, naming the file and the fix)."""
    try:
        return nb.load(str(path))
    except Exception:
        load_volume(path)
        raise


def _in_memory(img, data: np.ndarray) -> nb.Nifti1Image:
    """Decoded voxels with their image's geometry: handed to the geometry code, which then
    reads no file."""
    return nb.Nifti1Image(data, img.affine)


class OnModelGrid:
    """Volumes (in memory) brought onto the model grid through the one resampler, its files in
    ``folder`` (uncompressed: written and read once); :meth:`back` maps a prediction back onto
    the target's grid."""

    def __init__(self, args, shape, voxel, template, folder: Path):
        self.args, self.shape, self.voxel, self.folder = args, shape, voxel, folder
        self.template_grid = self.template_t1w = None
        if args.register:
            self._template(template)

    def _template(self, template):
        from ..workflows.geometry import model_grid
        from ..workflows.templates import resolve_template_files
        from .parser import DEFAULT_TEMPLATE

        files = resolve_template_files(self.args.template or template or DEFAULT_TEMPLATE,
                                       private_home=self.folder / "templateflow")
        self.template_t1w = _in_memory(*load_volume(files["t1w"]))  # decoded once for all
        self.template_grid = model_grid(nb.load(str(files["brain_mask"])), self.shape, self.voxel)

    def image(self, image: nb.Nifti1Image, name: str):
        """``(its data on the grid, the grid image, transform or None)``."""
        from ..workflows.geometry import model_grid, register_affine

        if self.args.register:
            xfm = register_affine(image, self.template_t1w, self.folder / name,
                                  sloppy=self.args.sloppy)["forward"]
            reference = self.template_grid
        else:  # the field of view as a 2^3 mask whose corners are the image's corner voxels
            corners = image.affine @ np.diag([*(np.asarray(image.shape[:3]) - 1), 1.0])
            fov = nb.Nifti1Image(np.ones((2, 2, 2), np.uint8), corners)
            reference, xfm = model_grid(fov, self.shape, self.voxel), None
        return self.resample(image, reference, xfm, f"{name}_image"), reference, xfm

    def resample(self, image, reference, xfm, name: str, invert: bool = False) -> np.ndarray:
        """``image`` (in memory) on ``reference``'s grid (linear), as float32 data."""
        from ..workflows.geometry import resample

        out = resample(image, reference, xfm, self.folder / f"{name}.nii", invert=invert)
        return np.array(nb.load(str(out)).dataobj, dtype=np.float32)

    def back(self, data: np.ndarray, reference, target, xfm) -> np.ndarray:
        """``[K,D,H,W]`` on the grid -> ``[K,...]`` on the target's grid (linear)."""
        return np.stack([self.resample(_in_memory(reference, volume.astype(np.float32)), target,
                                       xfm, f"out{k}", invert=xfm is not None)
                         for k, volume in enumerate(data)])


def _read_contexts(args, values, grid: Optional[OnModelGrid], folder: Path):
    """Each context pair read once, checked, brought onto the model grid (images normalised,
    one mask per structure) and kept in files -> ``(images, [labels per structure])``."""
    images = ContextFiles(folder, "image")
    labels = [ContextFiles(folder, f"label{k}_") for k in range(len(values))]
    for index, (image_path, label_path) in enumerate(zip(args.context_images,
                                                         args.context_labels)):
        img, data = load_volume(image_path)
        label_img, label = load_volume(label_path)
        if values == [None] and args.task == "seg":
            _check_mask(label_path, label)
        masks = [label] if values == [None] else [(np.rint(label) == v).astype(np.float32)
                                                  for v in values]
        if grid is not None:
            data, reference, xfm = grid.image(_in_memory(img, data), f"context{index}")
            masks = [grid.resample(_in_memory(label_img, mask), reference, xfm,
                                   f"context{index}_label{k}") for k, mask in enumerate(masks)]
        images.append(normalise_intensity(data))
        for k, mask in enumerate(masks):
            labels[k].append(mask)
    return images, labels


def run(args) -> int:
    import torch

    from ..model.pretrained import resolve_model_path

    options = inference_options(args)
    if len(args.context_images) != len(args.context_labels):
        raise UsageError(
            f"{len(args.context_images)} context images but {len(args.context_labels)} context "
            "labels: give one label volume per context image, in the same order")
    structures = _structures(args)
    values = [v for _, v in structures] if structures else [None]
    target_img, target = load_volume(args.target)
    headers = [target_img, *map(_header, [*args.context_images, *args.context_labels])]
    model = load_checkpoint(resolve_model_path(args.model))
    shape, voxel, template, recorded = _model_grid_spec(model, target_img)
    with tempfile.TemporaryDirectory(prefix="neuroverse3d-predict.") as tmp:
        folder = Path(tmp)
        grid = None
        if args.register or not _usable_as_given(headers, shape, voxel, recorded, model.divisor):
            grid = OnModelGrid(args, shape, voxel, template, folder)
        images, labels = _read_contexts(args, values, grid, folder)
        reference = xfm = None
        if grid is not None:
            target, reference, xfm = grid.image(_in_memory(target_img, target), "target")
        predictor = Predictor(model, **options.predictor_kwargs())
        out = predictor.predict(torch.from_numpy(normalise_intensity(target)), images,
                                labels if len(labels) > 1 else labels[0])
        result = out.numpy().reshape((len(values),) + tuple(target.shape))
        if grid is not None:
            result = grid.back(result, reference, target_img, xfm)
    write_nifti_atomic(_finish(result, args.task, values), target_img, args.output)
    print(f"wrote {args.output}")
    return ExitCode.OK


def _finish(result: np.ndarray, task: str, values) -> np.ndarray:
    """``[K,...]`` probabilities -> mask (labels as given), label map (picked) or float32."""
    if task == "gen":
        return result[0].astype(np.float32)
    from ..model.labels import probabilities_to_dseg, probabilities_to_masks

    if values == [None]:
        return probabilities_to_masks(result[:1])[0].astype(np.uint8)
    return probabilities_to_dseg(result, values)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_with_exit_codes("neuroverse3d-predict", run, args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
