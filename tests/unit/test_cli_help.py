"""The command line as a newcomer meets it: every option explained, errors in the verb's own terms."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import pytest

import medseg
from medseg.cli import VERBS, _verbs, build_parser, main


def _parsers(parser, name="medseg"):
    yield name, parser
    for verb, sub in _verbs(parser).items():
        yield from _parsers(sub, f"{name} {verb}")


def test_every_option_of_every_verb_has_help():
    missing = [
        f"{name} {a.option_strings or a.dest}"
        for name, p in _parsers(build_parser())
        for a in p._actions
        if a.help is None and not isinstance(a, argparse._SubParsersAction)
    ]
    assert not missing, missing


def test_verbose_after_the_verb_and_unknown_options_in_the_verbs_usage(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["predict", "--model", "m.pt", "x.nii.gz", "--out", str(tmp_path), "--bogus"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: medseg predict") and "unrecognized arguments: --bogus" in err
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "best.pt").write_bytes(b"")
    assert main(["predict", "--model", str(tmp_path / "run"), "x.nii.gz", "--out", str(tmp_path / "o"), "-v"]) == 2
    err = capsys.readouterr().err
    assert f"--model {tmp_path / 'run' / 'best.pt'}" in err  # a training run folder: its best checkpoint named


def test_a_stage_setting_given_one_level_too_high_names_where_it_belongs(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    assert (
        main(
            [
                "run",
                "dicom_volumetry",
                "--input",
                str(tmp_path / "in"),
                "--out",
                str(tmp_path / "out"),
                "--set",
                "predict.sw_batch_size=2",
                "--set",
                "predict.model=m.pt",
            ]
        )
        == 2
    )
    assert "predict.inference.sw_batch_size" in capsys.readouterr().err


def test_importing_the_cli_imports_no_torch():
    """``medseg --help`` and argument errors stay fast: the command modules (and the API, torch) load only for their
    verb."""
    code = (
        "import medseg.cli, sys; assert 'torch' not in sys.modules and 'medseg.api' not in sys.modules, "
        "sorted(sys.modules)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]


def test_help_takes_under_a_second():
    """Best of three (this machine is shared): about 0.1 s when idle; importing torch alone takes several seconds."""
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        res = subprocess.run([sys.executable, "-m", "medseg", "--help"], capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
        assert res.returncode == 0 and "predict" in res.stdout, res.stderr
    assert min(times) < 1.0, times


def test_the_verb_table_names_every_command_module_and_says_what_its_parser_says():
    """``medseg --help`` (read from ``VERBS``) lists the verbs as the command modules' parsers do, in their order."""
    modules = {p.stem for p in (Path(medseg.__file__).parent / "commands").glob("*.py")} - {"__init__"}
    assert {v.module for v in VERBS.values()} == modules
    full = build_parser()
    (sub,) = [a for a in full._actions if isinstance(a, argparse._SubParsersAction)]
    assert {a.dest: a.help for a in sub._choices_actions} == {name: v.help for name, v in VERBS.items()}
    assert list(sub.choices) == list(VERBS)
    assert build_parser([]).format_help() == full.format_help()


def test_predict_builds_one_settings_object_from_its_options():
    """``medseg predict``'s options travel as one ``PredictOptions`` through ``api.predict`` to ``predict_many``."""
    from medseg import api
    from medseg.commands import predict as command

    args = build_parser(["predict"]).parse_args(
        [
            "predict",
            "--model",
            "m.pt",
            "x.nii.gz",
            "--out",
            "o",
            "--modality",
            "CT",
            "--sw-batch-size",
            "2",
            "--tta-flips",
            "1,2",
            "--no-seg",
            "--refuse-tilt",
            "--no-progress",
        ]
    )
    opts = command._options(args)
    assert opts == api.PredictOptions(
        progress=False,
        dicom_seg=False,
        modalities=("CT",),
        refuse_tilt=True,
        inference={"sw_batch_size": 2, "tta_flips": [1, 2]},
    )
    assert opts.selection_rule().modalities == ("CT",) and opts.geometry_policy().tilt == "refuse"
    with pytest.raises(TypeError, match="options.inference"):
        api.predict(model="m.pt", inputs=["x.nii.gz"], out="o", options=opts, amp="off")
