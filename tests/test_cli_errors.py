"""Every bad input gets a clear message naming the file, the documented exit code, and the
input dataset stays untouched."""
import json
import shutil
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest
import torch

from neuroverse_bids.cli.run import main
from neuroverse_bids.model import Neuroverse3D, save_checkpoint

TEMPLATE = "MNI152NLin2009aSym"


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(0)
    return save_checkpoint(Neuroverse3D(channels=(4, 8, 8)), tmp_path_factory.mktemp("m") / "m.safetensors",
                           grid={"shape": [32, 32, 32], "voxel_size_mm": 6.0, "template": TEMPLATE})


@pytest.fixture
def demo(demo_dataset, tmp_path, monkeypatch):
    """A private copy of the demo dataset that a test may damage."""
    copy = tmp_path / "demo"
    shutil.copytree(demo_dataset, copy)
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(copy / "templateflow"))
    monkeypatch.chdir(tmp_path)
    return copy


def _snapshot(folder):
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def _run(demo, tmp_path, *extra, model=None, bids=None, spec=True, out=None):
    args = [str(bids or demo / "bids"), str(out or tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
            "--template", TEMPLATE, "--sloppy", "--nprocs", "1"]
    if spec:
        args += ["--context-spec", str(demo / "context-spec.json")]
    if model is not None:
        args += ["--model", str(model)]
    return main(args + list(extra))


def _damage(path, data):
    img = nb.load(str(path))
    nb.save(nb.Nifti1Image(data, img.affine), str(path))


CASES = {
    "not_bids": (65, "dataset_description.json"),
    "unknown_participant": (66, "sub-99"),
    "no_t1w": (66, "sub-01"),
    "corrupt": (65, "sub-01_T1w.nii.gz"),
    "four_d": (16, "sub-01_T1w.nii.gz"),
    "four_d_unvalidated": (65, "expected a 3D volume"),
    "label_grid": (65, "sub-03_desc-brain_mask.nii.gz"),
    "empty_mask": (65, "is empty"),
    "missing_label": (65, "Thalamus"),
    "too_few_contexts": (65, "context subjects requested"),
    "model_missing": (66, "nope.safetensors"),
    "model_refused": (65, "refused to load"),
    "output_not_writable": (73, "cannot write"),
    "output_is_input": (64, "must not be the input dataset"),
    "work_inside_input": (64, "inside the input dataset"),
    "no_context": (64, "no context given"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input(case, demo, tmp_path, model_file, capsys):
    bids = demo / "bids"
    extra, kwargs = ["--participant-label", "01"], {"model": model_file}
    anat = bids / "sub-01" / "anat"
    labels = demo / "derivatives" / "labels"
    if case == "not_bids":
        (bids / "dataset_description.json").unlink()
    elif case == "unknown_participant":
        extra = ["--participant-label", "sub-99"]
    elif case == "no_t1w":
        shutil.move(str(anat / "sub-01_T1w.nii.gz"), str(tmp_path / "moved.nii.gz"))
        (anat / "sub-01_T1w.json").unlink(missing_ok=True)
        extra += ["--skip-bids-validation"]
    elif case == "corrupt":
        data = (anat / "sub-01_T1w.nii.gz").read_bytes()
        (anat / "sub-01_T1w.nii.gz").write_bytes(data[: len(data) // 2])
        extra += ["--skip-bids-validation"]
    elif case in ("four_d", "four_d_unvalidated"):
        _damage(anat / "sub-01_T1w.nii.gz", np.zeros((8, 8, 8, 3), np.float32))
        if case == "four_d_unvalidated":
            extra += ["--skip-bids-validation"]
    elif case == "label_grid":
        _damage(labels / "sub-03" / "anat" / "sub-03_desc-brain_mask.nii.gz", np.ones((8, 8, 8), np.uint8))
    elif case == "empty_mask":
        for sub in ("02", "03", "04"):
            path = labels / f"sub-{sub}" / "anat" / f"sub-{sub}_desc-brain_mask.nii.gz"
            _damage(path, np.zeros(nb.load(str(path)).shape, np.uint8))
    elif case == "missing_label":
        spec = json.loads((demo / "context-spec.json").read_text())
        spec["structures"].append({"name": "Thalamus", "dseg": "Thalamus"})
        (demo / "context-spec.json").write_text(json.dumps(spec))
    elif case == "too_few_contexts":
        extra += ["--num-contexts", "4"]
    elif case == "model_missing":
        kwargs["model"] = tmp_path / "nope.safetensors"
    elif case == "model_refused":
        evil = tmp_path / "evil.ckpt"
        torch.save({"state_dict": {}, "hyper_parameters": _Exploit()}, evil)
        kwargs["model"] = evil
    elif case == "output_not_writable":
        (tmp_path / "a_file").write_text("x")
        kwargs["out"] = tmp_path / "a_file" / "out"
    elif case == "output_is_input":
        kwargs["out"] = bids
    elif case == "work_inside_input":
        extra += ["-w", str(bids / "work")]
    elif case == "no_context":
        kwargs["spec"] = False
    before = _snapshot(bids)
    code = _run(demo, tmp_path, *extra, **kwargs)
    expected_code, expected_text = CASES[case]
    err = capsys.readouterr().err
    assert code == expected_code, err
    assert expected_text in err
    assert _snapshot(bids) == before


class _Exploit:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_filters_that_select_nothing_exit_18(demo, tmp_path, model_file, capsys):
    filters = tmp_path / "filters.json"
    filters.write_text(json.dumps({"t1w": {"acquisition": "nonexistent"}}))
    code = _run(demo, tmp_path, "--participant-label", "01", "--bids-filter-file", str(filters), model=model_file)
    assert code == 18, capsys.readouterr().err


def test_usage_errors_exit_64(capsys):
    with pytest.raises(SystemExit) as info:
        main(["only_one_argument"])
    assert info.value.code == 64


def test_a_failed_participant_is_summarised_and_the_others_are_written(demo, tmp_path, model_file,
                                                                       monkeypatch, capsys):
    """A node that crashes for one participant: the console names the participant, the node,
    the input and the last line of the error; the other participant's outputs are written;
    exit code 1."""
    from neuroverse_bids.workflows.interfaces.icl import InContextPredict

    real = InContextPredict._run_interface

    def crash_for_sub_02(self, runtime):
        if "sub_02_wf" in str(self.inputs.target):
            raise RuntimeError("injected failure for sub-02")
        return real(self, runtime)

    monkeypatch.setattr(InContextPredict, "_run_interface", crash_for_sub_02)
    code = _run(demo, tmp_path, "--participant-label", "01", "02", "--num-contexts", "1",
                "--mem", "3GB", model=model_file)
    err = capsys.readouterr().err
    assert code == 1, err
    summary = err[err.index("sub-02 | icl failed"):]
    assert summary.startswith("sub-02 | icl failed: RuntimeError: injected failure for sub-02")
    assert "input: target = " in summary and "sub_02_wf" in summary.splitlines()[1]
    assert "crash file: " in summary and "Traceback" not in err
    out = tmp_path / "out"
    assert list((out / "sub-01" / "anat").glob("sub-01_*_mask.nii.gz"))
    assert not list(out.glob("sub-02/anat/*_mask.nii.gz"))


def _render(descriptor, values):
    """The command line Boutiques' ``bosh exec`` makes from ``values`` (input id -> value)."""
    line = descriptor["command-line"]
    for entry in descriptor["inputs"]:
        value = values.get(entry["id"])
        if value is None or value is False:
            text = ""
        elif entry["type"] == "Flag":
            text = entry["command-line-flag"]
        else:
            items = value if entry.get("list") else [value]
            text = entry.get("list-separator", " ").join(str(v) for v in items)
            if "command-line-flag" in entry:
                text = f"{entry['command-line-flag']} {text}"
        line = line.replace(entry["value-key"], text)
    return line.split()[1:]


def test_boutiques_descriptor_is_the_parser(capsys):
    """Every option of the parser is an input (flag, type, choices, list-ness), and a command
    line rendered from the descriptor parses back to the values it was rendered from."""
    import argparse

    from neuroverse_bids.cli.boutiques import NOT_INPUTS
    from neuroverse_bids.cli.parser import build_parser
    from neuroverse_bids.errors import ExitCode

    with pytest.raises(SystemExit) as info:
        main(["--boutiques"])
    assert info.value.code == 0
    descriptor = json.loads(capsys.readouterr().out)
    parser = build_parser()
    actions = {a.dest: a for a in parser._actions if a.dest not in NOT_INPUTS}
    inputs = {entry["id"]: entry for entry in descriptor["inputs"]}
    assert set(inputs) == set(actions)
    assert [e["id"] for e in descriptor["inputs"][:3]] == ["bids_dir", "output_dir", "analysis_level"]
    assert len({e["value-key"] for e in inputs.values()}) == len(inputs)
    values = {}
    for dest, action in actions.items():
        entry = inputs[dest]
        assert entry["optional"] == bool(action.option_strings)
        if action.option_strings:
            assert entry["command-line-flag"] in action.option_strings
        if action.choices is not None:
            assert entry["value-choices"] == list(action.choices)
            values[dest] = list(action.choices)[-1]
        elif entry["type"] == "Flag":
            values[dest] = True
        elif entry["type"] == "Number":
            values[dest] = 3 if entry["integer"] else 1.5
        else:
            values[dest] = f"/x/{dest}"
        if entry.get("list"):
            values[dest] = [values[dest], values[dest]]
    for dest in ("mem_gb", "icl_mem_gb", "mini_context_size", "config_file", "derivatives"):
        values.pop(dest, None)  # typed by their own parsers; --config-file reads its file
    args = vars(parser.parse_args(_render(descriptor, values)))

    def plain(value):
        return [str(v) for v in value] if isinstance(value, list) else \
            str(value) if isinstance(value, Path) else value

    for dest, value in values.items():
        expected = 1 if isinstance(actions[dest], argparse._CountAction) else value
        assert plain(args[dest]) == plain(expected), dest
    codes = {e["code"] for e in descriptor["error-codes"]}
    assert codes == {ExitCode.FAILURE, ExitCode.VALIDATION, ExitCode.NOTHING_SELECTED,
                     ExitCode.USAGE, ExitCode.BAD_INPUT, ExitCode.MISSING_INPUT,
                     ExitCode.CANNOT_CREATE, ExitCode.LOCKED, ExitCode.SIGINT,
                     ExitCode.SIGTERM}
