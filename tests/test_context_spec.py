"""Context specifications and the choice of context subjects."""
import json

import pytest

from neuroverse_bids.context_spec import (ContextSpec, Structure, contexts_for, load_context_spec,
                                          pick_context_pool, spec_from_config)
from neuroverse_bids.config import WorkflowConfig
from neuroverse_bids.workflows.errors import BadInputError, MissingInputError, UsageError


def _write(tmp_path, data):
    (tmp_path / "labels").mkdir(exist_ok=True)
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(data))
    return path


def test_spec_file_paths_are_relative_to_the_file(tmp_path):
    path = _write(tmp_path, {"task": "segmentation", "labels": {"dataset": "labels"},
                             "structures": [{"name": "brain", "mask": "brain"},
                                            {"name": "GM", "dseg": "GM"}], "num_contexts": 3})
    spec = load_context_spec(path)
    assert spec.labels.root == (tmp_path / "labels").resolve()
    assert spec.images.root is None and spec.image_suffix == "T1w"
    assert [s.name for s in spec.structures] == ["brain", "GM"] and spec.num_contexts == 3


@pytest.mark.parametrize("data,error,message", [
    ({"task": "segmentation", "labels": {"dataset": "labels"}, "structures": [], "bogus": 1},
     UsageError, "unknown keys"),
    ({"task": "segmentation", "labels": {"dataset": "labels"}}, UsageError, "at least one structure"),
    ({"task": "segmentation", "labels": {"dataset": "nowhere"}, "structures": [{"name": "a", "mask": "a"}]},
     MissingInputError, "neither a name given with -d"),
    ({"task": "segmentation", "labels": {"dataset": "labels"},
      "structures": [{"name": "a", "mask": "a", "dseg": "a"}]}, UsageError, "exactly one"),
    ({"task": "generation", "degradation": "blur"}, UsageError, "unknown degradation"),
    ({"task": "generation"}, UsageError, "either a 'degradation'"),
    ({"task": "classification"}, UsageError, "task must be"),
    ({"task": "segmentation", "labels": {"dataset": "labels", "descr": "aseg"},
      "structures": [{"name": "a", "dseg": "a"}]}, UsageError, r"unknown key\(s\) \['descr'\] in 'labels'"),
    ({"task": "segmentation", "labels": {"dataset": "labels"},
      "structures": [{"name": "a", "dseg": []}]}, UsageError, "non-empty list"),
])
def test_bad_specs_are_refused_naming_the_file(tmp_path, data, error, message):
    path = _write(tmp_path, data)
    with pytest.raises(error, match=message) as info:
        load_context_spec(path)
    assert str(path) in str(info.value) or error is MissingInputError


def test_invalid_json_is_a_usage_error(tmp_path):
    path = tmp_path / "spec.json"
    path.write_text("{not json")
    with pytest.raises(UsageError, match="not valid JSON"):
        load_context_spec(path)
    assert UsageError.exit_code == 64


def test_flags_build_and_override_specs(tmp_path):
    (tmp_path / "labels").mkdir()
    flags = WorkflowConfig(labels_dataset=tmp_path / "labels", masks=("brain",),
                           dseg_labels=("GM", "hippocampus=Left-Hippocampus+Right-Hippocampus+53"),
                           num_contexts=2)
    spec = spec_from_config(flags, context_seed=5)
    assert spec.task == "segmentation" and spec.num_contexts == 2 and spec.seed == 5
    assert spec.structures == [Structure("brain", mask="brain"), Structure("GM", dseg="GM"),
                               Structure("hippocampus", dseg=["Left-Hippocampus",
                                                              "Right-Hippocampus", 53])]
    gen = spec_from_config(WorkflowConfig(degradation="gaussian-noise"))
    assert gen.task == "generation" and gen.output_name == "denoised" and gen.num_contexts == 8


def test_a_target_is_never_in_its_own_context():
    spec = ContextSpec(task="generation", degradation="gaussian-noise", num_contexts=3, seed=1)
    candidates = [f"{i:02d}" for i in range(1, 9)]
    targets = candidates[:5]
    pool = pick_context_pool(candidates, spec, targets)
    assert len(pool) <= 4
    for target in targets:
        chosen = contexts_for(target, pool, spec)
        assert target not in chosen and len(chosen) == 3
    assert pick_context_pool(candidates, spec, targets) == pool  # seeded
    pools = {tuple(pick_context_pool(candidates, ContextSpec(task="generation", degradation="gaussian-noise",
                                                          num_contexts=3, seed=s), targets)) for s in range(10)}
    assert len(pools) > 1  # the seed changes the choice


def test_too_few_context_subjects_is_reported():
    spec = ContextSpec(task="generation", degradation="gaussian-noise", num_contexts=3, source="spec.json")
    with pytest.raises(BadInputError, match="3 context subjects requested but only 2"):
        pick_context_pool(["01", "02", "03"], spec, ["01"])


def test_datasets_are_named_on_the_command_line_and_entities_kept(tmp_path):
    fmriprep = tmp_path / "elsewhere" / "fmriprep"
    fmriprep.mkdir(parents=True)
    path = _write(tmp_path, {
        "task": "segmentation",
        "images": {"dataset": "fmriprep", "desc": "preproc", "suffix": "T1w"},
        "labels": {"dataset": "fmriprep", "desc": "aseg", "suffix": "dseg", "ses": "1"},
        "structures": [{"name": "hippocampus", "dseg": ["Left-Hippocampus", "Right-Hippocampus"]}]})
    spec = load_context_spec(path, {"fmriprep": fmriprep})
    assert spec.images.root == spec.labels.root == fmriprep.resolve()
    assert spec.images.entities == {"desc": "preproc", "suffix": "T1w"}
    assert spec.labels.entities == {"desc": "aseg", "suffix": "dseg", "ses": "1"}
    assert spec.structures[0].dseg_labels == ["Left-Hippocampus", "Right-Hippocampus"]
    assert spec.to_dict()["labels"]["dataset"] == str(fmriprep.resolve())
    with pytest.raises(MissingInputError, match="'fmriprep'"):  # not named: a missing folder
        load_context_spec(path)


def test_pool_does_not_depend_on_the_targets():
    """One participant per job (an array) must see the same pool, so they share one cache."""
    spec = ContextSpec(task="generation", degradation="gaussian-noise", num_contexts=3, seed=2)
    candidates = [f"{i:02d}" for i in range(1, 11)]
    pools = {tuple(pick_context_pool(candidates, spec, [t])) for t in candidates}
    assert len(pools) == 1 and len(pools.pop()) == 4
