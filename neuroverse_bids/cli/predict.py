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
[0, 1]). Labels are used as given (masks in {0, 1}), or ``--dseg-label NAME`` /
``--label-value N`` pick structures out of label maps: each flag is one structure; the output is
then a label map with those values (the most probable structure above 0.5 per voxel).

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
from ..errors import EXIT_OK, run_with_exit_codes
from ..model import load_checkpoint
from ..model.intensity import normalise_intensity
from ..model.predictor import Predictor
from ..workflows.errors import BadInputError, MissingInputError, UsageError
from ..workflows.niftiio import load_volume, write_nifti_atomic
from .options import ExitCode64Parser, add_inference_options, inference_settings


class ContextFiles:
    """Context volumes read from their files when the predictor reaches their pair, so that
    memory stays flat in the number of contexts. Images are normalised; labels as given."""

    def __init__(self, paths, labels: bool):
        self.paths, self.labels = [str(p) for p in paths], labels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> np.ndarray:
        _, data = load_volume(self.paths[index])
        return data.astype(np.float32) if self.labels else normalise_intensity(data)


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
    labels.add_argument("--dseg-label", action="append", metavar="NAME",
                        help="a structure by its name in the dseg table (repeatable)")
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
    """``[(name, label value)]`` picked by --dseg-label, then --label-value; None: as given."""
    picked = []
    if args.dseg_label:
        from ..context_set import read_dseg_table

        table_path = args.dseg_tsv or _find_dseg_table(args.context_labels[0])
        table = read_dseg_table(table_path)
        for name in args.dseg_label:
            if name not in table:
                raise BadInputError(f"{table_path}: no structure {name!r}; names there: "
                                    f"{', '.join(sorted(table, key=table.get)[:20])}")
            picked.append((name, table[name]))
    picked += [(f"label-{v}", int(v)) for v in args.label_value or []]
    if picked and args.task == "gen":
        raise UsageError("--dseg-label/--label-value pick structures to segment; they do not go "
                         "with --task gen")
    return picked or None


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


def _check_inputs(args) -> List[nb.Nifti1Image]:
    """Every file read once before any work (3D, finite); returns the images' headers."""
    if len(args.context_images) != len(args.context_labels):
        raise UsageError(
            f"{len(args.context_images)} context images but {len(args.context_labels)} context "
            "labels: give one label volume per context image, in the same order")
    headers = []
    for path in [args.target, *args.context_images, *args.context_labels]:
        img, data = load_volume(path)
        headers.append(img)
        del data
    return headers


def _pick(label: Path, value: Optional[int], out: Path) -> Path:
    """The label map as given (value None) or its structure ``value`` as a float32 mask."""
    if value is None:
        return label
    img, data = load_volume(label)
    return write_nifti_atomic((np.rint(data) == value).astype(np.float32), img, out)


class OnModelGrid:
    """The volumes on the model grid, written into ``folder``; :meth:`back` maps a prediction
    back onto the target's grid."""

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
        self.template_t1w = str(files["t1w"])
        self.template_grid = self.folder / "template_grid.nii.gz"
        nb.save(model_grid(nb.load(str(files["brain_mask"])), self.shape, self.voxel),
                str(self.template_grid))

    def image(self, path: Path, name: str):
        """``(image on the grid, its reference grid, transform or None)``."""
        from ..workflows.geometry import model_grid, register_affine, resample

        if self.args.register:
            xfm = register_affine(path, self.template_t1w, self.folder / name,
                                  sloppy=self.args.sloppy)["forward"]
            reference = self.template_grid
        else:
            img = nb.load(str(path))
            fov = nb.Nifti1Image(np.ones(img.shape[:3], np.uint8), img.affine)
            reference = self.folder / f"{name}_grid.nii.gz"
            nb.save(model_grid(fov, self.shape, self.voxel), str(reference))
            xfm = None
        out = resample(path, reference, xfm, self.folder / f"{name}_image.nii.gz")
        return out, reference, xfm

    def labels(self, path: Path, name: str, reference, xfm, values) -> List[Path]:
        from ..workflows.geometry import resample

        return [resample(_pick(path, value, self.folder / f"{name}_pick{k}.nii.gz"), reference,
                         xfm, self.folder / f"{name}_label{k}.nii.gz")
                for k, value in enumerate(values)]

    def back(self, data: np.ndarray, reference, target: Path, xfm) -> np.ndarray:
        """``[K,D,H,W]`` on the grid -> ``[K,...]`` on the target's grid (linear)."""
        from ..workflows.geometry import resample

        ref_img = nb.load(str(reference))
        native = []
        for k, volume in enumerate(data):
            grid_file = write_nifti_atomic(volume.astype(np.float32), ref_img,
                                           self.folder / f"out{k}_grid.nii.gz")
            out = resample(grid_file, target, xfm, self.folder / f"out{k}_native.nii.gz",
                           invert=xfm is not None)
            native.append(load_volume(out)[1])
        return np.stack(native)


def run(args) -> int:
    import torch

    from .participant import resolve_model

    settings = inference_settings(args)
    structures = _structures(args)
    headers = _check_inputs(args)
    model = load_checkpoint(resolve_model(args.model))
    target_img = headers[0]
    shape, voxel, template, recorded = _model_grid_spec(model, target_img)
    values = [v for _, v in structures] if structures else [None]
    with tempfile.TemporaryDirectory(prefix="neuroverse3d-predict.") as tmp:
        folder = Path(tmp)
        if not args.register and _usable_as_given(headers, shape, voxel, recorded,
                                                  model.divisor):
            grid, images, labels = None, list(args.context_images), [list(args.context_labels)]
            target_file, reference, target_xfm = args.target, None, None
        else:
            grid = OnModelGrid(args, shape, voxel, template, folder)
            target_file, reference, target_xfm = grid.image(args.target, "target")
            images, labels = [], [[] for _ in values]
            for index, (image, label) in enumerate(zip(args.context_images, args.context_labels)):
                on_grid, ref, xfm = grid.image(image, f"context{index}")
                images.append(on_grid)
                for k, path in enumerate(grid.labels(label, f"context{index}", ref, xfm, values)):
                    labels[k].append(path)
        if structures is not None and grid is None:
            labels = [[_pick(p, v, folder / f"pick{k}_{i}.nii.gz")
                       for i, p in enumerate(args.context_labels)] for k, v in enumerate(values)]
        _, target = load_volume(target_file)
        predictor = Predictor(model, **settings)
        out = predictor.predict(torch.from_numpy(normalise_intensity(target)),
                                ContextFiles(images, labels=False),
                                [ContextFiles(paths, labels=True) for paths in labels]
                                if len(labels) > 1 else ContextFiles(labels[0], labels=True))
        result = out.numpy().reshape((len(values),) + tuple(target.shape))
        if grid is not None:
            result = grid.back(result, reference, args.target, target_xfm)
    write_nifti_atomic(_finish(result, args.task, values), target_img, args.output)
    print(f"wrote {args.output}")
    return EXIT_OK


def _finish(result: np.ndarray, task: str, values) -> np.ndarray:
    """``[K,...]`` probabilities -> mask (labels as given), label map (picked) or float32."""
    if task == "gen":
        return result[0].astype(np.float32)
    if values == [None]:
        return (result[0] > 0.5).astype(np.uint8)
    best = result.argmax(axis=0)
    labels = np.asarray(values)[best]
    labels[result.max(axis=0) <= 0.5] = 0
    return labels.astype(np.uint8 if max(values) < 256 else np.uint16)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_with_exit_codes("neuroverse3d-predict", run, args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
