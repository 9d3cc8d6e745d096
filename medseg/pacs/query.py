"""Find the studies of a run: QIDO-RS or C-FIND at study level.

Query keys (``medseg run --query KEY=VALUE``, repeatable) are DICOM keywords
or their short aliases::

    PatientID (patient_id)          PatientName (patient)     e.g. DOE^* (wildcards * and ?)
    StudyDate (date)                20260101, or a range 20260101-20260131, -20260131, 20260101-
    ModalitiesInStudy (modality)    CT
    StudyDescription (description)  AccessionNumber (accession)  StudyInstanceUID (study_uid)  StudyID
    ReferringPhysicianName          InstitutionName

An id list (``--accessions FILE.csv``) has a column ``AccessionNumber`` (or ``accession``) or
``StudyInstanceUID`` (or ``study_uid``); every row is one query (combined with the keys above), and a row
that finds no study is reported as a failed case of its own. The query's answers are never written with
patient identifiers: a study is known by a salted hash of its UID from here on (``study_key``).
"""

from __future__ import annotations

import contextlib
import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path

from medseg.errors import ConfigError, InputError
from medseg.pacs.endpoints import Endpoint, PacsError, associate, make_ae, qido, web_session
from medseg.pacs.keys import hashed, salt, study_key  # noqa: F401  (salt, study_key: part of this module's API)

KEYS = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "StudyDate",
    "StudyTime",
    "ModalitiesInStudy",
    "StudyDescription",
    "AccessionNumber",
    "StudyInstanceUID",
    "StudyID",
    "ReferringPhysicianName",
    "InstitutionName",
)
ALIASES = {
    "patient_id": "PatientID",
    "patient": "PatientName",
    "patient_name": "PatientName",
    "date": "StudyDate",
    "study_date": "StudyDate",
    "modality": "ModalitiesInStudy",
    "modalities": "ModalitiesInStudy",
    "description": "StudyDescription",
    "accession": "AccessionNumber",
    "study_uid": "StudyInstanceUID",
}
#: Query values that identify a patient or a study: recorded only as salted hashes.
IDENTIFYING = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "AccessionNumber",
    "StudyInstanceUID",
    "StudyID",
    "ReferringPhysicianName",
)
_DATE = re.compile(r"^(\d{8})?(-(\d{8})?)?$")
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
#: Series that are never segmented (and never retrieved): medseg's own results and other non-image objects.
NON_IMAGE_MODALITIES = (
    "SEG",
    "RTSTRUCT",
    "RTPLAN",
    "RTDOSE",
    "RTRECORD",
    "SR",
    "PR",
    "KO",
    "DOC",
    "REG",
    "FID",
    "PLAN",
)


def parse_query(items) -> dict:
    """``["date=20260101-20260131", "modality=CT"]`` -> ``{"StudyDate": "20260101-20260131", "ModalitiesInStudy":
    "CT"}``."""
    out: dict[str, str] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--query {item!r}: expected KEY=VALUE, e.g. StudyDate=20260101-20260131 or modality=CT")
        key, value = (s.strip() for s in item.split("=", 1))
        keyword = ALIASES.get(key.lower(), key)
        if keyword not in KEYS:
            close = difflib.get_close_matches(key, list(KEYS) + list(ALIASES), n=1)
            raise ConfigError(
                f"--query: unknown key {key!r}"
                + (f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(KEYS)}")
            )
        if keyword in ("StudyDate", "PatientBirthDate"):
            value = value.replace(" ", "")
            if not value or not _DATE.match(value) or value == "-":
                raise ConfigError(
                    f"--query {key}={value!r}: expected a date YYYYMMDD or a range YYYYMMDD-YYYYMMDD "
                    "(either end may be left open)"
                )
        if keyword == "StudyInstanceUID" and not _UID.match(value):
            raise ConfigError(f"--query StudyInstanceUID: {value!r} is not a UID (digits and dots)")
        if keyword in out and out[keyword] != value:
            raise ConfigError(f"--query: {keyword} given twice ({out[keyword]!r} and {value!r})")
        out[keyword] = value
    return out


def record_query(filters: dict) -> dict:
    """The query as run.json keeps it: identifying values replaced by salted hashes."""
    return {k: (hashed(v) if k in IDENTIFYING and v else v) for k, v in filters.items()}


def read_id_list(path) -> tuple[str, list[tuple[int, str]]]:
    """``(DICOM keyword, [(row number from 1, value), ...])`` of an accession / study UID list."""
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise InputError(
            "--accessions: file not found; give a CSV with a column AccessionNumber or StudyInstanceUID", path=p
        )
    try:
        df = pd.read_csv(p, dtype=str, keep_default_na=False)
    except Exception as exc:  # noqa: BLE001 (any parser error: not a CSV)
        raise InputError(f"--accessions: cannot read as CSV ({str(exc).splitlines()[0]})", path=p) from None
    columns = {c.strip(): c for c in df.columns}
    for name, keyword in (
        ("AccessionNumber", "AccessionNumber"),
        ("accession", "AccessionNumber"),
        ("accession_number", "AccessionNumber"),
        ("StudyInstanceUID", "StudyInstanceUID"),
        ("study_uid", "StudyInstanceUID"),
        ("study_instance_uid", "StudyInstanceUID"),
    ):
        if name in columns:
            values = [(i + 1, str(v).strip()) for i, v in enumerate(df[columns[name]])]
            values = [(i, v) for i, v in values if v]
            if not values:
                raise InputError(f"--accessions: column {name!r} is empty", path=p)
            if keyword == "StudyInstanceUID":
                bad = [i for i, v in values if not _UID.match(v)]
                if bad:
                    raise InputError(f"--accessions: row(s) {bad[:5]} of column {name!r} are not UIDs", path=p)
            return keyword, values
    raise InputError(
        f"--accessions: no column AccessionNumber or StudyInstanceUID (columns: {', '.join(columns)})", path=p
    )


@dataclass
class StudyHit:
    study_uid: str  # kept in memory only; never written
    key: str  # study_key(study_uid): the case id
    n_instances: int | None = None
    modalities: tuple = ()
    query_row: int | None = None  # the id list's row that found it


@dataclass
class Missing:
    """An id list row that found no study."""

    query_row: int
    key: str  # salted hash of the value
    keyword: str


@dataclass
class QueryResult:
    studies: list = field(default_factory=list)  # StudyHit, in query order, each study once
    missing: list = field(default_factory=list)  # Missing


_RETURN_KEYS = ("StudyInstanceUID", "NumberOfStudyRelatedInstances", "ModalitiesInStudy")


def _value(v):
    if v is None:
        return None
    if isinstance(v, (list, tuple)) or type(v).__name__ == "MultiValue":
        return tuple(str(x) for x in v)
    return str(v)


PAGE = 500

#: DICOM JSON tags read from QIDO-RS answers, with their keywords (for messages).
_TAGS = {
    "0020000D": "StudyInstanceUID",
    "0020000E": "SeriesInstanceUID",
    "00201208": "NumberOfStudyRelatedInstances",
    "00201209": "NumberOfSeriesRelatedInstances",
    "00080061": "ModalitiesInStudy",
    "00080060": "Modality",
}


def _malformed(ep: Endpoint, doing: str, problem: str) -> PacsError:
    return PacsError(
        f"{ep.display}: {doing} answered malformed DICOM JSON: {problem}; check the server (its QIDO-RS "
        "answers must follow PS3.18 F.2)"
    )


def _shown(value) -> str:
    return " ".join(repr(value).split())[:60]


def _json_values(item: dict, tag: str, ep: Endpoint, doing: str) -> list:
    """The values of one attribute of a DICOM JSON object, ``[]`` when absent; checked to be
    ``{"vr": "..", "Value": [...]}`` (``PacsError`` otherwise)."""
    attr = item.get(tag)
    if attr is None:
        return []
    name = f"attribute {tag} ({_TAGS.get(tag, '?')})"
    if not isinstance(attr, dict):
        raise _malformed(ep, doing, f'{name} is {_shown(attr)}, not an object {{"vr": ..., "Value": [...]}}')
    values = attr.get("Value")
    if values is None:
        return []
    if not isinstance(values, list):
        raise _malformed(ep, doing, f'{name} has "Value": {_shown(values)}, not a list')
    return values


def _json_uid(item: dict, tag: str, ep: Endpoint, doing: str) -> str | None:
    values = _json_values(item, tag, ep, doing)
    if not values or values[0] in (None, ""):
        return None
    uid = values[0]
    if not isinstance(uid, str) or len(uid.strip()) > 64 or not _UID.match(uid.strip()):
        raise _malformed(ep, doing, f"attribute {tag} ({_TAGS.get(tag, '?')}) has the value {_shown(uid)}, not a UID")
    return uid.strip()


def _count(value, ep: Endpoint, doing: str, what: str) -> int | None:
    """An instance count (IS / UL) from a QIDO-RS or C-FIND answer: None when absent, ``PacsError`` when not a count."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool) or isinstance(value, float) and not value.is_integer():
        value = str(value)
    try:
        n = int(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        n = -1
    if n < 0:
        raise (
            _malformed(ep, doing, f"{what} has the value {_shown(value)}, not a number of instances")
            if ep.kind == "dicomweb"
            else PacsError(
                f"{ep.display}: {doing} answered {what} = {_shown(value)}, not a number of instances; check the PACS"
            )
        )
    return n


def _json_count(item: dict, tag: str, ep: Endpoint, doing: str) -> int | None:
    return _count((_json_values(item, tag, ep, doing) or [None])[0], ep, doing, f"attribute {tag} ({_TAGS[tag]})")


def _json_strings(item: dict, tag: str, ep: Endpoint, doing: str) -> tuple:
    values = _json_values(item, tag, ep, doing)
    bad = next((v for v in values if not isinstance(v, str)), None)
    if bad is not None:
        raise _malformed(ep, doing, f"attribute {tag} ({_TAGS.get(tag, '?')}) holds {_shown(bad)}, not a code string")
    return tuple(values)


def paged(
    ep: Endpoint, session, path: str, params: dict, uid_tag: str, doing: str, *, max_items: int, option: str, what: str
) -> list[dict]:
    """Every answer of a QIDO-RS search, page by page (limit/offset), each checked and bounded: at most
    ``ep.max_pages`` pages and ``max_items`` answers (``PacsError`` naming the option to raise beyond). A server
    that ignores ``offset`` would repeat its first page for ever: a page that brings no new UID ends the search."""
    out, seen, offset = [], set(), 0
    for _page in range(ep.max_pages):
        page = qido(ep, session, path, {**params, "limit": PAGE, "offset": offset}, doing)
        new = []
        for item in page:
            uid = _json_uid(item, uid_tag, ep, doing)
            if uid not in seen:
                seen.add(uid)
                new.append(item)
        out += new
        if len(out) > max_items:
            raise PacsError(
                f"{ep.display}: {doing} found more than {max_items} {what}; narrow the query (or raise ?{option}=N)"
            )
        if len(page) < PAGE or not new:
            return out
        offset += len(page)
    raise PacsError(
        f"{ep.display}: {doing} still had answers after {ep.max_pages} pages of {PAGE}; the server may "
        f"ignore offset= ; narrow the query (or raise ?max_pages=N)"
    )


def _search_dicomweb(ep: Endpoint, session, filters: dict) -> list[dict]:
    doing = "the study search (QIDO-RS)"
    found = paged(
        ep,
        session,
        "/studies",
        {**filters, "includefield": list(_RETURN_KEYS)},
        "0020000D",
        doing,
        max_items=ep.max_studies,
        option="max_studies",
        what="studies",
    )
    out = []
    for item in found:
        uid = _json_uid(item, "0020000D", ep, doing)
        if not uid:
            continue
        out.append(
            {
                "uid": uid,
                "n": _json_count(item, "00201208", ep, doing),
                "modalities": _json_strings(item, "00080061", ep, doing),
            }
        )
    return out


def _search_dimse(ep: Endpoint, assoc, filters: dict) -> list[dict]:
    from pydicom.dataset import Dataset
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    for k in _RETURN_KEYS:
        setattr(ds, k, "")
    for k, v in filters.items():
        if k == "ModalitiesInStudy" and "\\" in v:
            v = v.split("\\")
        setattr(ds, k, v)
    out = []
    final = None
    for status, identifier in assoc.send_c_find(ds, StudyRootQueryRetrieveInformationModelFind):
        if not status:
            raise PacsError(f"{ep.display}: no answer to C-FIND (connection lost or timed out); check the PACS")
        final = int(status.Status)
        if final in (0xFF00, 0xFF01) and identifier is not None:
            uid = str(identifier.get("StudyInstanceUID", "") or "")
            if not uid:
                continue
            n = _count(
                identifier.get("NumberOfStudyRelatedInstances", None), ep, "C-FIND", "NumberOfStudyRelatedInstances"
            )
            mods = _value(identifier.get("ModalitiesInStudy", None)) or ()
            out.append({"uid": uid, "n": n, "modalities": mods if isinstance(mods, tuple) else (mods,)})
            if len(out) > ep.max_studies:
                _cancel(assoc)
                raise PacsError(
                    f"{ep.display}: the study search (C-FIND) found more than {ep.max_studies} studies; "
                    "narrow the query (or raise ?max_studies=N)"
                )
    if final not in (0x0000, None):
        raise PacsError(f"{ep.display}: C-FIND failed with status 0x{final:04X}; check the query keys and the PACS log")
    return out


def _cancel(assoc) -> None:
    """Stop a C-FIND whose answers medseg no longer reads: the association is aborted (no traceback, no wait)."""
    with contextlib.suppress(Exception):
        assoc.abort()


def find_studies(ep: Endpoint, filters: dict | None = None, id_list: tuple[str, list] | None = None) -> QueryResult:
    """The studies matching ``filters`` (and, with ``id_list`` = ``(keyword, [(row, value)])``, one query per row)."""
    filters = dict(filters or {})
    queries = [(None, filters)]
    if id_list is not None:
        keyword, rows = id_list
        if keyword in filters:
            raise ConfigError(f"--query {keyword} and --accessions both give {keyword}; use one")
        queries = [(row, {**filters, keyword: value}) for row, value in rows]
    result, seen = QueryResult(), set()
    if ep.kind == "dicomweb":
        session = web_session(ep)

        def search(q):
            return _search_dicomweb(ep, session, q)

        assoc = None
    else:
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

        ae = make_ae(ep)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        assoc = associate(ae, ep, "C-FIND")

        def search(q):
            return _search_dimse(ep, assoc, q)

    try:
        for row, q in queries:
            hits = search(q)
            if row is not None and not hits:
                result.missing.append(
                    Missing(row, hashed(q[id_list[0]], "ac" if id_list[0] == "AccessionNumber" else "su"), id_list[0])
                )
            for h in hits:
                if h["uid"] in seen:
                    continue
                seen.add(h["uid"])
                result.studies.append(StudyHit(h["uid"], study_key(h["uid"]), h["n"], tuple(h["modalities"]), row))
    finally:
        if assoc is not None and assoc.is_established:
            assoc.release()
    return result


@dataclass
class SeriesHit:
    series_uid: str
    modality: str
    n_instances: int | None = None


def list_series(ep: Endpoint, study_uid: str, *, session=None, assoc=None) -> list[SeriesHit]:
    """The series of a study with their modality and instance count (QIDO-RS / C-FIND at series level)."""
    if ep.kind == "dicomweb":
        doing = "the series search (QIDO-RS)"
        found = paged(
            ep,
            session or web_session(ep),
            f"/studies/{study_uid}/series",
            {"includefield": ["SeriesInstanceUID", "Modality", "NumberOfSeriesRelatedInstances"]},
            "0020000E",
            doing,
            max_items=ep.max_series,
            option="max_series",
            what="series in one study",
        )
        out = []
        for item in found:
            uid = _json_uid(item, "0020000E", ep, doing)
            if uid:
                out.append(
                    SeriesHit(
                        uid,
                        " ".join(_json_strings(item, "00080060", ep, doing)[:1]),
                        _json_count(item, "00201209", ep, doing),
                    )
                )
        return out
    from pydicom.dataset import Dataset
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

    ds = Dataset()
    ds.QueryRetrieveLevel = "SERIES"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = ""
    ds.Modality = ""
    ds.NumberOfSeriesRelatedInstances = ""
    out, final = [], None
    for status, identifier in assoc.send_c_find(ds, StudyRootQueryRetrieveInformationModelFind):
        if not status:
            raise PacsError(f"{ep.display}: no answer to C-FIND (connection lost or timed out); check the PACS")
        final = int(status.Status)
        if final in (0xFF00, 0xFF01) and identifier is not None and identifier.get("SeriesInstanceUID"):
            n = _count(
                identifier.get("NumberOfSeriesRelatedInstances", None),
                ep,
                "the series C-FIND",
                "NumberOfSeriesRelatedInstances",
            )
            out.append(SeriesHit(str(identifier.SeriesInstanceUID), str(identifier.get("Modality", "") or ""), n))
            if len(out) > ep.max_series:
                _cancel(assoc)
                raise PacsError(
                    f"{ep.display}: the series search (C-FIND) found more than {ep.max_series} series in one "
                    "study; check the PACS (or raise ?max_series=N)"
                )
    if final not in (0x0000, None):
        raise PacsError(f"{ep.display}: series C-FIND failed with status 0x{final:04X}; check the PACS log")
    return out
