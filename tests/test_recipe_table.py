"""scripts/recipe_table.py: steps, minutes and held-out figures of training recipes."""
import csv
import json

import pytest

from synthetic import load_script

recipe_table = load_script("scripts/recipe_table.py")


def _result(structure, method, mean, task="segmentation", size=8):
    return {"dataset": "colin27-t1", "task": task, "structure": structure, "context_size": size,
            "method": method, "metric": "dice" if task == "segmentation" else "psnr", "mean": mean}


def test_table_from_a_run_log_and_an_evaluation(tmp_path):
    run, evaluation = tmp_path / "run", tmp_path / "eval"
    run.mkdir(), evaluation.mkdir()
    with open(run / "log.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["step", "val_loss", "seconds"])
        writer.writeheader()
        writer.writerows([{"step": 10, "val_loss": "", "seconds": 2.0},
                          {"step": 20, "val_loss": 0.3, "seconds": 32.0},  # 2 s step + 30 s validation
                          {"step": 30, "val_loss": "", "seconds": 2.0}])
    results = [_result("GM", "model", 0.8), _result("GM", "majority-vote", 0.6),
               _result("Hippocampus", "model", 0.5), _result("Hippocampus", "majority-vote", 0.4),
               _result("Thalamus", "model", 0.7), _result("Thalamus", "majority-vote", 0.6),
               _result("Putamen", "model", 0.1), _result("Putamen", "majority-vote", 0.2),
               _result("GM", "model", 0.1, size=1),  # another context size: ignored
               _result("n/a", "model", 25.0, task="gaussian-noise"),
               _result("n/a", "degraded-input", 15.0, task="gaussian-noise")]
    (evaluation / "eval.json").write_text(json.dumps({"results": results}))
    facts = recipe_table.run_facts(run)
    assert facts["steps"] == 30 and facts["minutes"] == pytest.approx((2.0 * 30 + 30.0) / 60)
    table = recipe_table.eval_facts(evaluation, 8)["colin27-t1"]
    assert table["GM"] == (0.8, 0.6) and table["gaussian-noise"] == pytest.approx(10.0)
    assert table["subcortical"] == pytest.approx((0.6, 0.5))  # putamen reported apart
    text = recipe_table.markdown([("r", facts, {"colin27-t1": table})], 8)
    assert "| r | 30 | 2 | colin27-t1 |" in text and "0.800 (0.600)" in text and "+10.0" in text
