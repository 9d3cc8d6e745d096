"""Bad input gets one clear line naming the file, never a traceback; a batch goes on."""

import numpy as np
import pandas as pd
from helpers import label_coded, medseg_cli

from medseg.cli import main
from medseg.data.phantoms import make_phantom
from medseg.io.readers import read_volume, write_volume


def _one_line_error(capsys, argv, needle):
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1, err
    assert err.startswith("medseg: error:") and needle in err, err
    return err


def test_missing_checkpoint_and_missing_input(capsys, tmp_path, oracle_checkpoint):
    _one_line_error(
        capsys, ["predict", "--model", str(tmp_path / "nope.pt"), "x.nii.gz", "--out", str(tmp_path)], "nope.pt"
    )
    _one_line_error(
        capsys,
        [
            "report",
            "--labels",
            str(tmp_path / "absent.nii.gz"),
            "--label-table",
            "abdomen_phantom",
            "--out",
            str(tmp_path),
        ],
        "absent.nii.gz",
    )  # noqa: E501


def test_config_typo_names_the_file_and_the_fix(capsys, tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("training:\n  learning_rte: 0.01\n")
    (tmp_path / "m.csv").write_text("case_id,image,label,split\n")
    err = _one_line_error(
        capsys,
        ["train", "--config", str(cfg), "--manifest", str(tmp_path / "m.csv"), "--out", str(tmp_path / "run")],
        "bad.yaml",
    )
    assert "did you mean 'learning_rate'" in err


def test_batch_records_bad_inputs_and_segments_the_rest(capsys, tmp_path, oracle_checkpoint):
    good = tmp_path / "good.nii.gz"
    write_volume(label_coded(make_phantom(41, spacing=(2.0, 2.0, 4.0))), good)
    not_image = tmp_path / "notes.txt"
    not_image.write_text("not an image")
    empty_dir = tmp_path / "empty_series"
    empty_dir.mkdir()
    out = tmp_path / "pred"
    rc = main(
        [
            "predict",
            "--no-progress",
            "--model",
            str(oracle_checkpoint),
            str(good),
            str(not_image),
            str(empty_dir),
            "--out",
            str(out),
        ]
    )
    assert rc == 1  # done with failures
    assert (out / "good.nii.gz").exists() and (out / "good.json").exists()
    fails = pd.read_csv(out / "failures.csv").set_index("case_id")
    assert "unsupported input" in fails.loc["notes.txt", "error"]
    assert "no DICOM image slices" in fails.loc["empty_series", "error"]
    pred, img = read_volume(out / "good.nii.gz"), read_volume(good)
    assert pred.shape == img.shape and np.allclose(pred.affine, img.affine, atol=1e-5)
    # Same command again: the finished case is skipped (resume), the bad ones retried.
    capsys.readouterr()
    main(["predict", "--no-progress", "--model", str(oracle_checkpoint), str(good), "--out", str(out)])
    assert "1 already done" in capsys.readouterr().out


def test_console_entry_point_prints_no_traceback(tmp_path):
    r = medseg_cli("predict", "--model", tmp_path / "m.pt", "a.nii.gz", "--out", tmp_path, timeout=120)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and r.stderr.strip().splitlines() == [
        f"medseg: error: {tmp_path / 'm.pt'}: checkpoint not found; pass a .pt file from medseg train (RUN/best.pt) or "
        "a model folder"
    ]


def test_models_command_lists_without_building(capsys):
    assert main(["models"]) == 0
    assert "unet" in capsys.readouterr().out
    assert main(["models", "unet"]) == 0
    assert "channels" in capsys.readouterr().out
