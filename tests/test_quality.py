"""Quality signals (model/quality_signals), the per-subject quality estimate and the
probability calibration (model/quality.py)."""
import math
import random

import pytest
import torch

from neuroverse_bids.model import quality_signals
from neuroverse_bids.model.ensemble import EnsembleResult
from neuroverse_bids.model.quality import ProbabilityCalibration, QualityModel, _isotonic
from neuroverse_bids.model.quality_signals import SignalInputs, compute_signals, signal_names
from neuroverse_bids.model.selection import ncc
from neuroverse_bids.model.self_evaluation import Case

SHAPE = (8, 8, 8)


def _cube(start, size=4):
    volume = torch.zeros(SHAPE)
    volume[start:start + size, 2:6, 2:6] = 1
    return volume


def _inputs(prediction, contexts):
    """One structure: a single-member result and ``contexts`` label volumes."""
    mean = prediction[None]
    result = EnsembleResult(mean, torch.zeros_like(mean), (mean > 0.5).to(torch.uint8), 1)
    images = torch.rand((len(contexts),) + SHAPE, generator=torch.Generator().manual_seed(0))
    return SignalInputs(result, images[0], images, torch.stack(contexts)[None])


def test_the_registry_holds_one_signal_per_module():
    assert set(signal_names()) == {"boundary_spread", "disagreement", "local_similarity",
                                   "relative_volume", "similarity", "soft_dice",
                                   "volume_deviation", "vote_agreement"}
    table = quality_signals.docs_table()
    assert all(f"| `{name}` |" in table for name in signal_names())


def test_signals_of_a_confident_mask_that_matches_its_contexts():
    signals = compute_signals(_inputs(_cube(2), [_cube(2), _cube(1), _cube(3)]), ["cube"])
    values = signals["cube"]
    assert values["soft_dice"] == 1.0               # a binary map expects its own mask
    assert values["volume_deviation"] == 0.0        # the contexts' median volume
    assert values["vote_agreement"] == 1.0          # the contexts' majority vote is cube(2)
    assert values["disagreement"] == 0.0 and values["boundary_spread"] == 0.0   # one member
    inputs = _inputs(_cube(2), [_cube(2)] * 3)
    expected = sum(ncc(inputs.target, image) for image in inputs.contexts) / 3
    assert values["similarity"] == pytest.approx(expected, abs=1e-6)


def test_signals_flag_an_unsure_or_oversized_mask():
    unsure = compute_signals(_inputs(_cube(2) * 0.6, [_cube(2)] * 3), ["cube"])["cube"]
    assert unsure["soft_dice"] == pytest.approx(2 * 0.6 * 64 / (0.6 * 64 + 64))
    big = compute_signals(_inputs(_cube(0, 8), [_cube(2)] * 3), ["cube"])["cube"]
    assert big["volume_deviation"] == pytest.approx(math.log(129 / 65), abs=1e-6)
    assert big["relative_volume"] == big["volume_deviation"]
    small = compute_signals(_inputs(_cube(2, 2), [_cube(2)] * 3), ["cube"])["cube"]
    assert small["relative_volume"] == pytest.approx(math.log(33 / 65), abs=1e-6)
    assert small["volume_deviation"] == pytest.approx(-small["relative_volume"])
    assert big["vote_agreement"] == pytest.approx(2 * 64 / (128 + 64))
    # around the mask only: a context equal to the target there scores 1, however it differs
    # elsewhere (there its voxels are the target's, shuffled: the same intensity distribution)
    mask = torch.zeros(16, 16, 16)
    mask[6:10, 6:10, 6:10] = 1
    target = torch.rand(16, 16, 16, generator=torch.Generator().manual_seed(1))
    region = torch.zeros(16, 16, 16, dtype=torch.bool)
    region[3:13, 3:13, 3:13] = True                  # the mask grown by 3 voxels
    context = target.clone()
    outside = target[~region]
    context[~region] = outside[torch.randperm(len(outside), generator=torch.Generator()
                                              .manual_seed(2))]
    result = EnsembleResult(mask[None], torch.zeros(1, 16, 16, 16), mask[None].byte(), 1)
    local = compute_signals(SignalInputs(result, target, context[None], mask[None, None]),
                            ["cube"])["cube"]
    assert local["local_similarity"] == pytest.approx(1.0, abs=1e-6)
    assert local["similarity"] < 0.99


def test_a_new_signal_is_one_registration():
    signal = quality_signals.QualitySignal("constant-test", "always 0.5",
                                           lambda inputs: [0.5])
    quality_signals.register(signal)
    try:
        assert compute_signals(_inputs(_cube(2), [_cube(2)]), ["cube"])["cube"][
            "constant-test"] == 0.5
    finally:
        quality_signals._REGISTRY.unregister("constant-test")


def _cases(seed=0, subjects=16):
    """Dice = structure base + 0.1 * similarity deviation + small noise; a constant signal."""
    rng = random.Random(seed)
    cases = []
    for structure, base in (("a", 0.8), ("b", 0.6)):
        for i in range(subjects):
            similarity = rng.gauss(0.7, 0.1)
            dice = base + 1.0 * (similarity - 0.7) + rng.gauss(0, 0.01)
            cases.append(Case(f"{i:02d}", structure, dice, "",
                              {"similarity": similarity, "disagreement": 0.0,
                               "noise": rng.gauss(0, 1)}))
    return cases


def test_the_quality_model_learns_the_within_structure_trend():
    model = QualityModel.fit(_cases())
    for weights in (model.pooled, *model.weights.values()):
        assert weights["disagreement"] == 0.0          # constant: no weight
        assert weights["similarity"] > 5 * abs(weights["noise"])
    test = _cases(seed=1)
    for structure in ("a", "b"):
        mine = [c for c in test if c.structure == structure]
        predicted = [model.predict(structure, c.signals)["predicted_dice"] for c in mine]
        errors = [abs(p - c.dice) for p, c in zip(predicted, mine)]
        assert sum(errors) / len(errors) < 0.03
        order = sorted(range(len(mine)), key=lambda i: predicted[i])
        assert mine[order[0]].dice < mine[order[-1]].dice
    assert 0.005 < model.residual_sd < 0.03   # cross-validated: about the cases' noise (0.01)
    row = model.predict("a", {"similarity": model.centres["a"]["similarity"]})
    assert row["interval_low"] < row["predicted_dice"] < row["interval_high"]
    assert row["predicted_dice"] == pytest.approx(model.expected["a"])  # the mean case
    with pytest.raises(KeyError):
        model.predict("unknown", {})


def test_isotonic_regression_pools_violators():
    assert _isotonic([0.1, 0.3, 0.2, 0.5], [1, 1, 1, 1]) == pytest.approx([0.1, 0.25, 0.25, 0.5])
    assert _isotonic([0.5, 0.1], [3, 1]) == pytest.approx([0.4, 0.4])


def _ece(probability, truth, bins=10):
    index = (probability * bins).long().clamp_max(bins - 1)
    total = 0.0
    for b in range(bins):
        where = index == b
        if where.any():
            total += float(where.sum()) * abs(float(probability[where].mean())
                                              - float(truth[where].float().mean()))
    return total / probability.numel()


def test_calibration_halves_the_error_of_an_overconfident_map():
    generator = torch.Generator().manual_seed(0)

    def sample(n):  # the map says p, the truth happens with probability p ** 2
        p = torch.rand(n, generator=generator)
        return p, torch.rand(n, generator=generator) < p ** 2

    calibration = ProbabilityCalibration()
    p, y = sample(200_000)
    calibration.add("s", p, y)
    calibration.fit()
    p, y = sample(200_000)
    calibrated = calibration.apply("s", p)
    assert _ece(calibrated, y) < 0.5 * _ece(p, y)
    assert torch.all(calibrated[p.argsort()].diff() >= -1e-6)       # monotone
    assert torch.equal(calibration.apply("other", p), p)            # no map: unchanged
    again = ProbabilityCalibration.from_dict(calibration.to_dict())
    assert torch.allclose(again.apply("s", p), calibrated, atol=1e-5)


def test_each_structure_may_weigh_a_signal_its_own_way():
    rng = random.Random(3)
    cases = []
    for structure, slope in (("up", 1.0), ("down", -1.0)):
        for i in range(20):
            signal = rng.gauss(0, 0.1)
            cases.append(Case(f"{i:02d}", structure, 0.7 + slope * signal, "", {"x": signal}))
    model = QualityModel.fit(cases)
    assert model.weights["up"]["x"] > 0 > model.weights["down"]["x"]
    assert model.predict("up", {"x": 0.1})["predicted_dice"] > model.expected["up"]
    assert model.predict("down", {"x": 0.1})["predicted_dice"] < model.expected["down"]


def test_the_readme_table_is_the_signal_registry():
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert quality_signals.docs_table() in readme


def test_suggestions_rank_by_gain_and_cover_the_unlabelled():
    from neuroverse_bids.model.quality import expected_gain, rank_suggestions

    candidates = {"a": (0.5, 0.2), "b": (0.5, 0.3), "c": (0.9, 0.9), "d": (0.5, 0.25)}
    alone = rank_suggestions(candidates, 4)
    assert [r["subject"] for r in alone] == ["a", "d", "b", "c"]
    assert alone[0]["expected_gain"] == pytest.approx(expected_gain(0.5, 0.2))
    # b resembles a and d (both poorly served): labelling b serves all three, then c is left
    similar = {("a", "b"): 0.9, ("b", "d"): 0.9, ("a", "d"): 0.8, ("c", "a"): 0.0}
    covered = rank_suggestions(candidates, 2, similar)
    assert covered[0]["subject"] == "b" and "2 other unlabelled subjects" in covered[0]["why"]
    assert covered[0]["expected_gain"] == pytest.approx(0.5 * 0.7 + 0.5 * 0.7 + 0.5 * 0.65)
    # after b, a and d are near a labelled subject: their gains shrink, so the second pick
    # is whichever still gains most
    assert covered[1]["expected_gain"] < covered[0]["expected_gain"]
