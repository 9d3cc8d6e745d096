"""The pipeline's ``export`` stage against real Orthanc servers: SEG objects arrive (STOW-RS and C-STORE) and
reference the right series; reruns, changed settings and a run killed mid-way never send an object twice."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import time

import pandas as pd
import pydicom
import pytest

from medseg.cli import main

from .orthanc import assert_no_identifiers, child_script, free_port, run_argv, write_studies
from .test_pacs_input import by_study

N = 3
PIPE = "pacs_volumetry"


@pytest.fixture(scope="module")
def studies(orthanc, tmp_path_factory):
    sts = write_studies(tmp_path_factory.mktemp("export_studies"), N, start=10)
    for st in sts:
        orthanc.upload(st.folder)
    return sts


def args(out, source, destination, oracle, cache, *extra):
    destination = ("--set", f"export.destination={destination}")
    return run_argv(PIPE, out, source, oracle, cache, "--query", "modality=CT", *destination, *extra)


def segs_by_study(server, studies) -> dict:
    """StudyInstanceUID -> list of the SEG datasets the server holds for it."""
    import pydicom

    return {
        st.study_uid: [
            pydicom.dcmread(io.BytesIO(server.instance_file(s["_id"]))) for s in server.seg_instances(st.study_uid)
        ]
        for st in studies
    }


def records(out) -> dict:
    return {p.stem: json.loads(p.read_text()) for p in sorted((out / "export").glob("*.json"))}


@pytest.fixture(scope="module")
def stow_run(orthanc, orthanc_factory, studies, pacs_oracle, tmp_path_factory):
    """Studies from the source over DICOMweb, SEGs sent to another Orthanc by STOW-RS."""
    dest = orthanc_factory()
    tmp = tmp_path_factory.mktemp("stow")
    out = tmp / "run"
    code = main(args(out, orthanc.dicomweb_spec, dest.dicomweb_spec, pacs_oracle, tmp / "cache"))
    return {"out": out, "code": code, "dest": dest, "cache": tmp / "cache"}


def test_segs_arrive_and_reference_their_series(stow_run, studies):
    from medseg.pacs.query import study_key

    assert stow_run["code"] == 0
    dest, out = stow_run["dest"], stow_run["out"]
    segs = segs_by_study(dest, studies)
    recs = records(out)
    for st in studies:
        (seg,) = segs[st.study_uid]  # exactly one SEG per study
        assert seg.Modality == "SEG" and seg.StudyInstanceUID == st.study_uid
        assert [r.SeriesInstanceUID for r in seg.ReferencedSeriesSequence] == [st.series_uid]
        rec = recs[study_key(st.study_uid)]
        assert rec["status"] == "sent" and rec["destination"] == dest.dicomweb_spec
        obj, sr_obj = rec["objects"]  # the SEG, then the measurement report (SR) that references it
        assert obj["kind"] == "dicom_seg" and obj["status"] == "sent" and obj["sop_instance_uid"] == seg.SOPInstanceUID
        assert sr_obj["kind"] == "sr" and sr_obj["status"] == "sent"
        (sr_series,) = dest.series_of_study(st.study_uid, "SR")  # next to the SEG in the PACS
        (sr_id,) = sr_series["Instances"]
        sr = pydicom.dcmread(io.BytesIO(dest.instance_file(sr_id)))
        assert sr.SOPInstanceUID == sr_obj["sop_instance_uid"]
        evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
        assert evidence.ReferencedSOPInstanceUID == seg.SOPInstanceUID
        (found,) = dest.find("Series", {"SeriesInstanceUID": obj["series_instance_uid"]})  # found in the PACS by series
        assert found["MainDicomTags"]["Modality"] == "SEG"
        state = json.loads((out / "state" / f"{study_key(st.study_uid)}.json").read_text())
        assert state["outputs"]["export"] == f"export/{study_key(st.study_uid)}.json"
    assert_no_identifiers(out, studies)


def test_rerun_and_changed_report_setting_send_nothing_new(stow_run, studies, orthanc, pacs_oracle, capsys):
    dest, out = stow_run["dest"], stow_run["out"]
    before = dest.count_instances()
    recs = records(out)
    assert main(args(out, orthanc.dicomweb_spec, dest.dicomweb_spec, pacs_oracle, stow_run["cache"], "--resume")) == 0
    assert f"0 done, {N} already done" in capsys.readouterr().out
    assert records(out) == recs and dest.count_instances() == before
    # a report setting redoes every case (new outputs) but not the SEG: same UIDs, recorded as already sent
    assert (
        main(
            args(
                out,
                orthanc.dicomweb_spec,
                dest.dicomweb_spec,
                pacs_oracle,
                stow_run["cache"],
                "--set",
                "report.min_size_ml=0.5",
            )
        )
        == 0
    )
    assert f"{N} done, 0 already done" in capsys.readouterr().out
    assert dest.count_instances() == before
    for cid, rec in records(out).items():
        assert rec["status"] == "sent" and [o["status"] for o in rec["objects"]] == ["already_sent", "already_sent"]
        assert [o["sop_instance_uid"] for o in rec["objects"]] == [o["sop_instance_uid"] for o in recs[cid]["objects"]]
    assert (out / "run.log").read_text().count("retrieved") == N  # the cache served the redone cases


def test_export_case_retries_with_backoff_then_records_the_failure(stow_run, tmp_path):
    from medseg.pacs.export import ExportError, export_case

    seg = next((stow_run["out"] / "cases").glob("*/seg.dcm"))
    waits = []
    dead = f"dimse://ORTHANC@127.0.0.1:{free_port()}"
    with pytest.raises(ExportError, match=f"export to {dead}.*cannot connect"):
        export_case(
            dead,
            {"dicom_seg": seg, "rtstruct": None},
            record_path=tmp_path / "export" / "c.json",
            case_id="c",
            retries=2,
            backoff_s=0.5,
            sleep=waits.append,
        )
    assert waits == [0.5, 1.0]
    rec = json.loads((tmp_path / "export" / "c.json").read_text())
    assert rec["status"] == "failed" and rec["destination"] == dead
    assert [(o["kind"], o["status"], o.get("attempts")) for o in rec["objects"]] == [
        ("dicom_seg", "failed", 3),
        ("rtstruct", "not_written", None),
    ]


def test_unreachable_destination_fails_the_cases_then_another_destination_gets_them(
    orthanc, orthanc_factory, studies, pacs_oracle, tmp_path, capsys
):
    out, cache = tmp_path / "run", tmp_path / "cache"
    dead = f"dimse://ORTHANC@127.0.0.1:{free_port()}"
    code = main(
        args(
            out,
            orthanc.dicomweb_spec,
            dead,
            pacs_oracle,
            cache,
            "--set",
            "export.retries=1",
            "--set",
            "export.backoff_s=0",
        )
    )
    captured = capsys.readouterr()
    assert code == 2 and "Traceback" not in captured.err  # nothing done: every case failed in export
    fails = pd.read_csv(out / "failures.csv")
    assert len(fails) == N and set(fails.stage) == {"export"} and fails.error.str.contains(dead, regex=False).all()
    for rec in records(out).values():
        assert rec["status"] == "failed" and rec["objects"][0]["attempts"] == 2
    dest = orthanc_factory()  # C-STORE this time, SEG and RTSTRUCT
    assert (
        main(
            args(
                out,
                orthanc.dicomweb_spec,
                dest.dimse_spec,
                pacs_oracle,
                cache,
                "--set",
                "predict.rtstruct=true",
                "--set",
                "export.send=[dicom_seg,rtstruct]",
            )
        )
        == 0
    )
    assert all(len(v) == 1 for v in segs_by_study(dest, studies).values())
    for st in studies:
        (rt,) = dest.series_of_study(st.study_uid, "RTSTRUCT")
        assert len(rt["Instances"]) == 1
    for rec in records(out).values():
        assert rec["status"] == "sent" and rec["history"][-1]["destination"] == dead
        assert [(o["kind"], o["status"]) for o in rec["objects"]] == [("dicom_seg", "sent"), ("rtstruct", "sent")]
    assert_no_identifiers(out, studies, captured.out, captured.err)


@pytest.mark.slow
def test_sigkill_after_the_first_export_then_resume_loses_and_duplicates_nothing(
    orthanc, orthanc_factory, studies, stow_run, pacs_oracle, tmp_path
):
    dest = orthanc_factory()
    out, cache = tmp_path / "run", tmp_path / "cache"
    cmd = args(out, orthanc.dicomweb_spec, dest.dimse_spec, pacs_oracle, cache)
    proc = subprocess.Popen(
        [sys.executable, str(child_script(tmp_path)), *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    sent_before: set = set()
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            sent_before = {cid for cid, r in _records_now(out).items() if r.get("status") == "sent"}
            if sent_before:
                break
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert 1 <= len(sent_before) < N, "the run was not killed mid-way"
    assert not (out / "volumes.csv").exists()
    assert len(sent_before) <= dest.count_instances() <= 2 * N  # a SEG and an SR per study

    assert main([*cmd, "--resume"]) == 0
    segs = segs_by_study(dest, studies)
    assert all(len(v) == 1 for v in segs.values()) and dest.count_instances() == 2 * N  # none lost, none twice
    recs = records(out)
    for cid in sent_before:  # sent before the kill: not sent again (done: skipped; not yet done: already_sent)
        assert recs[cid]["objects"][0]["status"] in ("sent", "already_sent")
        assert recs[cid]["objects"][0]["sop_instance_uid"] in {s.SOPInstanceUID for v in segs.values() for s in v}
    pd.testing.assert_frame_equal(
        by_study(out, studies, pacs=True), by_study(stow_run["out"], studies, pacs=True), check_exact=True
    )
    assert not list(out.rglob(".tmp-medseg*")) and not list(cache.glob(".tmp-medseg*"))
    assert_no_identifiers(out, studies)


def _records_now(out) -> dict:
    recs = {}
    for p in (out / "export").glob("*.json") if (out / "export").is_dir() else []:
        try:
            recs[p.stem] = json.loads(p.read_text())
        except (OSError, ValueError):
            pass
    return recs


def test_seg_and_rtstruct_uids_follow_the_seed(tmp_path):
    import numpy as np
    import pydicom

    from medseg.data.phantoms import PHANTOM_LABELS
    from medseg.io.objects.rtstruct import write_rtstruct
    from medseg.io.objects.seg import write_dicom_seg
    from medseg.io.readers import read_volume
    from medseg.io.volume import Volume

    from .orthanc import write_study

    st = write_study(tmp_path / "s", 50, spacing=(6.0, 6.0, 8.0))
    image = read_volume(st.folder)  # the series' own grid; HU = label * 100
    labels = Volume(np.rint(image.array / 100).astype(np.uint8), image.affine, "s")

    def uids(writer, name, seed):
        path = tmp_path / f"{name}.dcm"
        writer(labels, st.folder, PHANTOM_LABELS, path, software_version="t", uid_seed=seed)
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert ds.StudyInstanceUID == st.study_uid
        return ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.file_meta.MediaStorageSOPInstanceUID

    for writer in (write_dicom_seg, write_rtstruct):
        a, b = uids(writer, "a", "seed1"), uids(writer, "b", "seed1")
        assert a == b and a[0] == a[2] and a[0] != a[1]  # the same case and settings: the same object
        assert uids(writer, "c", "seed2")[:2] != a[:2]  # other settings or model: another object
        assert uids(writer, "d", None)[:2] != uids(writer, "e", None)[:2]  # no seed: new UIDs each time


def test_export_stage_settings_are_checked(pacs_oracle):
    from medseg.errors import ConfigError
    from medseg.runner.settings import load_pipeline

    base = [f"predict.model={pacs_oracle}"]
    dest = "export.destination=dimse://PACS@127.0.0.1:104"
    with pytest.raises(ConfigError, match="no destination"):
        load_pipeline(PIPE, overrides=base)
    with pytest.raises(ConfigError, match="stages.export.destination"):
        load_pipeline(PIPE, overrides=[*base, "export.destination=dimse://PACS@127.0.0.1"])
    with pytest.raises(ConfigError, match="did you mean 'dicom_seg'"):
        load_pipeline(PIPE, overrides=[*base, dest, "export.send=[dicom_sag]"])
    with pytest.raises(ConfigError, match="writes none of them"):
        load_pipeline(PIPE, overrides=[*base, dest, "predict.dicom_seg=false"])
    pipe = load_pipeline(PIPE, overrides=[*base, dest])
    sha = pipe.case_config_sha256("m")
    assert load_pipeline(PIPE, overrides=[*base, dest, "export.retries=9"]).case_config_sha256("m") == sha
    other = load_pipeline(PIPE, overrides=[*base, "export.destination=dimse://PACS@127.0.0.1:105"])
    assert other.case_config_sha256("m") != sha  # a new destination: every case is sent there
    no_export = ("export", "report")
    assert other.case_config_sha256("m", exclude=no_export) == pipe.case_config_sha256("m", exclude=no_export)
