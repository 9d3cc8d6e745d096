"""Inference engine: label mapping from scores, window skipping, autocast, ensembles, bad inputs."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers import label_coded

from medseg.data.phantoms import make_phantom
from medseg.errors import CheckpointError, InputError
from medseg.inference.labels_from_scores import first_argmax, labels_from_scores
from medseg.inference.predictor import Predictor
from medseg.inference.sliding_window import WindowRunner, resolve_amp, window_scores
from medseg.io.volume import Volume
from medseg.transforms.spatial import resample


@pytest.mark.parametrize("out_shape", [(90, 70, 41), (30, 20, 10), (45, 35, 17)])
def test_boundary_only_labels_equal_whole_volume_trilinear_argmax(out_shape):
    torch.manual_seed(0)
    scores = torch.rand(5, 45, 35, 17).log()
    steps = [
        (n_in - 1) / (n_out - 1) * f
        for n_in, n_out, f in zip(scores.shape[1:], out_shape, (1.0, 0.9, 1.1), strict=False)
    ]
    expected = resample(scores, out_shape, steps, mode="trilinear").argmax(0).numpy()
    got, conf_sum, counts = labels_from_scores(scores, out_shape, steps, chunk=1000, with_confidence=True)
    np.testing.assert_array_equal(got, expected)
    assert counts.sum() == np.prod(scores.shape[1:])  # confidence is counted on the network grid
    assert np.all(conf_sum <= counts + 1e-6)


class _CountingNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 3, 1)
        self.seen = 0

    def forward(self, x):
        self.seen += x.shape[0]
        return self.conv(x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, np.float16, np.float32])
def test_first_argmax_is_argmax_with_ties_to_the_first_class(dtype):
    g = torch.Generator().manual_seed(0)
    s = torch.randint(0, 4, (5, 7, 6, 5), generator=g).float()  # integer scores: many ties
    s[:, 0, 0, 0] = 2.0  # all five equal: class 0
    s[3, 1, 0, 0], s[4, 1, 0, 0] = 9.0, 9.0  # a tie between 3 and 4: class 3
    scores = s.to(dtype) if isinstance(dtype, torch.dtype) else s.numpy().astype(dtype)
    got = first_argmax(scores)
    assert got.dtype == torch.uint8 and got.shape == s.shape[1:]
    assert torch.equal(got.long(), s.argmax(0)) and np.array_equal(got.numpy(), s.numpy().argmax(0))
    assert got[0, 0, 0] == 0 and got[1, 0, 0] == 3


def test_first_argmax_leaves_nan_and_many_classes_to_torch():
    s = torch.zeros(3, 4)
    s[2, 1] = float("nan")
    assert first_argmax(s).tolist() == s.argmax(0).tolist()  # NaN wins in torch: class 2 at voxel 1
    many = torch.randn(300, 10)
    assert torch.equal(first_argmax(many), many.argmax(0))


def test_background_windows_are_skipped_and_foreground_scores_unchanged():
    net = _CountingNet().eval()
    img = torch.zeros(1, 1, 64, 64, 32)
    img[..., :20, :20, :16] = torch.rand(1, 1, 20, 20, 16) + 0.1  # one corner holds tissue
    kw = dict(roi_size=(32, 32, 16), overlap=0.0, sw_batch_size=4, blend="constant", num_classes=3)
    stats = {}
    skipped = window_scores(net, img, skip_background=True, stats=stats, **kw)
    assert stats["windows_run"] == 1 and stats["windows_skipped"] == 7
    full = window_scores(net, img, skip_background=False, **kw)
    np.testing.assert_allclose(skipped[..., :32, :32, :16], full[..., :32, :32, :16], atol=1e-5)
    assert torch.all(skipped[:, 0, 32:, 32:] > skipped[:, 1, 32:, 32:])  # air windows say background


def test_amp_resolution_is_explicit():
    assert resolve_amp("off", torch.device("cpu")) is None
    assert resolve_amp("bf16", torch.device("cpu")) is torch.bfloat16
    assert resolve_amp("auto", torch.device("cuda")) is torch.float16
    runner = WindowRunner(
        _CountingNet().eval(), num_classes=3, amp_dtype=torch.bfloat16, channels_last=True, skip_background=False
    )
    with torch.inference_mode():
        out = runner(torch.rand(2, 1, 8, 8, 8))
    assert out.dtype == torch.float32 and out.shape == (2, 3, 8, 8, 8)


def test_prediction_metadata_and_ensemble_of_identical_members(oracle_checkpoint):
    case = make_phantom(51, spacing=(2.0, 2.0, 4.0))
    single = Predictor.from_checkpoint(oracle_checkpoint, device="cpu").predict(label_coded(case))
    pair = Predictor.from_checkpoint([oracle_checkpoint, oracle_checkpoint], device="cpu").predict(label_coded(case))
    np.testing.assert_array_equal(single.array, pair.array)
    meta = single.meta
    assert meta["windows_run"] > 0 and meta["peak_rss_mb"] > 0
    assert 0.5 < meta["confidence"]["liver"] <= 1.0


def test_flip_tta_on_a_symmetric_oracle_keeps_the_labels(oracle_checkpoint):
    case = make_phantom(52, spacing=(2.0, 2.0, 4.0))
    plain = Predictor.from_checkpoint(oracle_checkpoint, device="cpu").predict(label_coded(case))
    tta = Predictor.from_checkpoint(oracle_checkpoint, device="cpu", tta_flips=[1, 2]).predict(label_coded(case))
    assert (plain.array != tta.array).mean() < 0.002


def test_unknown_inference_option_is_refused(oracle_checkpoint):
    from medseg.errors import ConfigError

    with pytest.raises(ConfigError, match="sw_batch"):
        Predictor.from_checkpoint(oracle_checkpoint, sw_batchsize=3)


def test_empty_and_multichannel_inputs_get_clear_errors(oracle_checkpoint, tmp_path):
    predictor = Predictor.from_checkpoint(oracle_checkpoint, device="cpu")
    with pytest.raises(InputError, match="empty volume"):
        predictor.predict(Volume(np.zeros((0, 4, 4), np.float32), np.eye(4), "empty.nii.gz"))
    two = tmp_path / "two_channel.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8, 2), np.float32), np.eye(4)), two)
    with pytest.raises(InputError, match="two_channel.nii.gz.*3D"):
        predictor.predict(two)


def test_ensemble_members_must_share_labels(oracle_checkpoint, tmp_path):
    ckpt = torch.load(oracle_checkpoint, weights_only=True)
    ckpt["labels"] = {"name": "other", "labels": [{"index": 4, "name": "tumour"}]}  # 5 classes, as the network has
    other = tmp_path / "other.pt"
    torch.save(ckpt, other)
    with pytest.raises(CheckpointError, match="one label table"):
        Predictor.from_checkpoint([oracle_checkpoint, other])


def test_batch_writes_sidecar_probabilities_and_seg(oracle_checkpoint, tmp_path):

    import nibabel as nib

    from medseg.data.phantoms import PhantomCase, write_dicom_series
    from medseg.inference.batch import PredictOptions, predict_many
    from medseg.io.readers import write_volume

    case = make_phantom(53, spacing=(2.0, 2.0, 4.0), flips=(False, True, True))
    coded = case.labels.with_array(label_coded(case).array)
    dicom = write_dicom_series(PhantomCase("c", coded, case.labels, case.voxel_counts), tmp_path / "series")
    nifti = write_volume(coded, tmp_path / "nifti_case.nii.gz")
    res = predict_many(
        model=oracle_checkpoint,
        inputs=[dicom, nifti],
        out=tmp_path / "out",
        options=PredictOptions(device="cpu", progress=False, save_probabilities=True),
    )
    assert not res.failures and set(res.outputs) == {"series", "nifti_case"}
    side = json.loads((tmp_path / "out" / "series.json").read_text())
    assert side["outputs"] == {
        "label_map": "series.nii.gz",
        "dicom_seg": "series.seg.dcm",
        "sr": "series.sr.dcm",
        "probabilities": "series.probabilities.nii.gz",
    }
    assert side["peak_rss_mb"] > 0 and side["inference"]["amp"] == "auto" and "liver" in side["confidence"]
    assert "dicom_seg" not in json.loads((tmp_path / "out" / "nifti_case.json").read_text())["outputs"]
    probs = nib.load(tmp_path / "out" / "nifti_case.probabilities.nii.gz")
    assert probs.shape[3] == 5
    np.testing.assert_allclose(np.asarray(probs.dataobj).sum(axis=3), 1.0, atol=1e-4)


def test_perfect_scores_round_trip_keeps_every_structure_volume():
    """Truth labels -> one-hot scores on a 2.5 mm network grid -> labels on the input grid:
    the resampling itself must not bias volumes (a model's under-segmentation is then the model's)."""
    from medseg.io.geometry import closest_ras_view, from_closest_ras
    from medseg.transforms.spatial import grid_steps, target_shape

    case = make_phantom(5001, spacing=(0.69, 0.69, 4.2), flips=(True, False, True))
    lab = np.asarray(case.labels.array)
    view, aff, ornt, reverse = closest_ras_view(lab[None].astype(np.int16), case.labels.affine)
    spacing = np.linalg.norm(aff[:3, :3], axis=0)
    size, steps = target_shape(view.shape[1:], spacing, (2.5, 2.5, 2.5)), grid_steps(spacing, (2.5, 2.5, 2.5))
    onehot = torch.nn.functional.one_hot(view[0].long(), 5).permute(3, 0, 1, 2).float()
    scores = resample(onehot, size, steps, reverse=reverse).clamp_min(1e-6).log()
    back = from_closest_ras(labels_from_scores(scores, view.shape[1:], [1 / s for s in steps]), ornt)
    for k in range(1, 5):
        true, got = int((lab == k).sum()), int((back == k).sum())
        assert true > 1000
        assert abs(got - true) / true < 0.02, (k, got, true)
        dice = 2 * int(((lab == k) & (back == k)).sum()) / (true + got)
        assert dice > 0.96, (k, dice)  # in place, not only the right size


def test_a_folder_of_image_files_is_predicted_case_by_case(oracle_checkpoint, coarse_phantom, tmp_path):
    """`medseg predict --out pred imagesTs/` as nnU-Net users type it: each file a case, nnU-Net channels grouped."""
    import shutil

    from pydicom.data import get_testdata_file

    from medseg.api import predict
    from medseg.inference.batch import expand_folders
    from medseg.io.readers import write_volume

    folder = tmp_path / "imagesTs"
    write_volume(coarse_phantom.image, folder / "ab_0000.nii.gz")
    write_volume(coarse_phantom.image, folder / "cd_0000.nii.gz")
    (folder / "notes.txt").write_text("not an image")
    result = predict(model=oracle_checkpoint, inputs=[folder], out=tmp_path / "pred", progress=False)
    assert sorted(result.outputs) == ["ab_0000", "cd_0000"] and not result.failures
    predict(model=oracle_checkpoint, inputs=[folder / "ab_0000.nii.gz"], out=tmp_path / "direct", progress=False)
    direct = np.asanyarray(nib.load(tmp_path / "direct" / "ab_0000.nii.gz").dataobj)
    assert (direct > 0).any()
    for case in ("ab_0000", "cd_0000"):  # the same labels as the file given itself
        np.testing.assert_array_equal(np.asanyarray(nib.load(tmp_path / "pred" / f"{case}.nii.gz").dataobj), direct)
    # several channels per case: grouped in channel order; a gap is a one-line error naming the case
    multi = tmp_path / "multi"
    multi.mkdir()
    for name in ("x_0001", "x_0000", "y_0000", "y_0001"):
        (multi / f"{name}.nii.gz").write_bytes(b"")
    assert expand_folders([multi], in_channels=2) == [
        f"{multi}/x_0000.nii.gz,{multi}/x_0001.nii.gz",
        f"{multi}/y_0000.nii.gz,{multi}/y_0001.nii.gz",
    ]
    assert (
        len(expand_folders([multi])) == 4
    )  # a one-channel model: each file a case (tests/integration/test_first_hour.py)
    (multi / "y_0001.nii.gz").rename(multi / "y_0002.nii.gz")
    with pytest.raises(InputError, match=r"case y has channels \[0, 2\]"):
        expand_folders([multi], in_channels=2)
    # files not named by channel are one case each; a DICOM folder with a stray NIfTI stays one DICOM input
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "a.nii.gz").write_bytes(b""), (plain / "b.nrrd").write_bytes(b"")
    assert expand_folders([plain]) == [plain / "a.nii.gz", plain / "b.nrrd"]
    series = tmp_path / "series"
    series.mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), series / "1.dcm")
    (series / "converted.nii.gz").write_bytes(b"")
    assert expand_folders([series]) == [series]
