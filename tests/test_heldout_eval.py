"""``neuroverse3d-eval-heldout``: held-out label maps scored in native space against the model,
the majority vote, joint label fusion and the grid's ceiling. Toy "brains" are nested blobs
with FreeSurfer codes; their native lattice is the model grid (registration none), so that a
perfect grid segmentation scores Dice 1 in native space."""
import csv
import json

import nibabel as nb
import numpy as np
import pytest
import torch

from neuroverse_bids.anatomy.labelmaps import build_labelmap_data
from neuroverse_bids.anatomy.sources import grid_reference
from neuroverse_bids.evaluation import heldout_methods as hm
from neuroverse_bids.evaluation.heldout import COLUMNS, main
from neuroverse_bids.model import Neuroverse3D, save_checkpoint

N, MM = 16, 9.0


def toy_brain(scale: float = 1.0, shift: float = 0.0) -> np.ndarray:
    """An ``N``^3 int16 map: head 507, CSF 24, cortex 3/42, WM 2/41, ventricles 4/43, thalami
    10/49, brainstem 16, hippocampi 17/53 (left: x below the midline)."""
    z, y, x = np.meshgrid(*[np.arange(N) - (N - 1) / 2] * 3, indexing="ij")
    r = np.sqrt(z ** 2 + y ** 2 + (x - shift) ** 2) / (N / 2)
    left = x < shift
    labels = np.zeros((N,) * 3, np.int16)
    for radius, pair in ((0.95, (507, 507)), (0.85, (24, 24)), (0.75, (3, 42)), (0.6, (2, 41)),
                         (0.25, (4, 43))):
        labels = np.where(r < radius * scale, np.where(left, *pair), labels)
    for cx, code in ((-0.3, 10), (0.3, 49), (-0.5, 17), (0.5, 53)):
        blob = np.sqrt(z ** 2 + (y + 0.2 * N) ** 2 + (x - shift - cx * N / 2) ** 2)
        labels[blob < 0.09 * N * scale] = code
    labels[np.sqrt((z + 0.3 * N) ** 2 + y ** 2 + (x - shift) ** 2) < 0.08 * N * scale] = 16
    return labels


def build(root, maps, held_out):
    """Write ``maps`` as training_seg_NN on the model grid's lattice and build the folder."""
    affine = grid_reference((N,) * 3, MM, root / "grid").affine
    native = root / "native"
    native.mkdir(parents=True)
    for index, labels in enumerate(maps, 1):
        nb.save(nb.Nifti1Image(labels.astype(np.int32), affine),
                str(native / f"training_seg_{index:02d}.nii.gz"))
    build_labelmap_data(native, root / "maps", (N,) * 3, MM, held_out=held_out, validation=[],
                        registration="none", log=lambda *_: None)
    return root / "maps", native


@pytest.fixture(scope="module")
def varied(tmp_path_factory):
    root = tmp_path_factory.mktemp("heldout")
    labelmaps, native = build(root, [toy_brain(0.9 + 0.03 * i, (i % 3) - 1.0) for i in range(6)],
                              [5, 6])
    torch.manual_seed(0)
    model = save_checkpoint(Neuroverse3D(channels=(4, 8)), root / "tiny.safetensors",
                            grid={"shape": [N] * 3, "voxel_size_mm": MM,
                                  "template": "MNI152NLin2009aSym"})
    return root, labelmaps, native, model


JLF_FAST = ["--jlf-voxel-mm", str(MM), "--jlf-iterations", "5", "0", "--jlf-transform",
            "SyNOnly", "--jlf-search-radius", "1",
            "--mini-context-size", "64"]


def _read_tsv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def test_end_to_end_outputs(varied, capsys):
    root, labelmaps, native, model = varied
    out = root / "out"
    code = main([str(out), "--labelmaps", str(labelmaps), "--native", str(native),
                 "--model", f"tiny={model}", "--context-sizes", "1", "3", "--contrasts", "t1",
                 "t2", "--targets", "5", "map-06", *JLF_FAST])
    assert code == 0, capsys.readouterr().err
    rows = _read_tsv(out / "heldout.tsv")
    assert tuple(rows[0]) == COLUMNS
    methods = {"tiny", "majority", "jlf", "grid-truth"}
    assert {r["method"] for r in rows} == methods
    assert len(rows) == 2 * 2 * 2 * len(methods) * 11  # targets x contrasts x L x methods x 11
    for r in rows:
        assert r["dice"] == "n/a" or 0 <= float(r["dice"]) <= 1
        assert float(r["seconds"]) >= 0
        assert r["target"] not in r["contexts"].split(",") or r["method"] == "grid-truth"
    # contexts: one order per target, the first L, the same for every method and contrast
    used = {(r["target"], r["L"]): set() for r in rows if r["method"] != "grid-truth"}
    for r in rows:
        if r["method"] != "grid-truth":
            used[r["target"], r["L"]].add(r["contexts"])
    assert all(len(v) == 1 for v in used.values())
    info = json.loads((out / "heldout.json").read_text())
    order = info["context_orders"]["map-05"]
    assert sorted(order) == ["map-01", "map-02", "map-03", "map-04"]
    assert used["map-05", "3"] == {",".join(order[:3])}
    summary = info["summary"]
    assert set(summary) == methods and set(summary["jlf"]) == {"t1", "t2"}
    cell = summary["majority"]["t1"]["3"]
    assert set(cell) == {"structures", "mean", "targets", "seconds_per_target"}
    assert set(cell["structures"]) == set(hm.STRUCTURE_NAMES) and cell["targets"] == 2
    assert info["inputs"]["models"]["tiny"]["sha256"]
    assert any(k.startswith("native/") for k in info["inputs"]["sha256"])
    assert info["contrast_draws"]["map-05/t1"]["mode"] == "t1"
    # the grid is the native lattice: the grid's ceiling is exact where a structure exists
    ceiling = summary["grid-truth"]["t1"]["1"]["structures"]
    assert ceiling["Cerebral-Cortex"]["mean"] == 1.0 and ceiling["Caudate"]["n"] == 0
    md = (out / "heldout.md").read_text()
    assert "| structure | tiny | majority | jlf | grid-truth |" in md
    assert "## L = 3, T1-like contrast" in md and "| T2-like | 1 |" in md
    assert "**mean (11)**" in md and "seconds per target" in md
    assert f"`neuroverse3d-eval-heldout {out} --labelmaps" in md
    from neuroverse_bids.workflows.reports import is_nonempty_image

    assert is_nonempty_image(out / "heldout.png")  # Dice per structure and method, drawn


def test_merge_of_runs_is_one_table(varied, tmp_path, capsys):
    """Two runs of the same targets (a second with its majority only, as if on another grid)
    merge into one table; a shared method name takes each run's grid as a suffix."""
    root, labelmaps, native, model = varied
    common = ["--labelmaps", str(labelmaps), "--native", str(native), "--context-sizes", "3",
              "--contrasts", "t1", "--targets", "5"]
    assert main([str(tmp_path / "a"), *common, "--model", f"tiny={model}", "--methods", "model",
                 "majority"]) == 0
    assert main([str(tmp_path / "b"), *common, "--methods", "majority"]) == 0
    second = json.loads((tmp_path / "b" / "heldout.json").read_text())
    second["grid"]["voxel_size_mm"] = 3.0  # what a run on another grid records
    (tmp_path / "b" / "heldout.json").write_text(json.dumps(second))
    out = tmp_path / "merged"
    assert main([str(out), "--merge", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    rows = _read_tsv(out / "heldout.tsv")
    assert {r["method"] for r in rows} == {"tiny", f"majority@{MM:g}mm", "majority@3mm"}
    info = json.loads((out / "heldout.json").read_text())
    assert len(info["runs"]) == 2 and set(info["summary"]) == {r["method"] for r in rows}
    md = (out / "heldout.md").read_text()
    assert md.count("Command: `neuroverse3d-eval-heldout") == 2 and "at 3.0 mm" in md
    assert (out / "heldout.png").is_file()
    # runs of other targets are not comparable: a usage error naming the folder
    assert main([str(tmp_path / "c"), *common[:-1], "6", "--methods", "majority"]) == 0
    assert main([str(tmp_path / "bad"), "--merge", str(tmp_path / "a"), str(tmp_path / "c")]) == 64
    assert f"{tmp_path / 'c'}: its targets differ" in capsys.readouterr().err
    assert main([str(tmp_path / "bad"), "--merge", str(tmp_path / "none")]) == 66


def test_majority_of_identical_contexts_is_exact(tmp_path):
    labels = toy_brain(0.95, 0.5)
    labelmaps, native = build(tmp_path, [labels] * 4, [4])
    out = tmp_path / "out"
    assert main([str(out), "--labelmaps", str(labelmaps), "--native", str(native), "--methods",
                 "majority", "jlf", "--context-sizes", "3", "--contrasts", "random",
                 *JLF_FAST]) == 0
    rows = [r for r in _read_tsv(out / "heldout.tsv") if r["dice"] != "n/a"]
    assert {r["structure"] for r in rows} >= {"Cerebral-Cortex", "Hippocampus", "Brain-Stem"}
    assert all(float(r["dice"]) == 1.0 for r in rows if r["method"] == "majority")
    jlf = [float(r["dice"]) for r in rows if r["method"] == "jlf"]
    assert jlf and min(jlf) > 0.9


def test_contrasts_order_tissues_and_repeat():
    labels = toy_brain()
    level = lambda img, code: float(img[labels == code].mean())  # noqa: E731
    t1 = hm.synthesize(labels, hm.draw_contrast("t1", 3), 1)
    t2 = hm.synthesize(labels, hm.draw_contrast("t2", 3), 1)
    assert level(t1, 2) > level(t1, 3) > level(t1, 4)
    assert level(t2, 4) > level(t2, 3) > level(t2, 2)
    assert np.array_equal(t1, hm.synthesize(labels, hm.draw_contrast("t1", 3), 1))
    assert not np.array_equal(t1, hm.synthesize(labels, hm.draw_contrast("t1", 4), 1))
    assert hm.dice(labels == 2, labels == 2) == 1.0 and np.isnan(hm.dice(labels < 0, labels < 0))


def test_errors_name_the_file_and_exit_codes(varied, tmp_path, capsys):
    root, labelmaps, native, model = varied
    maps = ["--labelmaps", str(labelmaps), "--context-sizes", "1"]
    base = [*maps, "--native", str(native), "--methods", "majority"]
    assert main([str(tmp_path / "a"), *maps, "--native", str(tmp_path / "none")]) == 66
    assert "native label-map folder not found" in capsys.readouterr().err
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "training_seg_05.nii.gz").write_bytes((native / "training_seg_05.nii.gz")
                                                     .read_bytes())
    assert main([str(tmp_path / "b"), *maps, "--native", str(partial)]) == 66
    assert "training_seg_06.nii.gz: native label map of map-06 not found" in \
        capsys.readouterr().err
    changed = tmp_path / "changed"
    changed.mkdir()
    for f in native.iterdir():
        changed.joinpath(f.name).write_bytes(f.read_bytes())
    nb.save(nb.Nifti1Image(toy_brain(0.5).astype(np.int32), nb.load(str(f)).affine),
            str(changed / "training_seg_05.nii.gz"))
    assert main([str(tmp_path / "c"), *maps, "--native", str(changed)]) == 65
    assert "sha256 differs" in capsys.readouterr().err
    assert main([str(tmp_path / "d"), *base, "--targets", "5", "--contexts", "5", "1"]) == 64
    assert main([str(tmp_path / "e"), *base, "--context-sizes", "9"]) == 64
    with pytest.raises(SystemExit) as usage:
        main([str(tmp_path / "f"), *base, "--contrasts", "pd"])
    assert usage.value.code == 64
    wrong = save_checkpoint(Neuroverse3D(channels=(4, 8)), tmp_path / "wrong.safetensors",
                            grid={"shape": [8] * 3, "voxel_size_mm": 18.0})
    assert main([str(tmp_path / "g"), *base[:6], "--model", str(wrong)]) == 65
    assert "differs from" in capsys.readouterr().err
    assert main([str(tmp_path / "h"), *base[:6], "--model", str(tmp_path / "no.ckpt")]) == 66
    assert main([str(tmp_path / "i"), "--labelmaps", str(tmp_path / "none"), *base[2:]]) == 66
    assert "label-map folder not found" in capsys.readouterr().err
    assert not (tmp_path / "i").exists()
