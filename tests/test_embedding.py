"""``init_neuroverse3d_wf`` embedded in a user's own Nipype workflow."""

import nibabel as nb
import numpy as np
import torch
from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from neuroverse_bids.context_set import ContextPair
from neuroverse_bids.model import Neuroverse3D, save_checkpoint
from neuroverse_bids.model.options import InferenceOptions
from neuroverse_bids.workflows.base import init_context_set_wf, init_neuroverse3d_wf
from neuroverse_bids.workflows.geometry import model_grid
from neuroverse_bids.workflows.templates import get_template


def _mask_voxels(masks):
    """A downstream step of the host pipeline: voxel counts of the masks."""
    import nibabel as nb
    import numpy as np

    return [int(np.count_nonzero(np.asanyarray(nb.load(m).dataobj))) for m in masks]


def test_workflow_embeds_in_a_host_pipeline(demo_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(demo_dataset / "templateflow"))
    template = get_template("MNI152NLin2009aSym")
    grid = tmp_path / "grid.nii.gz"
    nb.save(model_grid(nb.load(str(template["brain_mask"])), 16, 12.0), str(grid))
    torch.manual_seed(0)
    model = save_checkpoint(Neuroverse3D(channels=(4, 8, 8)), tmp_path / "m.safetensors")

    labels = demo_dataset / "derivatives" / "labels"
    pairs = [ContextPair(s, demo_dataset / "bids" / f"sub-{s}" / "anat" / f"sub-{s}_T1w.nii.gz",
                         [labels / f"sub-{s}" / "anat" / f"sub-{s}_desc-brain_mask.nii.gz"], [None])
             for s in ("02", "03")]
    host = pe.Workflow(name="host_wf", base_dir=str(tmp_path / "work"))
    source = pe.Node(niu.IdentityInterface(fields=["t1w"]), name="host_source")
    source.inputs.t1w = str(demo_dataset / "bids" / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
    context_wf = init_context_set_wf(pairs=pairs, subsets={"all": ["02", "03"]}, task="segmentation",
                                     sloppy=True)
    context_wf.inputs.inputnode.template_file = str(template["t1w"])
    context_wf.inputs.inputnode.grid_reference = str(grid)
    icl_wf = init_neuroverse3d_wf(output_names=["brain"], task="segmentation", model=str(model),
                                  inference=InferenceOptions(device="cpu", precision="float32"), sloppy=True)
    icl_wf.inputs.inputnode.template_file = str(template["t1w"])
    icl_wf.inputs.inputnode.grid_reference = str(grid)
    count = pe.Node(niu.Function(function=_mask_voxels, input_names=["masks"], output_names=["voxels"]),
                    name="host_count")
    host.connect([
        (source, icl_wf, [("t1w", "inputnode.in_file")]),
        (context_wf, icl_wf, [("outputnode.all", "inputnode.context_set")]),
        (icl_wf, count, [("outputnode.native_masks", "masks")]),
    ])
    graph = host.run(plugin="Linear")
    nodes = {n.fullname: n for n in graph.nodes()}
    counted = nodes["host_wf.host_count"].result.outputs.voxels
    masks = nodes["host_wf.neuroverse3d_wf.native_masks"].result.outputs.masks
    native = nb.load(str(source.inputs.t1w))
    out = nb.load(masks[0])
    assert out.shape == native.shape and np.allclose(out.affine, native.affine)
    assert counted == [int(np.count_nonzero(np.asanyarray(out.dataobj)))]
    info = nodes["host_wf.neuroverse3d_wf.icl"].result.outputs.info
    assert info["context_subjects"] == ["02", "03"] and info["precision"] == "float32"
