"""Hostile and careless image inputs (issue 17): each is refused at its cause with one line naming
the file, or (non-finite voxels, on request) repaired with a stated value and recorded.

- NaN/Inf voxels never give a silent all-background map: refused by default, replaced on request.
- A NIfTI without a usable voxel size or with a zero/singular/NaN affine is refused at read time.
- A header may not claim more voxels than the limit, or more bytes than its file can hold.
- A checkpoint whose label table does not fit the network's output channels is refused at load.
"""

import gzip
import json
import subprocess
import sys
import textwrap

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers import label_coded, predict_argv

from medseg.data.phantoms import make_phantom
from medseg.errors import CheckpointError, ConfigError, GeometryError, InputError
from medseg.inference.predictor import Predictor
from medseg.inference.sliding_window import WindowRunner
from medseg.io.readers import DEFLATE_MAX_RATIO, MAX_VOXELS, max_voxels, read_volume
from medseg.io.volume import Volume, check_affine, count_nonfinite


def write_raw_nifti(
    path, array, *, srow=None, sform_code=0, qform_code=0, pixdim=(1.0, 1.0, 1.0), shape=None, dtype=None, data=None
):
    """A NIfTI-1 file written field by field, so headers nibabel would refuse to make can be built.
    ``shape``/``dtype`` override what the header claims; ``data`` the bytes written after it."""
    h = nib.Nifti1Header()
    h.set_data_dtype(np.asarray(array).dtype if dtype is None else dtype)
    h.set_data_shape(np.asarray(array).shape if shape is None else shape)
    h["pixdim"][0] = 1.0
    h["pixdim"][1:4] = pixdim
    h["qform_code"], h["sform_code"] = qform_code, sform_code
    if srow is not None:
        h["srow_x"], h["srow_y"], h["srow_z"] = np.asarray(srow, dtype=np.float64)[:3]
    h["vox_offset"] = 352
    payload = np.asarray(array, h.get_data_dtype()).tobytes(order="F") if data is None else data
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as fh:
        fh.write(h.binaryblock + b"\0" * 4 + payload)
    return path


def _one_line(exc, name):
    msg = str(exc)
    assert "\n" not in msg and name in msg, msg
    return msg


@pytest.fixture(scope="module")
def oracle(oracle_checkpoint):
    return Predictor.from_checkpoint(oracle_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def coded_case():
    case = make_phantom(31, spacing=(2.0, 2.0, 4.0), flips=(False, True, False))
    return case, label_coded(case)


def _poison(image: Volume, fraction: float = 0.007, seed: int = 0, *, where_zero: bool = True):
    """A float copy of ``image`` with ``fraction`` of its (background) voxels set to NaN, +Inf and -Inf."""
    rng = np.random.default_rng(seed)
    arr = image.array.astype(np.float32).copy()
    pool = np.flatnonzero(arr.ravel() == 0) if where_zero else np.arange(arr.size)
    idx = rng.choice(pool, size=int(round(fraction * arr.size)), replace=False)
    flat = arr.reshape(-1)
    flat[idx[0::3]], flat[idx[1::3]], flat[idx[2::3]] = np.nan, np.inf, -np.inf
    return Volume(arr, image.affine.copy(), "poisoned.nii.gz"), len(idx)


# --- 1. non-finite voxels ---------------------------------------------------------------------


def test_nonfinite_voxels_are_refused_by_default_naming_file_and_count(oracle, coded_case):
    _, coded = coded_case
    poisoned, n = _poison(coded)
    assert count_nonfinite(poisoned.array) == n > 0
    with pytest.raises(InputError) as err:
        oracle.predict(poisoned)
    msg = _one_line(err.value, "poisoned.nii.gz")
    assert f"{n:,} of {poisoned.array.size:,} voxels" in msg and "--nonfinite replace" in msg


def test_nonfinite_voxels_replaced_on_request_give_the_clean_prediction_and_a_finding(
    oracle_checkpoint, oracle, coded_case
):
    case, coded = coded_case
    poisoned, n = _poison(coded)  # only background voxels: the floor (0 HU here) is what they were
    replacing = Predictor.from_checkpoint(oracle_checkpoint, device="cpu", nonfinite="replace")
    got = replacing.predict(poisoned)
    clean = oracle.predict(coded)
    np.testing.assert_array_equal(got.array, clean.array)
    assert np.array_equal(got.array, case.labels.array)  # and the oracle reads the phantom exactly
    assert got.meta["findings"] == [
        {
            "kind": "nonfinite_voxels",
            "channel": 0,
            "count": n,
            "fraction": n / coded.array.size,
            "action": "replaced with 0 (the intensity window's floor)",
        }
    ]
    assert clean.meta["findings"] == []
    assert np.isnan(poisoned.array).any()  # the caller's volume is not modified


def test_all_nonfinite_image_is_refused_even_when_replacing(oracle_checkpoint):
    replacing = Predictor.from_checkpoint(oracle_checkpoint, device="cpu", nonfinite="replace")
    with pytest.raises(InputError, match="every voxel is NaN"):
        replacing.predict(Volume(np.full((8, 8, 8), np.nan, np.float32), np.eye(4), "nan.nii.gz"))


def test_unknown_nonfinite_policy_is_a_config_error(oracle_checkpoint):
    with pytest.raises(ConfigError, match="nonfinite='ignore'"):
        Predictor.from_checkpoint(oracle_checkpoint, device="cpu", nonfinite="ignore")


def test_window_whose_maximum_is_nan_is_never_taken_for_air():
    class Count(torch.nn.Module):
        seen = 0

        def forward(self, x):
            Count.seen += x.shape[0]
            return torch.zeros(x.shape[0], 2, *x.shape[2:])

    runner = WindowRunner(Count(), num_classes=2, amp_dtype=None, channels_last=False, skip_background=True, floor=0.0)
    x = torch.zeros(3, 1, 4, 4, 4)  # window 0: air; 1: NaN in air; 2: tissue
    x[1, 0, 1, 1, 1] = float("nan")
    x[2, 0, 2, 2, 2] = 0.5
    runner(x)
    assert (runner.windows_run, runner.windows_skipped, Count.seen) == (2, 1, 2)


def test_batch_sidecar_carries_the_replacement_finding(oracle_checkpoint, coded_case, tmp_path):
    from medseg.inference.batch import PredictOptions, predict_many
    from medseg.io.readers import write_volume

    _, coded = coded_case
    poisoned, n = _poison(coded, seed=3)
    src = write_volume(poisoned, tmp_path / "in" / "poisoned.nii.gz")
    res = predict_many(
        model=oracle_checkpoint,
        inputs=[src],
        out=tmp_path / "out",
        options=PredictOptions(device="cpu", progress=False, dicom_seg=False, inference={"nonfinite": "replace"}),
    )
    assert not res.failures
    side = json.loads((tmp_path / "out" / "poisoned.json").read_text())
    assert side["findings"][0]["count"] == n and side["findings"][0]["kind"] == "nonfinite_voxels"
    assert side["inference"]["nonfinite"] == "replace"


def test_cli_refuses_nonfinite_input_with_one_line_and_exit_2(oracle_checkpoint, coded_case, tmp_path, capsys):
    from medseg.cli import main
    from medseg.io.readers import write_volume

    _, coded = coded_case
    poisoned, n = _poison(coded, seed=4)
    src = write_volume(poisoned, tmp_path / "poisoned.nii.gz")
    code = main(predict_argv(oracle_checkpoint, src, tmp_path / "out", "--device", "cpu"))
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"{n:,} of" in err and "poisoned.nii.gz" in err and "NaN or infinite" in err
    assert not (tmp_path / "out" / "poisoned.nii.gz").exists()  # no all-background map


# --- 2. geometry that cannot be measured --------------------------------------------------------

ARRAY = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)
BAD_GEOMETRY = {
    "zero_pixdim_no_qform_sform": dict(pixdim=(1.0, 0.0, 1.0)),
    "negative_pixdim_no_qform_sform": dict(pixdim=(1.0, -2.0, 1.0)),
    "nan_pixdim_no_qform_sform": dict(pixdim=(np.nan, 1.0, 1.0)),
    "zero_pixdim_with_qform": dict(pixdim=(0.0, 1.0, 1.0), qform_code=1),
    "all_zero_sform": dict(srow=np.zeros((3, 4)), sform_code=1),
    "singular_sform": dict(srow=[[1, 2, 0, 0], [1, 2, 0, 0], [0, 0, 3, 0]], sform_code=1),  # parallel axes
    "nan_sform": dict(srow=[[np.nan, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]], sform_code=1),
}


@pytest.mark.parametrize("name", sorted(BAD_GEOMETRY))
def test_unmeasurable_geometry_is_refused_at_read_time(tmp_path, name):
    path = write_raw_nifti(tmp_path / f"{name}.nii.gz", ARRAY, **BAD_GEOMETRY[name])
    with pytest.raises(GeometryError) as err:
        read_volume(path)
    _one_line(err.value, f"{name}.nii.gz")


def test_usable_pixdim_without_qform_or_sform_still_reads(tmp_path):
    vol = read_volume(write_raw_nifti(tmp_path / "analyze_style.nii", ARRAY, pixdim=(0.5, 2.0, 3.0)))
    assert vol.spacing == (0.5, 2.0, 3.0) and np.array_equal(vol.array, ARRAY)


def test_check_affine_accepts_oblique_and_refuses_degenerate():
    c, s = np.cos(0.4), np.sin(0.4)
    oblique = np.array([[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 2.5, 0], [0, 0, 0, 1]])
    check_affine(oblique)
    for bad in (np.zeros((4, 4)), np.diag([1.0, 1.0, 0.0, 1.0]), np.diag([1.0, np.inf, 1.0, 1.0])):
        with pytest.raises(GeometryError):
            check_affine(bad, path="x.nii")
    with pytest.raises(GeometryError, match="singular"):
        Volume(np.zeros((2, 2, 2)), [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], "v.nii")


def test_cli_singular_affine_is_one_line_exit_2(oracle_checkpoint, tmp_path, capsys):
    from medseg.cli import main

    src = write_raw_nifti(tmp_path / "singular.nii.gz", ARRAY, **BAD_GEOMETRY["singular_sform"])
    code = main(predict_argv(oracle_checkpoint, src, tmp_path / "out", "--device", "cpu"))
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "singular.nii.gz" in err and "singular" in err


def test_broken_voxel_size_that_would_explode_the_network_grid_is_refused(oracle):
    huge = Volume(np.zeros((10, 10, 10), np.float32), np.diag([1e5, 1e5, 1e5, 1.0]), "huge.nii.gz")
    with pytest.raises(InputError, match="huge.nii.gz.*over the limit of 1,073,741,824"):
        oracle.predict(huge)
    # 40 mm voxels (a header in cm, or a corrupt affine) -> 381^3 network voxels from 20^3: refused before allocating
    coarse = Volume(np.zeros((20, 20, 20), np.float32), np.diag([40.0, 40.0, 40.0, 1.0]), "coarse.nii.gz")
    with pytest.raises(InputError, match=r"coarse.nii.gz.*6913 times the image's 8,000"):
        oracle.predict(coarse)
    # a legitimately coarse image (4 mm -> the oracle's 2 mm: 8x) is segmented
    ok = oracle.predict(Volume(np.zeros((40, 40, 30), np.float32), np.diag([4.0, 4.0, 4.0, 1.0]), "ok.nii.gz"))
    assert ok.shape == (40, 40, 30) and not ok.array.any()


@pytest.mark.parametrize("units,factor", [(1, 1000.0), (3, 0.001), (2, 1.0), (0, 1.0)])
def test_nifti_spatial_units_are_converted_to_mm_as_itk_does(tmp_path, units, factor):
    import SimpleITK as sitk

    img = nib.Nifti1Image(ARRAY, np.diag([0.5, 0.5, 2.0, 1.0]))
    img.header["xyzt_units"] = units | 8  # time in seconds: only the spatial bits count
    nib.save(img, tmp_path / "units.nii")
    vol = read_volume(tmp_path / "units.nii")
    assert np.allclose(vol.spacing, np.array([0.5, 0.5, 2.0]) * factor)
    assert np.allclose(vol.spacing, sitk.ReadImage(str(tmp_path / "units.nii")).GetSpacing())


# --- 3. memory a header may claim ---------------------------------------------------------------


def test_header_over_the_voxel_limit_is_refused_before_reading(tmp_path):
    # 4 GiB of int16 claimed by a file of a few hundred bytes (the 4 MB case, smaller)
    path = write_raw_nifti(tmp_path / "claims_4gb.nii.gz", ARRAY, shape=(1024, 1024, 2048), data=b"")
    with pytest.raises(InputError) as err:
        read_volume(path)
    assert "2,147,483,648 voxels, over medseg's limit of 1,073,741,824" in _one_line(err.value, "claims_4gb.nii.gz")


def test_voxel_limit_is_configurable(tmp_path, monkeypatch):
    path = write_raw_nifti(tmp_path / "small.nii", np.zeros((10, 10, 10), np.uint8))
    assert max_voxels() == MAX_VOXELS == 2**30
    monkeypatch.setenv("MEDSEG_MAX_VOXELS", "999")
    with pytest.raises(InputError, match="1,000 voxels, over medseg's limit of 999"):
        read_volume(path)
    monkeypatch.setenv("MEDSEG_MAX_VOXELS", "1000")
    assert read_volume(path).shape == (10, 10, 10)
    monkeypatch.setenv("MEDSEG_MAX_VOXELS", "lots")
    with pytest.raises(ConfigError, match="MEDSEG_MAX_VOXELS"):
        read_volume(path)


def test_gzip_claiming_more_than_deflate_can_expand_is_refused(tmp_path):
    # 2**28 int16 voxels (512 MiB, under the voxel limit) claimed by a gzip of well under 512 KiB
    path = write_raw_nifti(tmp_path / "bomb.nii.gz", ARRAY, shape=(1024, 512, 512), data=b"\0" * 1000)
    size = path.stat().st_size
    assert 2**29 > size * DEFLATE_MAX_RATIO + 65536
    with pytest.raises(InputError, match="truncated or its header is corrupt"):
        read_volume(path)


def test_uncompressed_file_shorter_than_its_header_claims_is_refused(tmp_path):
    path = write_raw_nifti(tmp_path / "short.nii", ARRAY, shape=(40, 40, 40))
    with pytest.raises(InputError, match=r"128,000 bytes of voxels, but 48 bytes of raw data"):
        read_volume(path)


def test_truncated_gzip_costs_only_what_it_holds(tmp_path):
    """The header claims 256 MiB (within 1032:1 of the file), the stream holds 1 MiB: refused as
    truncated, and the process never becomes resident for the claim."""
    path = write_raw_nifti(
        tmp_path / "truncated.nii.gz", ARRAY, shape=(512, 512, 512), dtype=np.int16, data=b"\0" * (1 << 20)
    )
    code = textwrap.dedent(f"""
        import resource
        from medseg.errors import InputError
        from medseg.io.readers import read_volume
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            read_volume({str(path)!r})
        except InputError as exc:
            print("REFUSED", str(exc).count(chr(10)), "truncated" in str(exc))
        print("GROWTH_MB", (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout
    assert "REFUSED 0 True" in out, out
    growth = float(out.split("GROWTH_MB")[1])
    assert growth < 64, out  # the claim was 256 MiB


def test_itk_header_claiming_more_than_its_file_is_refused_before_reading(tmp_path):
    mha = tmp_path / "claims.mha"
    mha.write_text(
        "ObjectType = Image\nNDims = 3\nDimSize = 400 400 400\nElementSpacing = 1 1 1\n"
        "ElementType = MET_SHORT\nElementDataFile = LOCAL\n" + "x" * 100
    )
    with pytest.raises(InputError) as err:
        read_volume(mha)
    assert "128,000,000 bytes of voxels" in _one_line(err.value, "claims.mha")
    huge = tmp_path / "huge.mha"
    huge.write_text(
        "ObjectType = Image\nNDims = 3\nDimSize = 40000 40000 40000\nElementType = MET_UCHAR\nElementDataFile = LOCAL\n"
    )
    with pytest.raises(InputError, match="over medseg's limit"):
        read_volume(huge)


@pytest.mark.parametrize("suffix,compress", [(".nrrd", False), (".nrrd", True), (".mha", True), (".mhd", False)])
def test_itk_files_still_read_exactly(tmp_path, suffix, compress):
    import SimpleITK as sitk

    arr = np.arange(60, dtype=np.int16).reshape(3, 4, 5)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.5, 0.7, 2.0))
    sitk.WriteImage(img, str(tmp_path / f"a{suffix}"), useCompression=compress)
    vol = read_volume(tmp_path / f"a{suffix}")
    assert np.array_equal(vol.array, arr.transpose(2, 1, 0)) and np.allclose(vol.spacing, (0.5, 0.7, 2.0))


def test_nifti_reads_equal_nibabel_for_scaled_and_big_endian_data(tmp_path):
    rng = np.random.default_rng(0)
    a = (rng.normal(size=(9, 7, 5)) * 100).astype(np.int16)
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    scaled = nib.Nifti1Image(a, affine)
    scaled.header.set_slope_inter(0.5, -3.0)
    big_endian = nib.Nifti1Image(a.astype(">f4"), affine)
    for name, img in (("scaled", scaled), ("big_endian", big_endian)):
        for suffix in (".nii", ".nii.gz"):
            p = tmp_path / f"{name}{suffix}"
            nib.save(img, p)
            got, ref = read_volume(p).array, np.asanyarray(nib.load(p).dataobj)
            assert got.dtype == ref.dtype and np.array_equal(got, ref), (name, suffix)


# --- 4. checkpoints whose labels do not fit the network -----------------------------------------


def _edited(oracle_checkpoint, tmp_path, name, edit):
    ckpt = torch.load(oracle_checkpoint, weights_only=True)
    edit(ckpt)
    p = tmp_path / name
    torch.save(ckpt, p)
    return p


def test_label_table_larger_than_the_network_is_refused_at_load(oracle_checkpoint, tmp_path):
    from medseg.models.checkpoint import load_checkpoint

    def more_labels(ckpt):
        ckpt["labels"]["labels"].append({"index": 40, "name": "extra"})

    bad = _edited(oracle_checkpoint, tmp_path, "more_labels.pt", more_labels)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(bad)
    msg = _one_line(err.value, "more_labels.pt")
    assert "needs 41 output channels" in msg and "has 5" in msg and "more labels" in msg
    with pytest.raises(CheckpointError, match="more labels"):
        Predictor.from_checkpoint(bad, device="cpu")


@pytest.mark.parametrize(
    "name,edit,match",
    [
        ("fewer_labels.pt", lambda c: c["labels"].update(labels=c["labels"]["labels"][:2]), "fewer labels"),
        ("bad_index.pt", lambda c: c["labels"]["labels"][0].update(index="liver"), "unusable label table"),
        ("bad_channels.pt", lambda c: c["model"].update(out_channels=-5), "positive whole numbers"),
        ("no_model_keys.pt", lambda c: c.update(model={"name": "unet"}), "'model' entry needs"),
    ],
)
def test_inconsistent_checkpoints_are_refused_at_load(oracle_checkpoint, tmp_path, name, edit, match):
    from medseg.models.checkpoint import load_checkpoint

    with pytest.raises(CheckpointError, match=match) as err:
        load_checkpoint(_edited(oracle_checkpoint, tmp_path, name, edit))
    _one_line(err.value, name)
