"""``neuroverse3d-eval-heldout``: segmentation of held-out people, scored in their native 1 mm.

    neuroverse3d-eval-heldout --labelmaps data/labelmaps-3mm \\
        --native SynthSeg/data/training_label_maps --model v2=v2.safetensors v3=v3.safetensors \\
        --context-sizes 1 4 8 --contrasts t1 t2 random --methods model majority jlf out/

Targets (default: the held-out maps of manifest-heldout.json) and contexts (default: the
training and validation maps) come from a ``neuroverse3d-make-labelmap-data`` folder. Per target,
one seeded order of the context pool gives the contexts of every L (the first L), the same for
every method and contrast. Per target and contrast, one contrast draw (t1: SynthSeg's T1
priors; t2: CSF bright, GM > WM; random: the training's draw) makes the target's image from
its native 1 mm label map (then brought to the model grid with its forward transform) and the
contexts' images from their grid label maps (jlf: from their native maps). Methods:

  model       each --model's probabilities on the grid, mapped back to native 1 mm
              (inverse transform, linear), > 0.5
  majority    voxel-wise majority vote of the contexts' grid labels, mapped back the same way
  jlf         ANTs joint label fusion after SyN of each native context to the native target,
              at --jlf-voxel-mm (block means / majority), nearest back to 1 mm
  grid-truth  the target's own grid label map mapped back: the grid's ceiling

Dice per structure (11 FreeSurfer structures) in the target's native 1 mm space. Seconds per
target: model = target to grid + prediction + back to native; jlf = coarse images + the L
registrations + fusion + back to 1 mm; image synthesis is not counted. ANTs runs on
ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS threads (default 1, for bit-reproducible registrations;
set it to the core count for JLF's best wall time), recorded in heldout.json.

``--merge RUN [RUN ...]`` writes one table from earlier runs of the same targets, contexts and
seed (e.g. each model on its own grid, and JLF run once): a method found in several runs takes
its grid as a suffix (majority@3mm, majority@2mm).

Outputs in OUT: heldout.tsv (target, contrast, L, method, structure, dice, seconds, contexts),
heldout.json (means per method/contrast/L/structure and of the 11, config, sha256 of the
inputs, timings), heldout.md (tables) and heldout.png
(Dice per structure and method at the main table's contrast and L).

Exit codes: 0 success, 64 usage error, 65 bad data or model, 66 missing input, 73 cannot write.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from .. import __version__
from ..errors import run_with_exit_codes
from ..model.hashing import file_sha256
from ..model.options import Precision
from ..workflows.errors import BadInputError, OutputError, UsageError
from . import heldout_methods as hm
from .heldout_data import LabelmapSet
from .heldout_report import COLUMNS, finite_mean, merge_runs, summarise, write_outputs

PROGRAM = "neuroverse3d-eval-heldout"
METHODS = ("model", "majority", "jlf", "grid-truth")


def parse_models(values: Optional[List[str]], wanted: bool) -> Dict[str, Path]:
    """``NAME=PATH`` or ``PATH`` (named by its stem) -> {name: path}; none given: the bundled
    default model, named ``default``."""
    if not wanted:
        return {}
    if not values:
        from ..model.pretrained import default_model_path

        return {"default": default_model_path()}
    models = {}
    for value in values:
        name, _, path = value.partition("=") if "=" in value and not Path(value).exists() \
            else (Path(value).stem, "", value)
        if not name or name in METHODS or name in models:
            raise UsageError(f"--model {value}: the name {name!r} is empty, a method name or "
                             "given twice; write NAME=PATH with distinct names")
        models[name] = Path(path)
    return models


def load_predictors(models: Dict[str, Path], data: LabelmapSet, args) -> Dict[str, object]:
    """{name: Predictor} after checking each model's grid against the label maps' grid."""
    from ..model import load_checkpoint
    from ..model.predictor import Predictor

    predictors = {}
    shape = [int(s) for s in data.grid.shape[:3]]
    mm = float(data.grid_spec.get("voxel_size_mm", 0))
    for name, path in models.items():
        model = load_checkpoint(path)
        grid = model.metadata.get("grid") or {}
        if [int(s) for s in grid.get("shape", [])] != shape or \
                abs(float(grid.get("voxel_size_mm", 0)) - mm) > 1e-6:
            raise BadInputError(
                f"{path}: the model's grid {grid.get('shape')} at {grid.get('voxel_size_mm')} mm "
                f"differs from {data.folder}'s {shape} at {mm} mm; evaluate it on label maps "
                f"built for its grid (neuroverse3d-make-labelmap-data NATIVE OUT --grid ... "
                f"--voxel-size ... --transforms {data.folder / 'transforms'})")
        try:
            predictors[name] = Predictor(model, device=args.device, precision=args.precision)
        except ValueError as error:
            raise UsageError(str(error)) from None
    return predictors


class HeldoutRun:
    """The evaluation loop (see the module docstring); ``rows`` collects COLUMNS dicts."""

    def __init__(self, data: LabelmapSet, predictors, targets, pool, sizes, contrasts, methods,
                 seed: int, jlf: hm.JLFConfig, mini_context_size="auto", log=print):
        self.data, self.predictors, self.targets, self.pool = data, predictors, targets, pool
        self.sizes, self.contrasts, self.methods = sorted(set(sizes)), contrasts, methods
        self.seed, self.jlf, self.log, self.chunk = seed, jlf, log, mini_context_size
        self.structures = hm.structures()
        self.rows: List[dict] = []
        self.orders: Dict[str, List[str]] = {}
        self.contrast_draws: Dict[str, dict] = {}

    def _seed(self, *key) -> int:
        from ..anatomy.synth import subject_seed

        return subject_seed(self.seed, "heldout/" + "/".join(map(str, key)), 0)

    def _masks(self, labels: np.ndarray) -> np.ndarray:
        return np.stack([np.isin(labels, codes) for codes in self.structures.values()])

    def _add(self, target, contrast, size, method, truth, pred, seconds, contexts):
        scores = [hm.dice(p, t) for p, t in zip(pred, truth)]
        for name, value in zip(self.structures, scores):
            self.rows.append(dict(zip(COLUMNS, (target, contrast, size, method, name, value,
                                                round(seconds, 2), ",".join(contexts)))))
        self.log(f"{PROGRAM}: {target} {contrast} L={size} {method}: mean Dice "
                 f"{finite_mean(scores)} in {seconds:.1f} s")

    def run(self) -> List[dict]:
        for target in self.targets:
            self._target(target)
        return self.rows

    def _target(self, target: str):
        from ..model.intensity import normalise_intensity

        data, grid = self.data, self.data.grid
        native_img, native_labels = data.native(target)
        truth = self._masks(native_labels)
        forward, inverse = data.transforms(target)
        generator = torch.Generator().manual_seed(self._seed(target, "contexts"))
        order = [self.pool[i] for i in torch.randperm(len(self.pool), generator=generator)]
        self.orders[target] = order
        ceiling = None
        if "grid-truth" in self.methods:
            start = time.perf_counter()
            masks = self._masks(data.grid_labels(target)).astype(np.float32)
            ceiling = (hm.to_native(masks, grid, native_img, inverse), time.perf_counter() - start)
        context_masks = {}
        for contrast in self.contrasts:
            draw = hm.draw_contrast(contrast, self._seed(target, contrast))
            self.contrast_draws[f"{target}/{contrast}"] = draw.to_dict()
            image = hm.synthesize(native_labels, draw, self._seed(target, contrast, "image"))
            start = time.perf_counter()
            target_grid = torch.from_numpy(normalise_intensity(
                hm.warp(image, native_img, grid, forward, "linear")))
            to_grid_s = time.perf_counter() - start
            grid_images, registered, target_small = {}, {}, None
            for size in self.sizes:
                contexts = order[:size]
                for key in contexts:
                    if key not in context_masks:
                        context_masks[key] = self._masks(data.grid_labels(key)).astype(np.float32)
                    if key not in grid_images:
                        grid_images[key] = normalise_intensity(hm.synthesize(
                            data.grid_labels(key), draw, self._seed(target, contrast, key)))
                labels = torch.from_numpy(np.stack([context_masks[k] for k in contexts], 1))
                images = torch.from_numpy(np.stack([grid_images[k] for k in contexts]))
                for name, predictor in self.predictors.items():
                    start = time.perf_counter()
                    prob = predictor.predict(target_grid, images, labels,
                                             mini_context_size=self.chunk).numpy()
                    pred = hm.to_native(prob, grid, native_img, inverse)
                    self._add(target, contrast, size, name, truth, pred,
                              to_grid_s + time.perf_counter() - start, contexts)
                if "majority" in self.methods:
                    from .protocol import majority_vote

                    start = time.perf_counter()
                    vote = majority_vote(labels).numpy()
                    pred = hm.to_native(vote, grid, native_img, inverse)
                    self._add(target, contrast, size, "majority", truth, pred,
                              time.perf_counter() - start, contexts)
                if "jlf" in self.methods:
                    if target_small is None:
                        start = time.perf_counter()
                        target_small, _, box, factor = hm.coarse(
                            normalise_intensity(image), native_labels, native_img.affine, self.jlf)
                        coarse_s = time.perf_counter() - start
                    for key in contexts:
                        if key not in registered:
                            context_img, context_labels = data.native(key)
                            context_image = normalise_intensity(hm.synthesize(
                                context_labels, draw, self._seed(target, contrast, key, "native")))
                            registered[key] = hm.register_context(
                                target_small, context_image, context_labels, context_img.affine,
                                self.jlf, self._seed(target, contrast, key, "syn") % (2 ** 31 - 2),
                                forward, data.transforms(key)[0])
                    start = time.perf_counter()
                    fused = hm.fuse(target_small, [registered[k] for k in contexts], box, factor,
                                    native_img, self.jlf)
                    seconds = coarse_s + sum(registered[k].seconds for k in contexts) + \
                        time.perf_counter() - start
                    self._add(target, contrast, size, "jlf", truth, self._masks(fused), seconds,
                              contexts)
                if ceiling is not None:
                    self._add(target, contrast, size, "grid-truth", truth, ceiling[0], ceiling[1],
                              [target])


# -------------------------------------------------------------------------------- outputs
# ---------------------------------------------------------------------------- command line
def _ints(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value!r}")
    return number


def build_parser() -> argparse.ArgumentParser:
    from ..cli.options import (ExitCode64Parser, mini_context_size, positive_float,
                               positive_int)

    doc = __doc__.split("\n")
    parser = ExitCode64Parser(prog=PROGRAM, description=doc[0].split(": ", 1)[1].capitalize(),
                              epilog="\n".join(doc[2:]),
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"neuroverse3d {__version__}")
    parser.add_argument("out", type=Path, help="output folder")
    parser.add_argument("--labelmaps", type=Path,
                        help="output folder of neuroverse3d-make-labelmap-data (required)")
    parser.add_argument("--native", type=Path,
                        help="folder of the native label maps it was built from (required)")
    parser.add_argument("--merge", nargs="+", type=Path, metavar="RUN",
                        help="instead of evaluating: one table from these earlier output "
                             "folders (same targets, contexts and seed)")
    parser.add_argument("--model", nargs="+", metavar="[NAME=]CKPT",
                        help="models to compare (default: the bundled model, named default)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                        help="default: all (model majority jlf grid-truth)")
    parser.add_argument("--targets", nargs="+", metavar="ID",
                        help="target maps (map-17 or 17; default: manifest-heldout.json)")
    parser.add_argument("--contexts", nargs="+", metavar="ID",
                        help="context pool (default: the training and validation maps)")
    parser.add_argument("--context-sizes", nargs="+", type=positive_int, default=[1, 4, 8],
                        metavar="L", help="default: 1 4 8")
    parser.add_argument("--contrasts", nargs="+", choices=hm.CONTRAST_MODES,
                        default=list(hm.CONTRAST_MODES), help="default: t1 t2 random")
    parser.add_argument("--seed", type=int, default=0, help="seed of draws (default 0)")
    parser.add_argument("--device", default="cpu", help="cpu (default), auto, cuda or cuda:N")
    parser.add_argument("--precision", default="float32", choices=Precision.names(),
                        help="float32 (default), bfloat16, float16 (CUDA) or auto")
    parser.add_argument("--mini-context-size", type=mini_context_size, default="auto",
                        metavar="M", help="(structure, context) pairs per chunk (default auto)")
    group = parser.add_argument_group("joint label fusion")
    group.add_argument("--jlf-voxel-mm", type=positive_float, default=2.0,
                       help="JLF resolution in mm (default 2)")
    group.add_argument("--jlf-iterations", type=_ints, nargs="+", default=[40, 20, 0],
                       metavar="N", help="SyN iterations per level (default 40 20 0)")
    group.add_argument("--jlf-transform", choices=("SyN", "SyNOnly"), default="SyN",
                       help="SyN (default: antspyx's affine stage, then SyN) or SyNOnly (SyN "
                       "from the maps' template affines alone)")
    group.add_argument("--jlf-search-radius", type=_ints, default=3, metavar="R",
                       help="JLF search radius in voxels (default 3)")
    group.add_argument("--jlf-patch-radius", type=_ints, default=2, metavar="R",
                       help="JLF patch radius in voxels (default 2)")
    return parser


def _make_folder(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"{out}: cannot create the output folder ({error})") from None


def merge(args) -> int:
    rows, info = merge_runs(args.merge)
    _make_folder(args.out)
    paths = write_outputs(args.out, rows, summarise(rows), info)
    print(f"{PROGRAM}: merged {len(args.merge)} runs ({len(rows)} results); wrote "
          f"{', '.join(str(p) for p in paths.values())}")
    return 0


def run(args) -> int:
    if args.merge:
        return merge(args)
    if args.labelmaps is None or args.native is None:
        raise UsageError("--labelmaps and --native are required (or --merge RUN ...)")
    data = LabelmapSet(args.labelmaps, args.native)
    targets = data.resolve(args.targets or data.heldout(), "target")
    pool = data.resolve(args.contexts or data.ids("train") + data.ids("validation"), "context")
    if set(targets) & set(pool):
        raise UsageError(f"maps {', '.join(sorted(set(targets) & set(pool)))} are both targets "
                         "and contexts; a target is never its own context")
    too_big = [L for L in args.context_sizes if L > len(pool)]
    if too_big:
        raise UsageError(f"--context-sizes {' '.join(map(str, too_big))}: larger than the pool "
                         f"of {len(pool)} context maps")
    for key in targets + (pool if "jlf" in args.methods else []):
        data.check_native(key)
        data.transforms(key)
    models = parse_models(args.model, "model" in args.methods)
    predictors = load_predictors(models, data, args)
    _make_folder(args.out)
    jlf = hm.JLFConfig(voxel_mm=args.jlf_voxel_mm, transform=args.jlf_transform,
                       reg_iterations=tuple(args.jlf_iterations), rad=args.jlf_patch_radius,
                       r_search=args.jlf_search_radius)
    evaluation = HeldoutRun(data, predictors, targets, pool, args.context_sizes, args.contrasts,
                            args.methods, args.seed, jlf, args.mini_context_size)
    start = time.perf_counter()
    rows = evaluation.run()
    total = time.perf_counter() - start
    info = {
        "generated_by": f"{PROGRAM} {__version__}",
        "command": " ".join([PROGRAM, *getattr(args, "argv", [])]),
        "grid": {"shape": list(data.grid.shape[:3]),
                 "voxel_size_mm": data.grid_spec.get("voxel_size_mm"),
                 "registration": data.registration},
        "config": {"targets": targets, "contexts": pool, "context_sizes": sorted(set(
            args.context_sizes)), "contrasts": args.contrasts, "methods": args.methods,
            "seed": args.seed, "structures": hm.structures(), "device": args.device,
            "precision": args.precision, "jlf": {**jlf.__dict__, "reg_iterations": list(
                jlf.reg_iterations)},
            "acquisition": {"bias": hm.BIAS, "noise": hm.NOISE}},
        "inputs": {"labelmaps": str(data.folder.resolve()),
                   "native": str(data.native_folder.resolve()), "sha256": data.sha256,
                   "models": {name: {"path": str(Path(p).resolve()), "sha256": file_sha256(p)}
                              for name, p in models.items()}},
        "context_orders": evaluation.orders, "contrast_draws": evaluation.contrast_draws,
        "threads": {"torch": torch.get_num_threads(),
                    "itk": os.environ.get("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS")},
        "timing": {"total_s": round(total, 1)}}
    summary = summarise(rows)
    paths = write_outputs(args.out, rows, summary, info)
    print(f"{PROGRAM}: {len(rows)} results in {total:.0f} s; wrote "
          f"{', '.join(str(p) for p in paths.values())}")
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    return run_with_exit_codes(PROGRAM, run, args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
