"""Context ensembles (model/ensemble.py): running sums, exact K = 1, flip, uncertainty."""
import itertools

import pytest
import torch

from neuroverse_bids.model.ensemble import (RunningMoments, boundary_band, predict_ensemble,
                                            predict_from_pool, structure_uncertainty)
from neuroverse_bids.model.predictor import Predictor

SHAPE = (8, 8, 8)


def _members(count, structures=2, pairs=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.rand((pairs, *SHAPE), generator=generator),
             (torch.rand((structures, pairs, *SHAPE), generator=generator) > 0.5).float())
            for _ in range(count)]


def test_running_moments_match_the_stacked_statistics():
    values = [torch.randn(3, *SHAPE, generator=torch.Generator().manual_seed(i)) for i in range(5)]
    moments = RunningMoments()
    for value in values:
        moments.add(value)
    stacked = torch.stack(values)
    assert torch.allclose(moments.mean, stacked.mean(0), atol=1e-6)
    assert torch.allclose(moments.std, stacked.std(0, unbiased=False), atol=1e-5)
    assert torch.equal(moments.votes, (stacked > 0.5).sum(0).to(torch.uint8))
    one = RunningMoments()
    one.add(torch.tensor([-0.0, 1e-30, -2.5]))
    assert one.mean.numpy().tobytes() == torch.tensor([-0.0, 1e-30, -2.5]).numpy().tobytes()


def test_one_member_is_the_prediction_bit_for_bit(tiny_model):
    predictor = Predictor(tiny_model.float(), device="cpu", precision="float32")
    target = torch.rand(SHAPE)
    images, labels = _members(1)[0]
    single = predictor.predict(target, images, labels)
    result = predict_ensemble(predictor, target, [(images, labels)])
    assert result.members == 1 and torch.equal(result.mean, single)
    assert not result.std.any()
    assert structure_uncertainty(result) == [{"boundary_spread": 0.0, "disagreement": 0.0}] * 2
    # K members: the mean and spread of the K separate predictions
    members = _members(3, seed=1)
    outputs = torch.stack([predictor.predict(target, i, l) for i, l in members])
    seen = []
    result = predict_ensemble(predictor, target, members, on_member=lambda k, o: seen.append(k))
    assert seen == [0, 1, 2] and result.members == 3
    assert torch.allclose(result.mean, outputs.mean(0), atol=1e-6)
    assert torch.allclose(result.std, outputs.std(0, unbiased=False), atol=1e-5)


class _MirrorAware:
    """A stand-in predictor: target x (mean label of the pairs), so mirroring commutes."""

    def __init__(self):
        self.calls = []

    def predict(self, target, images, labels):
        self.calls.append((target.clone(), labels[0] if not torch.is_tensor(labels) else labels))
        labels = torch.stack([torch.as_tensor(labels[i]) for i in range(len(labels))]) \
            if not torch.is_tensor(labels) else labels
        return target * labels.mean(-4)


def test_flipped_member_mirrors_inputs_and_output_back():
    target = torch.rand(SHAPE)
    images, labels = _members(1, structures=1)[0]
    labels = labels[0]
    stand_in = _MirrorAware()
    result = predict_ensemble(stand_in, target, [(images, labels)], flip=True)
    assert result.members == 2 and len(stand_in.calls) == 2
    assert torch.equal(stand_in.calls[1][0], target.flip(0))
    assert torch.allclose(result.std, torch.zeros(SHAPE), atol=1e-6)   # equivariant stand-in
    # contexts given as lazy sequences are mirrored when read
    lazy = predict_ensemble(_MirrorAware(), target, [(list(images), list(labels))], flip=True)
    assert torch.allclose(lazy.mean, result.mean)


def test_disagreement_is_one_minus_the_pooled_pairwise_dice():
    generator = torch.Generator().manual_seed(2)
    members = [(torch.rand(SHAPE, generator=generator) > 0.4).float() for _ in range(4)]
    moments = RunningMoments()
    for member in members:
        moments.add(member)
    result = type("R", (), {"mean": moments.mean, "std": moments.std, "votes": moments.votes,
                            "members": 4})
    pairs = list(itertools.combinations(members, 2))
    pooled = sum(2 * (a * b).sum() for a, b in pairs) / sum(a.sum() + b.sum() for a, b in pairs)
    summary = structure_uncertainty(result)[0]
    assert summary["disagreement"] == pytest.approx(1 - float(pooled))
    band = boundary_band(moments.mean > 0.5)
    assert summary["boundary_spread"] == pytest.approx(float(moments.std[band].mean()))


def test_boundary_band_is_the_shell_on_both_sides():
    mask = torch.zeros(SHAPE, dtype=torch.bool)
    mask[2:6, 2:6, 2:6] = True
    band = boundary_band(mask)
    assert band[2, 2, 2] and band[1, 3, 3] and not band[3, 3, 3] and not band[0, 0, 0]
    assert int(band.sum()) == 6 ** 3 - 2 ** 3


def test_a_failing_member_raises():
    class Failing:
        def predict(self, *args):
            raise RuntimeError("member failed")

    with pytest.raises(RuntimeError, match="member failed"):
        predict_ensemble(Failing(), torch.rand(SHAPE), _members(2))
    with pytest.raises(ValueError, match="at least one"):
        predict_ensemble(Failing(), torch.rand(SHAPE), [])


def test_predict_from_pool_selects_excludes_and_ensembles(tiny_model):
    from neuroverse_bids.model.selection import rank_pool

    predictor = Predictor(tiny_model.float(), device="cpu", precision="float32")
    generator = torch.Generator().manual_seed(5)
    images = torch.rand((6, *SHAPE), generator=generator)
    labels = (torch.rand((2, 6, *SHAPE), generator=generator) > 0.5).float()
    ids = [f"s{i}" for i in range(6)]
    target = images[0] + 0.05 * torch.rand(SHAPE, generator=generator)
    result, sets, scores = predict_from_pool(predictor, target, images, labels, ids, size=2,
                                             members=2, selection="similar", exclude=["s0"])
    assert "s0" not in scores and len(scores) == 5
    ranked = [i for i, _ in rank_pool(target, images[1:], ids[1:])]
    assert sets == [ranked[:2], ranked[2:4]]
    expected = [predictor.predict(target, images[[ids.index(s) for s in subset]],
                                  labels[:, [ids.index(s) for s in subset]]) for subset in sets]
    assert torch.allclose(result.mean, (expected[0] + expected[1]) / 2, atol=1e-6)
    # random with the caller's ordering, one member: exactly the plain prediction
    single, sets, scores = predict_from_pool(predictor, target, images, labels[0], ids, size=3,
                                             ordering=["s0", "s4", "s2", "s5", "s1", "s3"],
                                             exclude=["s0"])
    assert sets == [["s4", "s2", "s5"]] and scores is None
    plain = predictor.predict(target, images[[4, 2, 5]], labels[0][[4, 2, 5]])
    assert torch.equal(single.mean, plain)
    with pytest.raises(ValueError, match="allows only 1"):
        predict_from_pool(predictor, target, images, labels, ids, size=5, members=2,
                          exclude=["s0"])


def test_icl_node_selects_and_ensembles_out_of_a_pool(tmp_path):
    """InContextPredict: defaults are one plain prediction; with selection/ensemble the set
    is a pool, the outputs are the members' mean and the spread maps are written."""
    import json

    import nibabel as nb
    import numpy as np

    from neuroverse_bids.model import Neuroverse3D, load_checkpoint, save_checkpoint
    from neuroverse_bids.workflows.interfaces.icl import InContextPredict

    torch.manual_seed(0)
    checkpoint = save_checkpoint(Neuroverse3D(channels=(4, 8)), tmp_path / "m.safetensors")
    generator = torch.Generator().manual_seed(3)
    images = torch.rand((5, *SHAPE), generator=generator)
    outputs = (torch.rand((2, 5, *SHAPE), generator=generator) > 0.5).float()
    subjects = ["01", "02", "03", "04", "05"]
    np.savez(tmp_path / "pool.npz", images=images.numpy(), outputs=outputs.numpy(),
             subjects=np.asarray(subjects))
    target = images[1] + 0.05 * torch.rand(SHAPE, generator=generator)
    nb.save(nb.Nifti1Image(target.numpy(), np.eye(4)), str(tmp_path / "target.nii.gz"))
    common = dict(target=str(tmp_path / "target.nii.gz"), context_set=str(tmp_path / "pool.npz"),
                  model=str(checkpoint), output_names=["a", "b"], device="cpu",
                  precision="float32")
    predictor = Predictor(load_checkpoint(checkpoint), device="cpu", precision="float32")

    def run(folder, **inputs):
        node = InContextPredict(**common, **inputs)
        (tmp_path / folder).mkdir()
        return node.run(cwd=str(tmp_path / folder)).outputs

    plain = run("plain")
    expected = predictor.predict(target, images, outputs)
    assert plain.spread_files == [] and "uncertainty" not in plain.info
    for path, volume in zip(plain.out_files, expected):
        assert np.array_equal(np.asanyarray(nb.load(path).dataobj), volume.numpy())
    mine = run("ensemble", selection="similar", ensemble=2, num_contexts=2, exclude=["02"])
    result, sets, scores = predict_from_pool(predictor, target, images, outputs, subjects, 2, 2,
                                             "similar", exclude=["02"])
    info = mine.info
    assert info["context_sets"] == sets and "02" not in info["context_subjects"]
    assert set(info["similarity"]) == {s for subset in sets for s in subset}
    assert info["ensemble"] == 2 and set(info["uncertainty"]) == {"a", "b"}
    assert json.loads((tmp_path / "ensemble" / "info.json").read_text())["context_sets"] == sets
    for path, spread, mean in zip(mine.spread_files, result.std, result.mean):
        assert np.allclose(np.asanyarray(nb.load(path).dataobj), spread.numpy())
    for path, mean in zip(mine.out_files, result.mean):
        assert np.allclose(np.asanyarray(nb.load(path).dataobj), mean.numpy(), atol=1e-6)
