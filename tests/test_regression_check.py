"""``benchmarks/regression_check.py``: a candidate's eval results against a baseline's."""
import json
from pathlib import Path

from synthetic import load_script

SCRIPT = "benchmarks/regression_check.py"


def _script():
    return load_script(SCRIPT)


def _eval(path: Path, values: dict, grid) -> Path:
    rows = [{"dataset": "d", "task": "segmentation", "structure": s, "metric": "dice",
             "context_size": size, "method": method, "mean": v, "std": 0.0, "n": 2}
            for (s, size, method), v in values.items()]
    path.write_text(json.dumps({"results": rows, "model": {"grid": {"shape": grid,
                                                                     "voxel_size_mm": 2.0}}}))
    return path


def test_flags_only_structures_below_the_tolerance(tmp_path, monkeypatch):
    # main() imports its results writer, benchmarks/_report.py, from beside the script
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    reference = _eval(tmp_path / "ref.json", {("GM", 8, "model"): 0.80, ("WM", 8, "model"): 0.70,
                                              ("GM", 4, "model"): 0.99,
                                              ("GM", 8, "majority-vote"): 0.75}, [8, 8, 8])
    candidate = _eval(tmp_path / "new.json", {("GM", 8, "model"): 0.79, ("WM", 8, "model"): 0.65,
                                              ("GM", 4, "model"): 0.10, ("CSF", 8, "model"): 0.5},
                      [8, 10, 8])
    rows = _script().compare(reference, candidate, 8, 0.02, 0.5)
    by_structure = {r["structure"]: r for r in rows}
    assert set(by_structure) == {"GM", "WM"}  # L = 4 and a structure only one run has: left out
    assert by_structure["GM"]["ok"] and abs(by_structure["GM"]["delta"] + 0.01) < 1e-9
    assert by_structure["GM"]["reference_majority"] == 0.75
    assert not by_structure["WM"]["ok"]
    assert _script().main([str(reference), str(candidate), "--out", str(tmp_path / "out"),
                           "--tag", "t"]) == 0
    text = (tmp_path / "out" / "regression_t.md").read_text()
    assert "1 of 2 within tolerance. Missed: d WM (-0.050)." in text and "[8, 10, 8]" in text
