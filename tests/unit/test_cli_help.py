"""The command line as a newcomer meets it: every option explained, errors in the verb's own terms."""

from __future__ import annotations

import argparse

import pytest

from medseg.cli import _verbs, build_parser, main


def _parsers(parser, name="medseg"):
    yield name, parser
    for verb, sub in _verbs(parser).items():
        yield from _parsers(sub, f"{name} {verb}")


def test_every_option_of_every_verb_has_help():
    missing = [f"{name} {a.option_strings or a.dest}" for name, p in _parsers(build_parser()) for a in p._actions
               if a.help is None and not isinstance(a, argparse._SubParsersAction)]
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
    assert main(["run", "dicom_volumetry", "--input", str(tmp_path / "in"), "--out", str(tmp_path / "out"),
                 "--set", "predict.sw_batch_size=2", "--set", "predict.model=m.pt"]) == 2
    assert "predict.inference.sw_batch_size" in capsys.readouterr().err
