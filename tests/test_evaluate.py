"""``neuroverse3d-eval`` end to end on a tiny synthetic set (16^3) and a tiny random model."""
import csv
import json
import math

import nibabel as nb
import numpy as np
import pytest
import torch

from neuroverse_bids.anatomy.dataset import write_dataset
from neuroverse_bids.evaluation.cli import main
from neuroverse_bids.evaluation.protocol import draw_seed, majority_vote, split_subjects
from neuroverse_bids.evaluation.report import COLUMNS
from neuroverse_bids.model import Neuroverse3D, save_checkpoint
from neuroverse_bids.model.intensity import normalise_intensity
from neuroverse_bids.model.training.synthesis import make_pair
from synthetic import phantom_atlas

SHAPE = (16, 16, 16)
DATASET = "tiny-synth"
DRAWS, SIZES = 2, (1, 2)


def _read_tsv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Two datasets of 5 subjects (t1, synth), a random 2-stage model with the data's grid."""
    root = tmp_path_factory.mktemp("eval")
    manifest = write_dataset(root / "data", {"tiny": phantom_atlas(SHAPE, voxel_mm=12.0)}, subjects=5, seed=3)
    torch.manual_seed(0)
    model = save_checkpoint(Neuroverse3D(channels=(4, 8)), root / "tiny.safetensors",
                            grid={"shape": list(SHAPE), "voxel_size_mm": 12.0,
                                  "template": "MNI152NLin2009aSym"})
    return root, manifest, model


def _args(manifest, model, out, *extra):
    return [str(manifest), str(out), "--model", str(model), "--draws", str(DRAWS),
            "--context-sizes", *map(str, SIZES), "16", "--datasets", DATASET, "--device", "cpu",
            "--seed", "0", *extra]


@pytest.fixture(scope="module")
def result(setup):
    root, manifest, model = setup
    out = root / "out"
    assert main(_args(manifest, model, out)) == 0
    return out, _read_tsv(out / "eval.tsv"), json.loads((out / "eval.json").read_text())


def test_table_shape_and_metric_ranges(setup, result):
    root, manifest, _ = setup
    out, rows, info = result
    structures = json.loads((manifest.parent / "structures.json").read_text())[DATASET]
    assert len(structures) >= 4 and info["config"]["structures"][DATASET] == structures
    # 5 subjects -> pool 4, test 1; L = 16 is larger than the pool: skipped and reported
    assert [len(info["splits"][DATASET][k]) for k in ("pool", "test")] == [4, 1]
    assert any("16" in s and DATASET in s for s in info["skipped"])
    per_draw = len(structures) * 2 + 2 * 2   # segmentation: K structures x 2 methods; 2 gen tasks
    assert len(rows) == len(SIZES) * DRAWS * per_draw
    header = (out / "eval.tsv").read_text().splitlines()[0].split("\t")
    assert tuple(header) == COLUMNS and all(len(r) == len(COLUMNS) for r in rows)
    assert {r["dataset"] for r in rows} == {DATASET}   # --datasets restricts
    assert {r["method"] for r in rows} == {"model", "majority-vote", "degraded-input"}
    assert {int(r["context_size"]) for r in rows} == set(SIZES)
    for r in rows:
        assert len(r["context"].split(",")) == int(r["context_size"])
        assert r["subject"] not in r["context"].split(",")
        value = float(r["value"])
        if r["metric"] == "dice":
            assert 0.0 <= value <= 1.0
        else:
            assert r["task"] in ("gaussian-noise", "inpainting") and math.isfinite(value)
    # segmentation: ONE predictor call per draw for all K structures (+1 per generation task)
    assert info["timing"]["predict_calls"] == len(SIZES) * DRAWS * 3
    assert info["model"]["sha256"] and info["model"]["architecture"]["channels"] == [4, 8]


def test_majority_vote_baseline_matches_independent_computation(setup, result):
    _, manifest, _ = setup
    _, rows, _ = result
    structures = json.loads((manifest.parent / "structures.json").read_text())[DATASET]

    def mask(subject, values):
        path = manifest.parent / DATASET / subject / "anat" / f"{subject}_dseg.nii.gz"
        return np.isin(np.asanyarray(nb.load(str(path)).dataobj), values)

    checked = 0
    for r in rows:
        if r["method"] != "majority-vote":
            continue
        values = structures[r["structure"]]
        votes = np.stack([mask(s, values) for s in r["context"].split(",")])
        vote, truth = votes.mean(0) >= 0.5, mask(r["subject"], values)
        total = vote.sum() + truth.sum()
        expected = 1.0 if total == 0 else 2 * (vote & truth).sum() / total
        assert float(r["value"]) == pytest.approx(expected, rel=1e-7, abs=1e-9), r
        checked += 1
    assert checked == len(structures) * len(SIZES) * DRAWS


def test_degraded_input_psnr_recomputed(setup, result):
    _, manifest, _ = setup
    _, rows, info = result
    assert info["splits"][DATASET]["test"] == [rows[0]["subject"]]   # target index 0
    checked = 0
    for r in rows:
        if r["method"] != "degraded-input":
            continue
        path = manifest.parent / DATASET / r["subject"] / "anat" / f"{r['subject']}_T1w.nii.gz"
        clean = torch.from_numpy(normalise_intensity(np.asanyarray(nb.load(str(path)).dataobj)))
        generator = torch.Generator().manual_seed(
            draw_seed(0, DATASET, r["task"], int(r["context_size"]), int(r["draw"]), 0))
        degraded, target = make_pair(r["task"], {"image": clean}, generator)
        assert torch.equal(target, clean.float())
        mse = float(((degraded.clamp(0, 1) - clean).double() ** 2).mean())
        assert float(r["value"]) == pytest.approx(10 * math.log10(1 / mse), rel=1e-5)
        checked += 1
    assert checked == 2 * len(SIZES) * DRAWS


def test_json_summary_matches_table_and_png(result):
    out, rows, info = result
    groups = {}
    for r in rows:
        key = (r["task"], r["structure"], int(r["context_size"]), r["method"])
        groups.setdefault(key, []).append(float(r["value"]))
    summary = {(s["task"], s["structure"], s["context_size"], s["method"]): s
               for s in info["results"] if s["dataset"] == DATASET}
    assert set(summary) == set(groups)
    for key, values in groups.items():
        assert summary[key]["n"] == len(values) == DRAWS
        assert summary[key]["mean"] == pytest.approx(np.mean(values), rel=1e-7, abs=1e-9)
        assert summary[key]["std"] == pytest.approx(np.std(values), rel=1e-6, abs=1e-8)
    assert info["config"]["draws"] == DRAWS and info["config"]["context_sizes"] == [1, 2, 16]
    png = (out / "eval.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000
    import matplotlib.image

    assert matplotlib.image.imread(str(out / "eval.png")).ndim == 3
    # eval.md: one row per (dataset, task, structure), the model's mean then the baseline's
    table = (out / "eval.md").read_text().splitlines()
    assert table[0].startswith("| dataset | task | structure | metric | L=1 | L=2 |")
    keys = {(s["dataset"], s["task"], s["structure"]) for s in info["results"]}
    assert len([line for line in table if line.startswith(f"| {DATASET} ")]) == len(keys)
    for (task, structure, size, method), item in summary.items():
        if size == 1 and method == "model":
            row = next(line for line in table if line.startswith(f"| {DATASET} | {task} | "
                                                                 f"{structure} |"))
            assert row.split(" | ")[4].startswith(f"{item['mean']:.3g} ± {item['std']:.2g}")
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary files


def test_same_seed_same_table(setup, result):
    root, manifest, model = setup
    out = root / "again"
    assert main(_args(manifest, model, out)) == 0
    assert (out / "eval.tsv").read_bytes() == (result[0] / "eval.tsv").read_bytes()


def test_helpers():
    pool, test = split_subjects([f"s{i}" for i in range(10)], seed=1)
    assert len(pool) == 8 and len(test) == 2 and not set(pool) & set(test)
    assert split_subjects([f"s{i}" for i in range(10)], seed=1) == (pool, test)
    labels = torch.tensor([[1.0, 0, 1], [1.0, 0, 0]])[:, :, None, None]   # L=2, 3 voxels
    assert majority_vote(labels).flatten().tolist() == [1.0, 0.0, 1.0]   # ties are foreground


def test_errors(setup, tmp_path, capsys):
    _, manifest, model = setup
    missing = tmp_path / "nope.safetensors"
    assert main(_args(manifest, missing, tmp_path / "o1")) == 66
    assert str(missing) in capsys.readouterr().err
    bad = tmp_path / "manifest.json"
    bad.write_text("{not json")
    assert main(_args(bad, model, tmp_path / "o2")) == 65
    assert main(_args(tmp_path / "absent.json", model, tmp_path / "o3")) == 66
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert main(_args(manifest, model, blocker / "out")) == 73
    assert "a-file" in capsys.readouterr().err
    assert main(_args(manifest, model, tmp_path / "o4", "--datasets", "nope")) == 64
    with pytest.raises(SystemExit) as exit_info:
        main(_args(manifest, model, tmp_path / "o5", "--draws", "0"))
    assert exit_info.value.code == 64
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 6))


def test_selection_and_ensemble_methods(setup, result, tmp_path):
    """--selection random similar --ensemble 1 2: member 0 is the paper protocol's draw, the
    similar sets are the top of an independent NCC ranking, the ensemble is the members' mean."""
    from neuroverse_bids.model import load_checkpoint
    from neuroverse_bids.model.predictor import Predictor

    root, manifest, model = setup
    out = tmp_path / "sel"
    assert main(_args(manifest, model, out, "--tasks", "segmentation", "--selection", "random",
                      "similar", "--ensemble", "1", "2")) == 0
    rows, info = _read_tsv(out / "eval.tsv"), json.loads((out / "eval.json").read_text())
    methods = {r["method"] for r in rows}
    assert methods == {"model", "model-ens2", "model-similar", "model-similar-ens2",
                       "majority-vote", "majority-vote-similar"}
    # the single random draw is exactly the default protocol's
    plain = {(r["structure"], r["context_size"], r["draw"]): r for r in result[1]
             if r["method"] == "model" and r["task"] == "segmentation"}
    mine = [r for r in rows if r["method"] == "model"]
    assert len(mine) == len(plain)
    for r in mine:
        assert r["value"] == plain[(r["structure"], r["context_size"], r["draw"])]["value"]
        assert r["context"] == plain[(r["structure"], r["context_size"], r["draw"])]["context"]
    # similar: the top L of the pool by NCC inside the target's nonzero voxels
    split = info["splits"][DATASET]
    target = split["test"][0]

    def image(subject):
        path = manifest.parent / DATASET / subject / "anat" / f"{subject}_T1w.nii.gz"
        return normalise_intensity(np.asanyarray(nb.load(str(path)).dataobj))

    inside = image(target) != 0
    scores = {s: np.corrcoef(image(target)[inside], image(s)[inside])[0, 1] for s in split["pool"]}
    ranked = sorted(scores, key=lambda s: (-scores[s], s))
    for item in info["selected"]:
        L = item["context_size"]
        assert item["chosen"] == ranked[:L]
        assert item["scores"] == pytest.approx([scores[s] for s in ranked[:L]], abs=1e-5)
    # the 2-member ensemble: Dice of the mean of the two members' predictions
    structures = json.loads((manifest.parent / "structures.json").read_text())[DATASET]
    row = next(r for r in rows if r["method"] == "model-ens2" and r["context_size"] == "2")
    members = [row["context"].split(",")[:2], row["context"].split(",")[2:]]

    def masks(subject):
        path = manifest.parent / DATASET / subject / "anat" / f"{subject}_dseg.nii.gz"
        labels = np.asanyarray(nb.load(str(path)).dataobj)
        return torch.from_numpy(np.stack([np.isin(labels, v) for v in structures.values()])).float()

    predictor = Predictor(load_checkpoint(model), device="cpu", precision="float32")
    outputs = [predictor.predict(torch.from_numpy(image(target)),
                                 torch.stack([torch.from_numpy(image(s)) for s in ids]),
                                 torch.stack([masks(s) for s in ids], dim=1)) for ids in members]
    mean = (outputs[0] + outputs[1]) / 2
    k = list(structures).index(row["structure"])
    truth = masks(target)[k] > 0.5
    predicted = mean[k] > 0.5
    total = int(predicted.sum() + truth.sum())
    expected = 1.0 if total == 0 else 2 * int((predicted & truth).sum()) / total
    assert float(row["value"]) == pytest.approx(expected, abs=1e-6)
    # uncertainty summaries for ensembles only, in [0, 1]; calibration and comparison written
    summaries = [r for r in rows if r["metric"] in ("boundary_spread", "disagreement")]
    assert summaries and {r["method"] for r in summaries} == {"model-ens2", "model-similar-ens2"}
    assert all(0 <= float(r["value"]) <= 1 for r in summaries)
    comparison = info["comparison"]
    assert set(comparison["calibration"]) == {"model", "model-ens2", "model-similar",
                                              "model-similar-ens2"}
    for by_size in comparison["calibration"].values():
        for regions in by_size.values():
            assert 0 <= regions["near"]["ece"] <= 1 and regions["all"]["voxels"] > 0
    assert "model-similar - model" in comparison["gains"]
    text = (out / "selection_ensemble.md").read_text()
    assert "| model-ens2 | disagreement |" in text and "ECE" in text
    assert (out / "reliability.png").read_bytes().startswith(b"\x89PNG")
    for bad in (["--ensemble", "0"], ["--selection", "best"]):
        with pytest.raises(SystemExit) as exit_info:
            main(_args(manifest, model, tmp_path / "bad", *bad))
        assert exit_info.value.code == 64
    assert main(_args(manifest, model, tmp_path / "nomask", "--selection", "similar",
                      "--similarity-mask", str(tmp_path / "absent.nii.gz"))) == 66


def test_calibration_and_spearman():
    from scipy.stats import spearmanr

    from neuroverse_bids.evaluation.calibration import Reliability, spearman

    x = [0.1, 0.4, 0.4, 0.9, 0.3, 0.7]
    y = [1.0, 2.0, 3.0, 3.0, 0.5, 2.5]
    assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic)
    perfect = Reliability(bins=2)
    truth = torch.zeros(8, 8, 8)
    truth[2:6, 2:6, 2:6] = 1
    perfect.add(truth * 2 - 0.5, truth)     # clipped to exactly 0 and 1: calibrated
    assert perfect.summary()["near"]["ece"] == 0 and perfect.summary()["all"]["voxels"] == 512
    halves = Reliability(bins=2)
    halves.add(torch.full((8, 8, 8), 0.25), truth)   # says 0.25 everywhere, truth is 64/512
    assert halves.summary()["all"]["ece"] == pytest.approx(abs(0.25 - 64 / 512))
