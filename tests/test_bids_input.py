"""BIDS input handling: validation, participants, filters, image selection, bad inputs.

Each bad input must raise the error with the BIDS-Apps exit code, name the offending folder,
subject or file, and leave the input dataset untouched (listing, sizes and mtimes).
"""
import json
import os

import nibabel as nb
import numpy as np
import pytest

from neuroverse_bids.bids import (
    bids_uri,
    collect_anatomicals,
    load_layout,
    read_bids_filters,
    select_participants,
    validate_bids,
)
from neuroverse_bids.workflows.errors import (
    BadInputError,
    MissingInputError,
    NothingSelectedError,
    UsageError,
    ValidationError,
)


def _nifti(path, shape=(8, 8, 8), seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(seed).random(shape, dtype=np.float32)
    img = nb.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0]))
    img.header.set_xyzt_units("mm", "sec")
    nb.save(img, str(path))
    return path


def make_dataset(root, files):
    """A BIDS dataset at ``root`` with tiny T1w-like images at the relative paths ``files``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "tiny", "BIDSVersion": "1.10.0", "Authors": ["A", "B"]}))
    (root / "README").write_text("A tiny test dataset.\n")
    for index, name in enumerate(files):
        _nifti(root / name, seed=index)
    return root


def snapshot(root):
    """Every path under ``root`` with its size and modification time."""
    state = {}
    for folder, dirs, names in os.walk(root):
        for name in dirs + names:
            path = os.path.join(folder, name)
            info = os.lstat(path)
            state[os.path.relpath(path, root)] = (info.st_size, info.st_mtime_ns)
    return state


@pytest.fixture
def dataset(tmp_path):
    return make_dataset(tmp_path / "bids", [
        "sub-01/ses-1/anat/sub-01_ses-1_run-1_T1w.nii.gz",
        "sub-01/ses-1/anat/sub-01_ses-1_run-2_T1w.nii.gz",
        "sub-01/ses-2/anat/sub-01_ses-2_acq-fast_T1w.nii.gz",
        "sub-02/anat/sub-02_T1w.nii.gz",
        "sub-03/anat/sub-03_T2w.nii.gz",
    ])


def test_valid_dataset_selection_and_input_untouched(dataset, tmp_path):
    before = snapshot(dataset)
    validate_bids(dataset)
    layout = load_layout(dataset, database_dir=tmp_path / "work" / "bids_db")
    assert select_participants(layout) == ["01", "02", "03"]
    assert select_participants(layout, ["sub-02", "01", "02"]) == ["02", "01"]

    every = collect_anatomicals(layout, "sub-01")
    assert [p.name for p in every] == ["sub-01_ses-1_run-1_T1w.nii.gz",
                                       "sub-01_ses-1_run-2_T1w.nii.gz",
                                       "sub-01_ses-2_acq-fast_T1w.nii.gz"]
    assert all(p.is_file() and dataset in p.parents for p in every)
    assert [p.name for p in collect_anatomicals(layout, "01", sessions=["ses-2"])] == [
        "sub-01_ses-2_acq-fast_T1w.nii.gz"]
    no_acq = collect_anatomicals(layout, "01", filters={"acquisition": None})
    assert [p.name for p in no_acq] == [p.name for p in every[:2]]
    assert [p.name for p in collect_anatomicals(layout, "01", filters={"run": 2})] == [
        "sub-01_ses-1_run-2_T1w.nii.gz"]
    assert [p.name for p in collect_anatomicals(layout, "03", suffix="T2w")] == [
        "sub-03_T2w.nii.gz"]

    assert (tmp_path / "work" / "bids_db").is_dir()
    assert snapshot(dataset) == before


def test_not_a_bids_directory(tmp_path):
    folder = tmp_path / "scans"
    _nifti(folder / "brain.nii.gz")
    before = snapshot(folder)
    for skip in (False, True):
        with pytest.raises(BadInputError) as caught:
            validate_bids(folder, skip=skip)
        assert caught.value.exit_code == 65
        assert str(folder) in str(caught.value)
        assert "dataset_description.json" in str(caught.value)
    with pytest.raises(BadInputError):
        load_layout(folder)
    with pytest.raises(MissingInputError) as caught:
        validate_bids(tmp_path / "absent")
    assert caught.value.exit_code == 66
    assert snapshot(folder) == before


def test_validator_errors_are_listed(dataset):
    bad = dataset / "sub-02" / "anat" / "sub-02_badname.nii.gz"
    _nifti(bad)
    before = snapshot(dataset)
    with pytest.raises(ValidationError) as caught:
        validate_bids(dataset)
    assert caught.value.exit_code == 16
    assert "/sub-02/anat/sub-02_badname.nii.gz" in str(caught.value)
    assert "--skip-bids-validation" in str(caught.value)
    validate_bids(dataset, skip=True)  # only the minimal check
    assert snapshot(dataset) == before


def test_unknown_participant(dataset, tmp_path):
    layout = load_layout(dataset, database_dir=tmp_path / "db")
    before = snapshot(dataset)
    with pytest.raises(MissingInputError) as caught:
        select_participants(layout, ["01", "sub-99"])
    assert caught.value.exit_code == 66
    message = str(caught.value)
    assert "sub-99" in message and "01, 02, 03" in message
    assert snapshot(dataset) == before


def test_subject_without_t1w(dataset, tmp_path):
    layout = load_layout(dataset, database_dir=tmp_path / "db")
    with pytest.raises(MissingInputError) as caught:
        collect_anatomicals(layout, "03")
    assert caught.value.exit_code == 66
    assert "sub-03" in str(caught.value) and "T1w" in str(caught.value)


def test_filters_that_select_nothing(dataset, tmp_path):
    layout = load_layout(dataset, database_dir=tmp_path / "db")
    for kwargs in ({"sessions": ["3"]}, {"filters": {"acquisition": "slow"}},
                   {"sessions": ["1"], "filters": {"acquisition": "fast"}}):
        with pytest.raises(NothingSelectedError) as caught:
            collect_anatomicals(layout, "01", **kwargs)
        assert caught.value.exit_code == 18
        assert "sub-01" in str(caught.value)
    with pytest.raises(UsageError) as caught:
        collect_anatomicals(layout, "01", filters={"notanentity": "x"})
    assert caught.value.exit_code == 64


def test_read_bids_filters(tmp_path):
    good = tmp_path / "filters.json"
    good.write_text(json.dumps({"T1w": {"session": "01", "acquisition": None}}))
    assert read_bids_filters(good) == {"t1w": {"session": "01", "acquisition": None}}
    broken = tmp_path / "broken.json"
    broken.write_text('{"t1w": {"session": "01",}')
    wrong = tmp_path / "wrong.json"
    wrong.write_text('["t1w"]')
    for path in (broken, wrong, tmp_path / "missing.json"):
        with pytest.raises(UsageError) as caught:
            read_bids_filters(path)
        assert caught.value.exit_code == 64
        assert str(path) in str(caught.value)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "4d"])
def test_damaged_images(dataset, tmp_path, damage):
    target = dataset / "sub-02" / "anat" / "sub-02_T1w.nii.gz"
    if damage == "truncated":
        content = target.read_bytes()
        target.write_bytes(content[: len(content) // 2])
    elif damage == "garbage":
        target.write_bytes(b"not a nifti file at all" * 20)
    else:
        _nifti(target, shape=(8, 8, 8, 3))
    before = snapshot(dataset)
    layout = load_layout(dataset, database_dir=tmp_path / "db")
    with pytest.raises(BadInputError) as caught:
        collect_anatomicals(layout, "02")
    assert caught.value.exit_code == 65
    assert str(target) in str(caught.value)
    if damage == "4d":
        assert "3D" in str(caught.value)
    else:
        assert "corrupt or truncated" in str(caught.value)
    assert collect_anatomicals(layout, "02", check=False) == [target]
    if damage != "truncated":  # the validator reads headers only: it cannot see truncation
        with pytest.raises(ValidationError) as caught:
            validate_bids(dataset)
        assert "/sub-02/anat/sub-02_T1w.nii.gz" in str(caught.value)
    assert snapshot(dataset) == before


def test_bids_uri(dataset):
    path = dataset / "sub-02" / "anat" / "sub-02_T1w.nii.gz"
    assert bids_uri(path, dataset) == "bids:raw:sub-02/anat/sub-02_T1w.nii.gz"
    assert bids_uri(path, dataset, "deriv") == "bids:deriv:sub-02/anat/sub-02_T1w.nii.gz"
    with pytest.raises(ValueError):
        bids_uri(path, dataset / "sub-01")


@pytest.mark.parametrize("shape", [(8, 8, 1), (8, 8)])
def test_one_slice_and_2d_images_are_refused_with_the_fix(dataset, tmp_path, shape):
    """A one-slice volume or a 2D image, as a target (collect_anatomicals) or in a context pair
    (check_pair): exit 65 naming the file and its shape, and saying what to give instead. The
    check is the one every image reader shares."""
    from neuroverse_bids.context_set import ContextPair, check_pair

    target = dataset / "sub-02" / "anat" / "sub-02_T1w.nii.gz"
    _nifti(target, shape=shape)
    layout = load_layout(dataset, database_dir=tmp_path / "db")
    with pytest.raises(BadInputError) as caught:
        collect_anatomicals(layout, "02")
    context = ContextPair("02", dataset / "sub-01" / "ses-1" / "anat" / "sub-01_ses-1_run-1_T1w.nii.gz",
                          outputs=[target], label_values=[None])
    with pytest.raises(BadInputError) as in_pair:
        check_pair(context)
    for error in (caught.value, in_pair.value):
        assert error.exit_code == 65
        assert str(target) in str(error) and str(shape) in str(error)
        assert "several slices in each direction" in str(error) and "4D" not in str(error)
