"""Group level: group_volumes.tsv and group.html on fake participant outputs."""
import csv
import math

import nibabel as nb
import numpy as np
import pytest

from neuroverse_bids.workflows.reports import (build_group_report, is_nonempty_image,
                                               report_figures, robust_z)
from neuroverse_bids.workflows.reports.group import collect_volumes

#: image prefix -> (voxel size mm, brain radii mm); sub-11 has a far too small brain
RADII = (30.0, 36.0, 27.0)
IMAGES = {f"sub-{n:02d}": (1.5 + 0.5 * (n % 3), 1.0 + 0.02 * (n % 5)) for n in range(1, 12)}
IMAGES.pop("sub-03")
IMAGES.update({"sub-03_ses-a": (2.0, 1.03), "sub-03_ses-b": (2.5, 1.04)})
IMAGES["sub-11"] = (2.0, 0.6)


def _ellipsoid_mask(zoom, radii, flip):
    size = int(math.ceil(2 * max(radii) / zoom)) + 4
    affine = np.diag([zoom, zoom, zoom, 1.0])
    if flip:
        affine[0, 0] = -zoom
    affine[:3, 3] = -affine[:3, :3] @ np.full(3, (size - 1) / 2)
    ijk = np.indices((size,) * 3).reshape(3, -1).T
    world = nb.affines.apply_affine(affine, ijk)
    inside = ((world / np.asarray(radii)) ** 2).sum(1).reshape((size,) * 3) <= 1
    return nb.Nifti1Image(inside.astype(np.uint8), affine)


def _volume(radii):
    return 4 / 3 * math.pi * np.prod(radii)


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    out = tmp_path_factory.mktemp("group") / "out"
    expected = {}
    for number, (prefix, (zoom, scale)) in enumerate(IMAGES.items()):
        parts = prefix.split("_")
        anat = out.joinpath(*parts, "anat")
        anat.mkdir(parents=True)
        brain, wm = tuple(r * scale for r in RADII), tuple(r * scale * 0.6 for r in RADII)
        for name, radii in (("brain", brain), ("WM", wm)):
            img = _ellipsoid_mask(zoom, radii, flip=bool(number % 2))
            nb.save(img, str(anat / f"{prefix}_desc-{name}_mask.nii.gz"))
            # template-space masks and probabilities are not tabulated
            nb.save(img, str(anat / f"{prefix}_space-MNI152NLin2009cAsym_desc-{name}_mask.nii.gz"))
            nb.save(img, str(anat / f"{prefix}_label-{name}_probseg.nii.gz"))
        expected[prefix] = {"brain": _volume(brain), "WM": _volume(wm)}
    (out / "sub-01.html").write_text("<html></html>")
    return out, expected


def test_collect_volumes_skips_template_space(outputs):
    out, expected = outputs
    rows, structures = collect_volumes(out)
    assert structures == ["WM", "brain"] or structures == ["brain", "WM"]
    assert sorted(r["source"] for r in rows) == sorted(expected)


def test_group_tsv_rows_columns_and_volumes(outputs):
    out, expected = outputs
    build_group_report(out)
    with open(out / "group_volumes.tsv", newline="") as stream:
        rows = list(csv.DictReader(stream, delimiter="\t"))
    assert list(rows[0])[:3] == ["participant_id", "session_id", "source"]
    assert sorted(list(rows[0])[3:]) == ["WM", "brain"]
    assert len(rows) == len(IMAGES) == 12
    for row in rows:
        prefix = row["source"]
        assert row["participant_id"] == prefix.split("_")[0]
        assert row["session_id"] == (prefix.split("_")[1] if "_ses-" in prefix else "n/a")
        for name in ("brain", "WM"):
            assert float(row[name]) == pytest.approx(expected[prefix][name], rel=0.05), (prefix, name)
    # the table's number is exactly voxels x voxel volume of the native mask
    mask = nb.load(str(out / "sub-03/ses-b/anat/sub-03_ses-b_desc-brain_mask.nii.gz"))
    voxels = np.count_nonzero(np.asanyarray(mask.dataobj))
    row = next(r for r in rows if r["source"] == "sub-03_ses-b")
    assert float(row["brain"]) == pytest.approx(voxels * 2.5 ** 3)


def test_group_page_flags_the_outlier_and_links_reports(outputs):
    out, _ = outputs
    written = build_group_report(out)
    page = written["page"]
    assert page == out / "group.html" and written["table"] == out / "group_volumes.tsv"
    assert written["rows"] == len(IMAGES) and sorted(written["structures"]) == ["WM", "brain"]
    text = page.read_text()
    figures = report_figures(page)
    assert len(figures) == 1 and is_nonempty_image(figures[0])
    outliers = text.split('id="outliers"')[1].split("</section>")[0]
    assert "sub-11" in outliers and "sub-10" not in outliers and "sub-02" not in outliers
    assert text.count('class="outlier"') == 2  # sub-11's brain and WM cells
    assert '<a href="sub-01.html">sub-01</a>' in text  # only reports that exist are linked
    assert 'href="sub-02.html"' not in text


def test_robust_z():
    values = [10.0, 11.0, 9.0, 10.0, 10.5, 9.5, 30.0, float("nan")]
    z = robust_z(values)
    finite = np.asarray(values[:-1])
    mad = 1.4826 * np.median(np.abs(finite - np.median(finite)))
    assert z[6] == pytest.approx((30.0 - np.median(finite)) / mad) and z[6] > 3
    assert np.all(np.abs(z[:6]) < 3) and np.isnan(z[7])
    assert np.all(robust_z([5.0, 5.0, 5.0]) == 0)


def test_group_command(outputs, tmp_path):
    from neuroverse_bids.cli.run import main

    out, _ = outputs
    bids = tmp_path / "bids"
    bids.mkdir()
    assert main([str(bids), str(out), "group", "-w", str(tmp_path / "work")]) == 0
    assert (out / "group_volumes.tsv").is_file() and (out / "group.html").is_file()
    empty = tmp_path / "empty"
    assert main([str(bids), str(empty), "group", "-w", str(tmp_path / "work")]) == 66
    # without a participant run's context set there is nothing to self-evaluate: skipped
    # with a warning by default, an error (exit 66) when asked for
    assert not (out / "self_evaluation.tsv").exists()
    assert main([str(bids), str(out), "group", "-w", str(tmp_path / "work"),
                 "--self-evaluation", "on"]) == 66
