"""``medseg report`` on a small cohort from the CLI: every output, and report.html rendered in headless Chromium."""

import os
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from medseg.cli import main
from medseg.data.phantoms import PHANTOM_LABELS, make_phantom
from medseg.io.readers import write_label_map, write_volume
from medseg.io.volume import Volume

LIVER_RGB = (221, 130, 101)
HEADER_RGB = (238, 238, 255)  # table header background in report.html


def _cohort(tmp_path):
    """Six phantoms at coarse spacing: case 4 has the liver cut by the border, case 5 has a huge
    'spleen' (liver relabelled) and no liver, case 0's image is cropped (another grid)."""
    labels, images, cases = [], [], []
    for n in range(6):
        c = make_phantom(700 + n, spacing=(2.5, 2.5, 5.0), flips=(n % 2 == 1, False, n == 3), noise_hu=0.0)
        lab = np.array(c.labels.array)
        if n == 4:
            lab[lab == 1] = 0
            lab[:3, 20:30, 10:16] = 1  # the liver, cut by the x = 0 face
        if n == 5:
            lab[lab == 1] = 2
        img = c.image
        if n == 0:  # cropped: 3 voxels fewer on each side in x
            aff = img.affine.copy()
            aff[:3, 3] += 3 * aff[:3, 0]
            img = Volume(np.ascontiguousarray(img.array[3:-3]), aff)
        lp, ip = tmp_path / "labels" / f"case{n}.nii.gz", tmp_path / "images" / f"case{n}.nii.gz"
        write_label_map(Volume(lab, c.labels.affine), lp)
        write_volume(img, ip)
        labels.append(str(lp))
        images.append(str(ip))
        cases.append((c, lab))
    return labels, images, cases


def _chromium():
    path = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is needed to render report.html (CI installs it in .ci/run)")
        pytest.skip("chromium not installed")
    return path


def _chrome(binary, tmp_path, *args):
    profile = tmp_path / f"chrome-profile-{len(list(tmp_path.glob('chrome-profile-*')))}"
    cmd = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.mark.needs_chromium
def test_report_cli_writes_tables_montages_and_a_page_that_renders(tmp_path):
    labels, images, cases = _cohort(tmp_path)
    out = tmp_path / "report"
    assert (
        main(
            ["report", "--labels", *labels, "--images", *images, "--label-table", "abdomen_phantom", "--out", str(out)]
        )
        == 0
    )

    vol = pd.read_csv(out / "volumes.csv")
    assert len(vol) == 6 * 4 and list(vol.columns[:4]) == ["case_id", "structure", "label", "status"]
    v = vol.set_index(["case_id", "structure"])
    for n, (_c, lab) in enumerate(cases):
        for s in PHANTOM_LABELS.labels:
            assert v.loc[(f"case{n}", s.name), "voxel_count"] == int((lab == s.index).sum())
    assert (
        v.loc[("case4", "liver"), "status"] == "touches_border"
        and v.loc[("case4", "liver"), "voxel_count"] == 3 * 10 * 6
    )
    assert v.loc[("case5", "liver"), "status"] == "absent" and pd.isna(v.loc[("case5", "liver"), "intensity_mean"])
    assert bool(v.loc[("case5", "spleen"), "outlier"]) and v.loc[("case5", "spleen"), "outlier_basis"] == "robust_z"
    assert vol.loc[vol.structure == "liver", "outlier"].isna().all()  # 4 livers present: too few to judge
    # Case 0's image is on another grid: resampled (a whole-voxel shift, so linear interpolation is exact).
    c0, lab0 = cases[0]
    assert set(vol.loc[vol.case_id == "case0", "intensity_sampling"]) == {"linear"}
    for s in PHANTOM_LABELS.labels:
        expected = c0.image.array[lab0 == s.index].mean()
        assert v.loc[("case0", s.name), "intensity_mean"] == pytest.approx(expected, abs=1e-3)

    wide = pd.read_csv(out / "volumes_wide.csv")
    assert wide["case_id"].tolist() == [f"case{n}" for n in range(6)]
    assert pd.isna(wide.loc[5, "liver_ml"]) and wide.loc[5, "liver_status"] == "absent"
    summary = pd.read_csv(out / "summary.csv").set_index("structure")
    assert (
        summary.loc["liver", "n_present"] == 4
        and summary.loc["liver", "n_touches_border"] == 1
        and summary.loc["liver", "n_absent"] == 1
    )
    for n in range(6):
        assert (out / "qc" / f"case{n}.png").stat().st_size > 10_000

    page = (out / "report.html").read_text()
    assert not re.search(r"""(src|href)=['"](https?:)?//""", page)  # nothing fetched from the network
    assert page.index("case5</a> spleen") < page.index("id='cohort'")  # the outlier is listed above the table

    chromium = _chromium()
    dom = _chrome(chromium, tmp_path, "--virtual-time-budget=5000", "--dump-dom", (out / "report.html").as_uri())
    body = re.search(r"<body[^>]*>", dom.stdout)
    assert body, dom.stderr[-2000:]
    assert 'data-broken-images="0"' in body.group(0) and 'data-images="7"' in body.group(0), body.group(0)

    shot = tmp_path / "shot.png"
    _chrome(
        chromium,
        tmp_path,
        "--window-size=1280,2400",
        "--hide-scrollbars",
        f"--screenshot={shot}",
        (out / "report.html").as_uri(),
    )
    from PIL import Image

    rgb = np.asarray(Image.open(shot).convert("RGB")).astype(int)

    def count(colour, tol):
        return int((np.abs(rgb - np.array(colour)).max(axis=-1) <= tol).sum())

    assert count(HEADER_RGB, 2) > 5_000  # the cohort and summary tables
    assert count(LIVER_RGB, 12) > 300  # liver contours of the first montage
    grey = (np.ptp(rgb, axis=-1) < 3) & (rgb[..., 0] > 60) & (rgb[..., 0] < 200)
    assert grey.sum() > 50_000  # CT grey levels of the montage
