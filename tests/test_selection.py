"""Context selection (model/selection.py): NCC ranking and distinct context sets."""
import math

import numpy as np
import pytest
import torch

from neuroverse_bids.model.selection import check_request, context_sets, ncc, rank_pool
from neuroverse_bids.model.strategies import seeded_ordering, select

SHAPE = (12, 12, 12)


def _blob(seed=0):
    generator = np.random.default_rng(seed)
    image = np.zeros(SHAPE, np.float32)
    image[2:10, 2:10, 2:10] = 1 + generator.random((8, 8, 8), dtype=np.float32)
    return image


def test_ncc_is_contrast_invariant_and_signed():
    image = _blob()
    mask = image > 0
    assert ncc(image, image) == pytest.approx(1.0)
    assert ncc(image, 3 * image + 2, mask) == pytest.approx(1.0)
    assert ncc(image, -image, mask) == pytest.approx(-1.0, abs=1e-2)  # percentile clip
    assert ncc(image, np.ones(SHAPE, np.float32), mask) == 0.0        # constant: no signal


def test_ranking_follows_the_noise_level_and_breaks_ties_by_label():
    target = _blob()
    noise = np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32)
    pool = [target + level * noise for level in (0.8, 0.1, 0.4)] + [target + 0.1 * noise]
    ranked = rank_pool(torch.from_numpy(target), pool, ["c", "e", "a", "b"])
    assert [i for i, _ in ranked] == ["b", "e", "a", "c"]       # b and e tie: label order
    scores = [s for _, s in ranked]
    assert scores == sorted(scores, reverse=True) and scores[0] == scores[1] < 1
    # a mask restricts the comparison: outside it the images may differ arbitrarily
    mask = np.zeros(SHAPE)
    mask[3:9, 3:9, 3:9] = 1
    other = target.copy()
    other[mask == 0] = 5.0
    assert dict(rank_pool(target, [other], ["x"], mask=mask))["x"] > 0.99
    with pytest.raises(ValueError, match="resample"):
        rank_pool(target, [np.zeros((4, 4, 4))], ["x"])


def test_context_sets_are_disjoint_where_the_pool_allows_then_distinct():
    ordering = [f"s{i}" for i in range(6)]
    assert context_sets(ordering, 2, 1) == [["s0", "s1"]]
    assert context_sets(ordering, 2, 3) == [["s0", "s1"], ["s2", "s3"], ["s4", "s5"]]
    sets = context_sets(ordering, 4, 5)            # 6 // 4 = 1 window, then combinations
    assert sets[0] == ordering[:4] and len({tuple(s) for s in sets}) == 5
    assert all(len(set(s)) == 4 for s in sets)
    assert len(context_sets(ordering, 6, 1)) == 1
    with pytest.raises(ValueError, match="allows only 1"):
        context_sets(ordering, 6, 2)
    assert "only 3" in check_request(3, 4) and "at least 1" in check_request(5, 2, 0)
    assert check_request(5, 2, 10) is None and "allows only 10" in check_request(5, 2, 11)
    assert math.comb(6, 4) == 15 and check_request(6, 4, 15) is None


def test_select_random_is_seeded_and_similar_reports_every_score():
    ids = [f"sub-{i}" for i in range(5)]
    first = select("random", ids, 2, 2, seed=4)
    assert first == select("random", ids, 2, 2, seed=4) and first[1] is None
    order = torch.randperm(5, generator=torch.Generator().manual_seed(4)).tolist()
    assert first[0][0] == [ids[i] for i in order[:2]] == seeded_ordering(ids, 4)[:2]
    target = _blob(0)
    pool = [_blob(s) for s in range(1, 6)]
    pool[3] = target.copy()
    sets, scores = select("similar", ids, 2, 1, target=target, pool_images=pool)
    assert sets[0][0] == "sub-3" and set(scores) == set(ids) and scores["sub-3"] == pytest.approx(1)
    with pytest.raises(ValueError, match="selection must be"):
        select("best", ids, 2)


def test_a_registered_strategy_reaches_the_cli_the_spec_and_the_node():
    """One registered strategy is all it takes: the parser's choices, the spec's check, the
    ICL node's input and ``select`` accept it, and the docs table lists it."""
    from neuroverse_bids.cli.parser import build_parser
    from neuroverse_bids.context_spec import ContextSpec
    from neuroverse_bids.model import strategies
    from neuroverse_bids.workflows.interfaces.icl import InContextPredict

    def reverse(ids, **_):
        return sorted(map(str, ids), reverse=True), None

    strategy = strategies.SelectionStrategy(name="reverse-test", summary="ids backwards",
                                            order=reverse)
    strategies.register(strategy)
    try:
        args = build_parser().parse_args(["in", "out", "participant", "--context-selection",
                                          "reverse-test"])
        assert args.context_selection == "reverse-test"
        spec = ContextSpec(task="generation", degradation="gaussian-noise",
                           selection="reverse-test")
        assert spec.check() is spec
        assert InContextPredict(selection="reverse-test").inputs.selection == "reverse-test"
        sets, scores = select("reverse-test", ["01", "02", "03"], size=2)
        assert sets == [["03", "02"]] and scores is None
        assert "| `reverse-test` | ids backwards |" in strategies.docs_table()
    finally:
        strategies._REGISTRY.unregister("reverse-test")


def test_the_readme_table_is_the_registry():
    from pathlib import Path

    from neuroverse_bids.model.strategies import docs_table

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert docs_table() in readme


def test_similar_top_keeps_every_member_near_the_top_of_the_ranking():
    """Members of similar-top overlap (stride L // K) instead of walking down the ranking."""
    from neuroverse_bids.model.strategies.similar_top import sliding_windows

    ranking = [f"{i:02d}" for i in range(16)]
    disjoint = context_sets(ranking, 4, 4)
    sliding = sliding_windows(ranking, 4, 4)
    assert disjoint[-1] == ranking[12:16] and sliding[-1] == ranking[3:7]
    assert sliding_windows(ranking, 8, 4)[1] == ranking[2:10]
    assert len({tuple(s) for s in sliding}) == 4
    with pytest.raises(ValueError, match="need 7 ranked subjects"):
        sliding_windows(ranking[:6], 4, 4)
    target = torch.rand(SHAPE)
    pool = torch.stack([target + 0.05 * i * torch.rand(SHAPE) for i in range(8)])
    ids = [f"s{i}" for i in range(8)]
    sets, scores = select("similar-top", ids, size=3, members=3, target=target,
                          pool_images=pool)
    best = [i for i, _ in rank_pool(target, pool, ids)]
    assert sets == [best[0:3], best[1:4], best[2:5]] and set(scores) == set(ids)
