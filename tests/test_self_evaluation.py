"""Leave-one-out self-evaluation of a labelled pool (model/self_evaluation.py)."""
import pytest
import torch

from neuroverse_bids.model.self_evaluation import (dice_score, leave_one_out, mean_interval,
                                                   summarise)

SHAPE = (8, 8, 8)


class VotePredictor:
    """Predicts the context labels' mean (a majority-vote model): known Dice, no network."""

    def predict(self, target, images, labels):
        labels = torch.as_tensor(labels).float()
        return labels.mean(-4) if labels.dim() == 5 else labels.mean(0)


def _pool(n=5):
    torch.manual_seed(0)
    images = torch.rand((n,) + SHAPE)
    cube = torch.zeros(SHAPE)
    cube[2:6, 2:6, 2:6] = 1
    moving = torch.zeros((n,) + SHAPE)
    for i in range(n):  # structure 2 shifts with the subject: the vote misses the odd ones
        moving[i, i % 2:i % 2 + 4, 2:6, 2:6] = 1
    labels = torch.stack([cube.expand((n,) + SHAPE), moving])           # [K=2, N, ...]
    return images, labels, [f"{i:02d}" for i in range(n)]


def test_every_subject_is_segmented_from_the_others_only():
    images, labels, ids = _pool()
    cases = leave_one_out(VotePredictor(), images, labels, ids, ["cube", "moving"], size=3)
    assert len(cases) == len(ids) * 2
    assert all(c.subject not in c.contexts.split(",") for c in cases)
    assert all(len(c.contexts.split(",")) == 3 for c in cases)
    cube = [c.dice for c in cases if c.structure == "cube"]
    assert cube == [1.0] * len(ids)  # every subject has the same cube: the vote is exact
    moving = {c.subject: c.dice for c in cases if c.structure == "moving"}
    for subject, value in moving.items():
        index = ids.index(subject)
        contexts = next(c for c in cases if c.subject == subject).contexts.split(",")
        vote = labels[1, [ids.index(s) for s in contexts]].mean(0)
        assert value == pytest.approx(dice_score(vote, labels[1, index]))
    assert min(moving.values()) < 1.0


def test_summary_gives_the_mean_an_interval_and_a_warning():
    images, labels, ids = _pool(6)
    cases = leave_one_out(VotePredictor(), images, labels, ids, ["cube", "moving"], size=3)
    rows = {r["structure"]: r for r in summarise(cases, ["cube", "moving"], low_dice=0.99)}
    moving = [c.dice for c in cases if c.structure == "moving"]
    assert rows["moving"]["expected_dice"] == pytest.approx(sum(moving) / len(moving), abs=1e-4)
    assert rows["moving"]["interval_low"] <= rows["moving"]["expected_dice"] <= \
        rows["moving"]["interval_high"]
    assert rows["cube"]["warning"] == "" and "low" in rows["moving"]["warning"]
    assert rows["moving"]["n"] == 6


def test_small_samples_get_a_bootstrap_interval_of_the_mean():
    interval = mean_interval([0.5, 0.7, 0.9], seed=1)
    assert interval["expected_dice"] == pytest.approx(0.7)
    assert 0.5 <= interval["interval_low"] < 0.7 < interval["interval_high"] <= 0.9


def test_a_real_model_runs_leave_one_out_with_an_ensemble(tiny_model):
    import copy

    from neuroverse_bids.model.predictor import Predictor

    images, labels, ids = _pool(5)
    predictor = Predictor(copy.deepcopy(tiny_model).float(), device="cpu", precision="float32")
    cases = leave_one_out(predictor, images, labels, ids, ["cube", "moving"], size=2,
                          selection="similar", members=2)
    assert len(cases) == 10 and all(0.0 <= c.dice <= 1.0 for c in cases)
    assert all(0.0 <= c.signals["disagreement"] <= 1.0 and -1.0 <= c.signals["similarity"] <= 1.0
               for c in cases)
