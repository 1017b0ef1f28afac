"""fMRIPrep's habits end to end: ``--config-file`` (rerun with a saved configuration, flags
override it), ``--participant-label-file``, ``--random-seed`` and ``--reports-only``."""
import json
import shutil

import pytest
import torch

from neuroverse_bids.cli.run import main, parse_args
from neuroverse_bids.model import Neuroverse3D, save_checkpoint

TEMPLATE = "MNI152NLin2009aSym"


@pytest.fixture(scope="module")
def first_run(demo_dataset, tmp_path_factory):
    """One participant run of a small model: sub-01 chosen through a label file."""
    root = tmp_path_factory.mktemp("cfg")
    torch.manual_seed(0)
    model = save_checkpoint(Neuroverse3D(channels=(4, 8, 8)), root / "m.safetensors",
                            grid={"shape": [32, 32, 32], "voxel_size_mm": 6.0, "template": TEMPLATE})
    labels = root / "participants.txt"
    labels.write_text("# the array's subjects\nsub-01\n\n")
    patch = pytest.MonkeyPatch()
    patch.setenv("TEMPLATEFLOW_HOME", str(demo_dataset / "templateflow"))
    out, work = root / "out", root / "work"
    code = main([str(demo_dataset / "bids"), str(out), "participant", "--participant-label-file",
                 str(labels), "--context-spec", str(demo_dataset / "context-spec.json"),
                 "--num-contexts", "1", "--model", str(model), "--template", TEMPLATE, "--sloppy",
                 "--nprocs", "1", "-w", str(work), "--random-seed", "3", "--precision", "float32",
                 "--device", "cpu", "--mem", "3GB"])
    assert code == 0
    configs = sorted((out / "logs").glob("neuroverse3d_*_config.json"))
    assert len(configs) == 1
    yield {"root": root, "out": out, "work": work, "config": configs[0], "demo": demo_dataset}
    patch.undo()


def _arguments(config):
    return json.loads(config.read_text())["Arguments"]


def test_the_saved_configuration_records_the_run(first_run):
    saved = _arguments(first_run["config"])
    assert saved["participant_label"] == ["01"]  # from the label file, 'sub-' stripped
    assert saved["random_seed"] == 3 and saved["context_seed"] is None
    spec = json.loads((first_run["out"] / "sub-01" / "anat").glob("*_mask.json").__next__().read_text())
    assert json.dumps(spec).count('"seed": 3') >= 1  # the random seed chose the contexts


def test_rerun_from_the_saved_configuration_alone(first_run):
    out = first_run["out"]
    before = set((out / "logs").glob("neuroverse3d_*_config.json"))
    assert main(["--config-file", str(first_run["config"])]) == 0
    new = set((out / "logs").glob("neuroverse3d_*_config.json")) - before
    assert len(new) == 1
    again = _arguments(new.pop())
    original = _arguments(first_run["config"])
    assert {k: v for k, v in again.items() if k != "config_file"} == \
        {k: v for k, v in original.items() if k != "config_file"}


def test_flags_given_override_the_configuration(first_run):
    """``--nprocs 2`` over the saved ``--nprocs 1``: the rerun goes through MultiProc (its
    forkserver workers) and saves the overridden value; the rest is the saved run's."""
    out = first_run["out"]
    before = set((out / "logs").glob("neuroverse3d_*_config.json"))
    assert main(["--config-file", str(first_run["config"]), "--nprocs", "2"]) == 0
    (new,) = set((out / "logs").glob("neuroverse3d_*_config.json")) - before
    again, original = _arguments(new), _arguments(first_run["config"])
    assert again["nprocs"] == 2 and original["nprocs"] == 1
    assert {k: v for k, v in again.items() if k not in ("nprocs", "config_file")} == \
        {k: v for k, v in original.items() if k not in ("nprocs", "config_file")}


def test_reports_only_rebuilds_the_reports_without_running(first_run):
    out = first_run["out"]
    report = out / "sub-01.html"
    assert report.is_file()
    report.unlink()
    work_before = sorted(p.name for p in first_run["work"].rglob("*"))
    assert main([str(first_run["demo"] / "bids"), str(out), "participant", "--reports-only",
                 "-w", str(first_run["work"])]) == 0
    assert report.is_file() and "sub-01" in report.read_text()
    assert sorted(p.name for p in first_run["work"].rglob("*")) == work_before  # nothing ran


def test_reports_only_without_outputs_is_missing_input(tmp_path, capsys):
    bids = tmp_path / "bids"
    bids.mkdir()
    assert main([str(bids), str(tmp_path / "nothing"), "participant", "--reports-only"]) == 66


# --- parsing only (fast) ------------------------------------------------------------------

def _saved(tmp_path, **arguments):
    path = tmp_path / "neuroverse3d_x_config.json"
    path.write_text(json.dumps({"RunId": "x", "Arguments": arguments}))
    return str(path)


def test_saved_arguments_become_defaults_and_flags_win(tmp_path):
    config = _saved(tmp_path, bids_dir="/data/bids", output_dir="/data/out",
                    analysis_level="participant", participant_label=["01", "02"], sloppy=True,
                    mask=["brain"], nprocs=4, mini_context_size="auto", verbose_count=2)
    args = parse_args(["--config-file", config])
    assert str(args.bids_dir) == "/data/bids" and args.analysis_level == "participant"
    assert args.participant_label == ["01", "02"] and args.sloppy and args.nprocs == 4
    assert args.mask == ["brain"] and args.verbose_count == 0  # the console is not restored
    args = parse_args(["--config-file", config, "/other/bids", "/other/out", "group",
                       "--participant-label", "03", "--mask", "GM", "--nprocs", "2"])
    assert str(args.output_dir) == "/other/out" and args.analysis_level == "group"
    assert args.participant_label == ["03"] and args.mask == ["GM"] and args.nprocs == 2


def test_bad_configuration_files(tmp_path, capsys):
    assert main(["--config-file", str(tmp_path / "missing.json")]) == 66
    (tmp_path / "bad.json").write_text("{not json")
    assert main(["--config-file", str(tmp_path / "bad.json")]) == 65
    assert "not a neuroverse3d run configuration" in capsys.readouterr().err
    config = _saved(tmp_path, bids_dir="/b", output_dir="/o", analysis_level="group",
                    from_the_future=1)
    parse_args(["--config-file", config])
    assert "from_the_future" in capsys.readouterr().err


def test_participant_label_file_errors(tmp_path, capsys):
    bids = tmp_path / "bids"
    bids.mkdir()
    common = [str(bids), str(tmp_path / "out"), "participant", "--mask", "brain"]
    assert main(common + ["--participant-label-file", str(tmp_path / "none.txt")]) == 66
    (tmp_path / "empty.txt").write_text("# nobody\n\n")
    assert main(common + ["--participant-label-file", str(tmp_path / "empty.txt")]) == 64
    assert "no participant labels" in capsys.readouterr().err
