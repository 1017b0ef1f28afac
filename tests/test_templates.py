"""TemplateFlow home filled offline from nilearn's packaged MNI152 2009a files."""
import json
import os
import subprocess
import sys

import nibabel as nb
import numpy as np
import pytest

from neuroverse_bids.workflows.errors import ExitCode, MissingInputError
from neuroverse_bids.workflows.templates import (OFFLINE_TEMPLATE, fill_templateflow_home,
                                                 get_template)

NO_NETWORK = ("import socket\n"
              "def _refuse(*args, **kwargs):\n"
              "    raise OSError('network access in a test')\n"
              "socket.socket.connect = _refuse\n"
              "socket.create_connection = _refuse\n")


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return fill_templateflow_home(tmp_path_factory.mktemp("tf") / "templateflow")


def test_fill_writes_templateflow_layout(home):
    folder = home / f"tpl-{OFFLINE_TEMPLATE}"
    t1w = nb.load(str(folder / f"tpl-{OFFLINE_TEMPLATE}_res-1_T1w.nii.gz"))
    mask = nb.load(str(folder / f"tpl-{OFFLINE_TEMPLATE}_res-1_desc-brain_mask.nii.gz"))
    assert t1w.shape == mask.shape and np.allclose(t1w.affine, mask.affine)
    assert np.allclose(np.linalg.norm(t1w.affine[:3, :3], axis=0), 1.0)  # 1 mm
    brain = np.asanyarray(mask.dataobj)
    assert set(np.unique(brain)) == {0, 1}
    volume_ml = brain.sum() / 1000.0
    assert 1400 < volume_ml < 2200  # an adult brain: about 1.5-2 litres
    # the mask is the support of the skull-stripped T1w
    assert np.array_equal(brain > 0, ndimage_fill(np.asanyarray(t1w.dataobj) > 0))
    for label in ("GM", "WM"):
        prob = np.asanyarray(nb.load(str(
            folder / f"tpl-{OFFLINE_TEMPLATE}_res-1_label-{label}_probseg.nii.gz")).dataobj)
        assert prob.dtype == np.float32 and prob.min() >= 0 and prob.max() <= 1
        assert prob[brain > 0].mean() > 0.2
    description = json.loads((folder / "template_description.json").read_text())
    assert description["Identifier"] == OFFLINE_TEMPLATE
    assert description["res"]["1"]["shape"] == list(t1w.shape)
    umask = os.umask(0)
    os.umask(umask)
    mode = os.stat(folder / f"tpl-{OFFLINE_TEMPLATE}_res-1_T1w.nii.gz").st_mode & 0o777
    assert mode == 0o666 & ~umask  # not mkstemp's 0600


def ndimage_fill(mask):
    from scipy import ndimage

    return ndimage.binary_fill_holes(mask)


def test_fill_is_idempotent(home):
    files = sorted(home.rglob("*.nii.gz"))
    before = {p: p.stat().st_mtime_ns for p in files}
    fill_templateflow_home(home)
    assert {p: p.stat().st_mtime_ns for p in files} == before


def test_get_template_offline(home, monkeypatch):
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(home))  # read at call time
    files = get_template(OFFLINE_TEMPLATE, resolution=1)
    assert files["t1w"].name == f"tpl-{OFFLINE_TEMPLATE}_res-1_T1w.nii.gz"
    assert files["brain_mask"].name == f"tpl-{OFFLINE_TEMPLATE}_res-1_desc-brain_mask.nii.gz"
    assert all(p.parent.parent == home for p in files.values())


def test_templateflow_api_finds_files_without_network(home):
    code = NO_NETWORK + (
        "from templateflow import api\n"
        f"print(api.get('{OFFLINE_TEMPLATE}', resolution=1, suffix='T1w', desc=None))\n"
        f"print(api.get('{OFFLINE_TEMPLATE}', resolution=1, desc='brain', suffix='mask'))\n"
        f"print(api.get('{OFFLINE_TEMPLATE}', resolution=1, label='WM', suffix='probseg'))\n")
    env = dict(os.environ, TEMPLATEFLOW_HOME=str(home), TEMPLATEFLOW_AUTOUPDATE="0")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split()
    assert [p.rsplit("_", 1)[-1] for p in lines] == ["T1w.nii.gz", "mask.nii.gz",
                                                      "probseg.nii.gz"]
    assert all(line.startswith(str(home)) for line in lines)


def test_missing_template_is_a_clear_error_not_a_download(home, tmp_path, monkeypatch):
    with pytest.raises(MissingInputError) as error:
        get_template("MNI152NLin2009cAsym", home=home)
    assert error.value.exit_code == ExitCode.MISSING_INPUT
    assert "TEMPLATEFLOW_HOME" in str(error.value) and "prefetch" in str(error.value)
    # TemplateFlow's skeleton holds empty placeholders that api.get would download: refuse
    placeholder = tmp_path / "tf" / "tpl-MNI152NLin2009cAsym"
    placeholder.mkdir(parents=True)
    for name in ("res-1_T1w", "res-1_desc-brain_mask"):
        (placeholder / f"tpl-MNI152NLin2009cAsym_{name}.nii.gz").touch()
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError("network access")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    with pytest.raises(MissingInputError, match="not available offline"):
        get_template("MNI152NLin2009cAsym", home=tmp_path / "tf")
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(tmp_path / "nowhere"))
    with pytest.raises(MissingInputError, match="does not exist"):
        get_template(OFFLINE_TEMPLATE)


def test_missing_demo_template_comes_from_a_private_home_not_the_shared_one(tmp_path,
                                                                             monkeypatch):
    """The shared TEMPLATEFLOW_HOME (fMRIPrep reads it too) is never written."""
    from neuroverse_bids.workflows.templates import resolve_template_files

    shared = tmp_path / "shared"
    shared.mkdir()
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(shared))
    files = resolve_template_files(OFFLINE_TEMPLATE, private_home=tmp_path / "work" / "templateflow")
    assert all(p.is_relative_to(tmp_path / "work" / "templateflow") for p in files.values())
    assert not list(shared.iterdir())
    with pytest.raises(MissingInputError, match="prefetch"):  # others: fetched beforehand
        resolve_template_files("MNI152NLin2009cAsym", private_home=tmp_path / "work" / "tf")
    with pytest.raises(MissingInputError, match="must not be the shared"):
        resolve_template_files(OFFLINE_TEMPLATE, private_home=shared)
