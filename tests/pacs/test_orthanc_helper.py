"""The Orthanc test server itself: it starts, stores uploads, answers QIDO-RS, and knows medseg's AE."""

from __future__ import annotations


def test_orthanc_stores_and_finds_a_phantom_study(orthanc, tmp_path):
    import requests

    from .orthanc import write_study

    st = write_study(tmp_path / "s", 99)
    n_files = len(list(st.folder.iterdir()))
    assert len(orthanc.upload(st.folder)) == n_files
    (found,) = orthanc.find("Study", {"AccessionNumber": st.accession})
    assert found["MainDicomTags"]["StudyInstanceUID"] == st.study_uid
    (series,) = orthanc.series_of_study(st.study_uid)
    assert len(series["Instances"]) == n_files
    qido = requests.get(f"{orthanc.dicomweb_url}/studies", params={"StudyInstanceUID": st.study_uid}, timeout=30).json()
    assert qido[0]["0020000D"]["Value"] == [st.study_uid]
    assert orthanc.get("/modalities/medseg/configuration")["AET"] == "MEDSEG"
