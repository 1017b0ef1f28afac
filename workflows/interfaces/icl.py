"""Interfaces around the model: intensity normalisation, context stacking, the ICL node."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from ...model.intensity import normalise_intensity
from ..niftiio import load_volume, node_file, write_nifti_atomic
from ..prediction_info import PredictionInfo


class _NormaliseInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="volume on the model grid")


class _NormaliseOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="float32 volume in [0, 1]")


class NormaliseIntensity(SimpleInterface):
    """0.5-99.5 percentile clip, then min-max to [0, 1] (``model.intensity``)."""

    input_spec = _NormaliseInputSpec
    output_spec = _NormaliseOutputSpec

    def _run_interface(self, runtime):
        img, data = load_volume(self.inputs.in_file)
        self._results["out_file"] = str(write_nifti_atomic(
            normalise_intensity(data), img, node_file(runtime, "normalised.nii.gz")))
        return runtime


class _StackInputSpec(BaseInterfaceInputSpec):
    images = InputMultiObject(File(exists=True), mandatory=True,
                              desc="L context images on the model grid")
    outputs = traits.List(traits.List(File(exists=True)), mandatory=True,
                          desc="per context pair, its K outputs on the grid (empty: degradation)")
    subjects = traits.List(traits.Str, mandatory=True, desc="subject label of each pair")
    task = traits.Enum("segmentation", "generation", mandatory=True)
    degradation = traits.Str("", usedefault=True, desc="synthetic pairs: degradation name")
    seed = traits.Int(0, usedefault=True, desc="seed of the synthetic degradations")


class _StackOutputSpec(TraitedSpec):
    context_set = File(exists=True, desc="npz: images [L,D,H,W], outputs [K,L,D,H,W], subjects")


class StackContextSet(SimpleInterface):
    """Normalise and stack the registered context pairs into one file (built once per run).

    Segmentation labels are thresholded at 0.5 after resampling; generation outputs are
    normalised like images; for a degradation, the input is the degraded clean image.
    """

    input_spec = _StackInputSpec
    output_spec = _StackOutputSpec

    def _run_interface(self, runtime):
        images = np.stack([normalise_intensity(load_volume(p)[1]) for p in self.inputs.images])
        if self.inputs.degradation:
            import torch

            from ...model.degradations import degrade

            clean = images
            degraded = []
            for index, image in enumerate(clean):
                generator = torch.Generator().manual_seed(self.inputs.seed * 1000 + index)
                degraded.append(degrade(self.inputs.degradation, torch.from_numpy(image), generator).numpy())
            images, outputs = np.stack(degraded).astype(np.float32), clean[None]
        else:
            per_pair = []
            for files in self.inputs.outputs:
                volumes = [load_volume(f)[1] for f in files]
                if self.inputs.task == "segmentation":
                    per_pair.append([(v >= 0.5).astype(np.float32) for v in volumes])
                else:
                    per_pair.append([normalise_intensity(v) for v in volumes])
            outputs = np.asarray(per_pair, dtype=np.float32).transpose(1, 0, 2, 3, 4)  # [K, L, ...]
        out = node_file(runtime, "context_set.npz")
        np.savez(out, images=images.astype(np.float32), outputs=outputs,
                 subjects=np.asarray(self.inputs.subjects))
        self._results["context_set"] = out
        return runtime


class _SelectInputSpec(BaseInterfaceInputSpec):
    context_pool = File(exists=True, mandatory=True,
                        desc="stacked pool (npz of StackContextSet, e.g. from the context cache)")
    subjects = traits.List(traits.Str, mandatory=True, minlen=1,
                           desc="the pool subjects to use, in this order")


class SelectContextSet(SimpleInterface):
    """One target's context set: the given subjects' pairs out of a stacked pool."""

    input_spec = _SelectInputSpec
    output_spec = _StackOutputSpec

    def _run_interface(self, runtime):
        with np.load(self.inputs.context_pool) as pool:
            images, outputs = pool["images"], pool["outputs"]
            where = {str(s): i for i, s in enumerate(pool["subjects"])}
        missing = [s for s in self.inputs.subjects if s not in where]
        if missing:
            raise ValueError(f"{self.inputs.context_pool}: subjects {missing} are not in the pool")
        index = [where[s] for s in self.inputs.subjects]
        out = node_file(runtime, "context_set.npz")
        np.savez(out, images=images[index], outputs=outputs[:, index],
                 subjects=np.asarray(self.inputs.subjects))
        self._results["context_set"] = out
        return runtime


class _PredictInputSpec(BaseInterfaceInputSpec):
    target = File(exists=True, mandatory=True, desc="normalised target on the model grid")
    context_set = File(exists=True, mandatory=True, desc="from StackContextSet")
    model = File(exists=True, mandatory=True, desc="checkpoint (.ckpt or .safetensors)")
    output_names = traits.List(traits.Str, mandatory=True, desc="one name per output (K)")
    device = traits.Str("auto", usedefault=True)
    precision = traits.Str("auto", usedefault=True)
    mini_context_size = traits.Either(traits.Int, traits.Str, default="auto", usedefault=True)
    mem_gb = traits.Either(None, traits.Float, default=None, usedefault=True)
    selection = traits.Str("random", usedefault=True,
                           desc="a registered selection strategy (model.strategies): random "
                                "takes the set's first num_contexts pairs (in its seeded order) "
                                "but the target's; similar the most similar by NCC")
    ensemble = traits.Range(low=1, value=1, usedefault=True,
                            desc="members: distinct context sets out of the set, run one by one")
    num_contexts = traits.Int(0, usedefault=True, desc="pairs per member; 0: the whole set")
    exclude = traits.List(traits.Str, desc="subjects never used as context (the target's own)")
    similarity_mask = File(exists=True, desc="mask on the model grid for similar (the template "
                           "brain); default: the target's nonzero voxels")
    quality_signals = traits.Bool(False, usedefault=True,
                                  desc="segmentation: record every registered quality signal per "
                                       "structure and the target's NCC to each context subject")


class _PredictOutputSpec(TraitedSpec):
    out_files = traits.List(File(exists=True), desc="K float32 outputs on the model grid (always a list)")
    spread_files = traits.List(File(exists=True), desc="ensemble > 1: K per-voxel standard "
                               "deviations across the members (else empty)")
    info = traits.Dict(desc="model, precision, mini-context size, contexts, timings (s)")


class InContextPredict(SimpleInterface):
    """The ICL node: APSP inference through the one :class:`Predictor`.

    With the defaults (random, one member, the whole set) it is one prediction with the
    stacked set, as always. Otherwise the set is a pool: ``ensemble`` distinct context sets
    of ``num_contexts`` pairs are chosen from it (:func:`~...model.ensemble.predict_from_pool`)
    and the outputs are the members' mean; ``spread_files`` hold the per-voxel spread and
    ``info`` the sets, the similarity scores and per-structure uncertainty summaries.
    """

    input_spec = _PredictInputSpec
    output_spec = _PredictOutputSpec

    def _run_interface(self, runtime):
        import torch

        from ...model import load_checkpoint
        from ...model.predictor import Predictor

        start = time.perf_counter()
        img, target = load_volume(self.inputs.target)
        with np.load(self.inputs.context_set) as stack:
            images, outputs, subjects = stack["images"], stack["outputs"], stack["subjects"]
        subjects_all = [str(s) for s in subjects]
        if outputs.shape[0] != len(self.inputs.output_names):
            raise ValueError(f"{self.inputs.context_set}: {outputs.shape[0]} outputs but "
                             f"{len(self.inputs.output_names)} names")
        model = load_checkpoint(self.inputs.model)
        predictor = Predictor(model, device=self.inputs.device, precision=self.inputs.precision,
                              mini_context_size=self.inputs.mini_context_size,
                              **({"memory_gb": self.inputs.mem_gb} if self.inputs.mem_gb else {}))
        loaded = time.perf_counter()
        plain = (self.inputs.selection == "random" and self.inputs.ensemble == 1
                 and not self.inputs.num_contexts and not self.inputs.exclude)
        spreads, extra = [], {}
        mask = (load_volume(self.inputs.similarity_mask)[1] > 0
                if isdefined(self.inputs.similarity_mask) else None)
        if plain:
            from ...model.ensemble import single_member

            ensemble = single_member(predictor.predict(
                torch.from_numpy(target), torch.from_numpy(images), torch.from_numpy(outputs)))
            result, used = ensemble.mean.numpy(), subjects_all
        else:
            from ...model.ensemble import predict_from_pool, structure_uncertainty

            pool = [s for s in subjects_all if s not in set(self.inputs.exclude)]
            ensemble, sets, scores = predict_from_pool(
                predictor, torch.from_numpy(target), torch.from_numpy(images),
                torch.from_numpy(outputs), subjects_all,
                self.inputs.num_contexts or len(pool), self.inputs.ensemble,
                self.inputs.selection, ordering=subjects_all,
                exclude=self.inputs.exclude, mask=mask)
            result = ensemble.mean.numpy()
            summaries = structure_uncertainty(ensemble)
            used = list(dict.fromkeys(s for subset in sets for s in subset))  # all used
            extra = dict(selection=self.inputs.selection, ensemble=ensemble.members,
                         context_sets=sets,
                         similarity={s: round(scores[s], 6) for s in sorted(
                             {s for subset in sets for s in subset})} if scores else None,
                         uncertainty=dict(zip(self.inputs.output_names, summaries)))
            if ensemble.members > 1:
                spreads = [str(write_nifti_atomic(volume.astype(np.float32), img,
                                                  node_file(runtime, f"{name}_spread.nii.gz")))
                           for name, volume in zip(self.inputs.output_names,
                                                   ensemble.std.numpy())]
        if self.inputs.quality_signals:
            extra.update(_quality_record(ensemble, target, images, outputs, subjects_all, used,
                                         self.inputs.output_names, mask,
                                         self.inputs.exclude if isdefined(self.inputs.exclude)
                                         else ()))
        done = time.perf_counter()
        files = []
        for name, volume in zip(self.inputs.output_names, result):
            files.append(str(write_nifti_atomic(volume.astype(np.float32), img,
                                                node_file(runtime, f"{name}.nii.gz"))))
        meta = model.metadata
        self._results["out_files"] = files
        self._results["spread_files"] = spreads
        self._results["info"] = PredictionInfo(
            model=Path(meta.get("source", self.inputs.model)).name,
            model_sha256=meta.get("sha256"),
            precision=predictor.precision.value,
            precision_reason=predictor.precision_reason,  # requested, or what auto found
            device=str(predictor.device),
            mini_context_size=getattr(predictor, "last_mini_context_size",
                                      self.inputs.mini_context_size),
            context_subjects=used,
            seconds_load=round(loaded - start, 3),
            seconds_inference=round(done - loaded, 3),
            **extra,
        ).to_dict()
        Path(runtime.cwd, "info.json").write_text(json.dumps(self._results["info"], indent=2))
        return runtime


def _quality_record(ensemble, target, images, outputs, subjects, used, names, mask,
                    exclude=()) -> dict:
    """``quality_signals`` (per structure, every registered signal of
    :mod:`...model.quality_signals`) and ``context_similarity`` (the target's NCC to every
    subject of its context set but the excluded, for the group level's label suggestions)."""
    import torch

    from ...model.quality_signals import SignalInputs, compute_signals
    from ...model.selection import ncc

    where = [subjects.index(s) for s in used]
    inputs = SignalInputs(ensemble, torch.from_numpy(target), torch.from_numpy(images[where]),
                          torch.from_numpy(outputs[:, where]), mask)
    return {"quality_signals": compute_signals(inputs, list(names)),
            "context_similarity": {s: round(ncc(target, images[i], mask), 6)
                                   for i, s in enumerate(subjects) if s not in set(exclude)}}
