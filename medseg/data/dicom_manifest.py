"""``medseg manifest from-dicom``: training cases from a hospital DICOM export (image series + RTSTRUCT/SEG).

``manifest_from_dicom(export, out)`` scans the export header-only, finds every
RT Structure Set and DICOM SEG in it, and pairs each with the image series it
references (by SeriesInstanceUID, as ``medseg.io.objects.referenced`` does; never by
folder). Every pair becomes one case:

* the image (the referenced stack, as medseg's DICOM reader builds it) and
  its label map (the RTSTRUCT rasterised / the SEG read onto that grid) are
  written as NIfTI under ``<out stem>_cache/<series key>/``, so training reads
  voxels and never rasterises contours per epoch. A pair is converted again
  only when its label object's bytes, the series' instances or the label
  table change (``<object key>.source.json`` records them);
* its findings (the series' geometry findings, then the label object's) go
  to ``findings.json`` beside them.

Also written beside the manifest: ``<stem>_labels.yaml``, the label table made
from the ROI / segment names of all paired objects (canonical names, synonyms
applied, ``medseg.io.objects.roi_names``; ``medseg plan`` picks it up), and
``<stem>_unpaired.csv``, every object or series that did not become a case
with the reason: a label object whose series is not in the export (or was
refused), an image series no label object references, other objects
(RTPLAN, RTDOSE, SR...), files that are not DICOM, pairs that failed to read.

Case ids and every name written are pseudonymous keys (salted hashes of UIDs:
``se...`` series, ``rs...`` structure sets, ``sg...`` SEGs); no patient name,
ID, birth date or input path reaches file names, the CSVs or the logs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medseg.data.label_names import renumbered, value_map
from medseg.errors import InputError, MedsegError
from medseg.io.atomic import write_csv, write_json, write_text
from medseg.io.dicom.scan import pseudonym
from medseg.io.dicom.series import scan_inventory
from medseg.io.objects.roi_names import table_from_names
from medseg.io.objects.rtstruct import closed_rois, read_rtstruct, rtstruct_header
from medseg.io.objects.seg import read_dicom_seg, seg_header
from medseg.io.readers import write_label_map, write_volume
from medseg.io.volume import Volume
from medseg.labels import Label, LabelTable

log = logging.getLogger(__name__)

UNPAIRED_COLUMNS = ["kind", "key", "modality", "reason"]


@dataclass
class DicomManifest:
    manifest: Path
    table: Path
    unpaired: Path
    cases: list = field(default_factory=list)  # case ids
    unpaired_rows: list = field(default_factory=list)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _label_objects(inv, salt):
    """``(objects, others)``: RTSTRUCT/SEG headers found among the files that are not image slices, and the rest."""
    import pydicom

    objects, others = [], []
    for path, reason in inv.scan.skipped:
        path = Path(path)
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            modality = str(ds.get("Modality", ""))
        except Exception:
            others.append(
                {
                    "kind": "file",
                    "key": "file_" + hashlib.sha256(str(path).encode()).hexdigest()[:10],
                    "modality": "",
                    "reason": f"not used: {reason}",
                }
            )
            continue
        key = pseudonym(str(ds.get("SOPInstanceUID", path)), prefix="ob", salt=salt)
        try:
            if modality == "RTSTRUCT":
                head = rtstruct_header(ds)  # an RTSTRUCT has no pixel data: the header read is the whole object
                rois = closed_rois(head)
                names = [r["name"] for r in rois]
                objects.append(
                    {
                        "kind": "rtstruct",
                        "path": path,
                        "key": pseudonym(str(ds.SOPInstanceUID), prefix="rs", salt=salt),
                        "series_uid": head["series_uid"],
                        "names": names,
                        "colors": {r["name"]: r["color"] for r in rois if r["color"]},
                        "codes": {},
                    }
                )
                continue
            if modality == "SEG":
                head = seg_header(ds)
                segs = head["segments"]
                objects.append(
                    {
                        "kind": "seg",
                        "path": path,
                        "key": pseudonym(str(ds.SOPInstanceUID), prefix="sg", salt=salt),
                        "series_uid": head["series_uid"],
                        "names": [s["name"] for s in segs],
                        "colors": {},
                        "codes": {s["name"]: s["code"] for s in segs if s["code"] and s["scheme"] in ("SCT", "SRT")},
                    }
                )
                continue
        except MedsegError as exc:
            others.append({"kind": modality.lower(), "key": key, "modality": modality, "reason": f"unreadable: {exc}"})
            continue
        others.append(
            {
                "kind": "object",
                "key": key,
                "modality": modality,
                "reason": f"not an image series or label object ({reason})",
            }
        )
    return objects, others


def pair_label_objects(inv, *, salt: str | None = None):
    """``(pairs, unpaired, usable)`` for a scanned inventory: label objects whose series is there, the rest with
    reasons (as ``<stem>_unpaired.csv`` rows), and ``{series UID: Candidate}`` of the readable stacks."""
    objects, unpaired = _label_objects(inv, salt)
    usable = {c.series.series_uid: c for c in inv.candidates if c.plan.refused is None}
    refused = {e.series.series_uid: e.reason for e in inv.entries if e.series.not_image is None and not e.segmentable}
    pairs = []
    for ob in objects:
        if ob["series_uid"] in usable:
            pairs.append(ob)
            continue
        uid = ob["series_uid"]
        skey = pseudonym(uid, prefix="se", salt=salt) if uid else "(none)"
        why = (
            f"its image series {skey} is in the export but cannot be read ({refused[uid]})"
            if uid in refused
            else f"references image series {skey}, which is not in the export"
        )
        unpaired.append({"kind": ob["kind"], "key": ob["key"], "modality": ob["kind"].upper(), "reason": why})
    paired_series = {ob["series_uid"] for ob in pairs}
    for e in inv.entries:
        s = e.series
        if s.not_image is not None:
            continue
        if s.series_uid not in paired_series:
            reason = "no RTSTRUCT or SEG in the export references this series"
            if not e.segmentable:
                reason += f"; and it cannot be read ({e.reason})"
            unpaired.append({"kind": "image_series", "key": s.series_key, "modality": s.modality, "reason": reason})
    return pairs, unpaired, usable


def convert_label_objects(
    folder: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    inventory=None,
    synonyms: dict | None = None,
    salt: str | None = None,
    numbering=None,
) -> list[dict]:
    """Write every RTSTRUCT/SEG of ``folder`` as a label map on its series' grid, for ``medseg convert``.

    Per object, beside the series' image as ``convert`` names it (``<study key>_<stack key>``):
    ``<name>.<object key>.label.nii.gz``, ``.labels.yaml`` (its own table from its ROI/segment names) and
    ``.findings.json``. Returns one row per object (``series_key, output, status, reason``); nothing raises
    for one bad object.
    """
    import yaml

    folder, out = Path(folder), Path(out_dir)
    inv = inventory if inventory is not None else scan_inventory(folder, salt=salt)
    pairs, unpaired, usable = pair_label_objects(inv, salt=salt)
    rows = [
        {"series_key": "", "label_object": u["key"], "output": "", "status": "skipped", "reason": u["reason"]}
        for u in unpaired
        if u["kind"] in ("rtstruct", "seg")
    ]
    object_series = {Path(f): e.series.series_key for e in inv.entries if e.series.not_image for f in e.series.files}
    for ob in pairs:
        c = usable[ob["series_uid"]]
        name = f"{c.series.study_key}_{c.key}.{ob['key']}"
        row = {"series_key": c.series.series_key, "label_object": ob["key"], "output": "", "status": "", "reason": ""}
        table = table_from_names(ob["names"], name=ob["key"], colors=ob["colors"], codes=ob["codes"], synonyms=synonyms)
        row["object_series_key"] = object_series.get(Path(ob["path"]), "")
        try:
            reader = read_rtstruct if ob["kind"] == "rtstruct" else read_dicom_seg
            res = reader(ob["path"], folder, table=table, synonyms=synonyms, inventory=inv)
            if numbering is not None:
                res.labels, table = _renumbered_as(res.labels, table, numbering)
            target = write_label_map(res.labels, out / f"{name}.label.nii.gz")
            write_text(out / f"{name}.labels.yaml", yaml.safe_dump(table.to_dict(), sort_keys=False))
            write_json(
                out / f"{name}.findings.json",
                {
                    "label_object": ob["key"],
                    "series_key": c.series.series_key,
                    "rois": res.rois,
                    "unmapped": res.unmapped,
                    "findings": res.findings,
                },
            )
            row.update(
                output=target.name,
                status="converted",
                reason="; ".join(f"{f['kind']}: {f['action']}" for f in res.findings),
            )
        except MedsegError as exc:
            row.update(status="refused", reason=str(exc))
        rows.append(row)
    return rows


def _renumbered_as(labels, table, numbering):
    """``labels`` (numbered by ``table``) renumbered as ``numbering`` names the structures; structures it does not
    name follow its largest value. Returns the label map and the table that now names its values."""
    mapping = value_map(table, numbering)
    top = max((lab.index for lab in numbering.labels), default=0)
    extra = []
    for lab in table.labels:
        if lab.index not in mapping:
            top += 1
            mapping[lab.index] = top
            extra.append(Label(top, lab.name, lab.color, lab.snomed))
    if extra:
        log.warning(
            "structures %s are not in label table %r; numbered %s after it",
            [lab.name for lab in extra],
            numbering.name,
            [lab.index for lab in extra],
        )
    array = renumbered(labels.array, mapping)
    out_table = LabelTable(numbering.name, tuple(lab for lab in numbering.labels) + tuple(extra))
    return Volume(array, labels.affine, labels.source, labels.meta), out_table


@dataclass
class _CachedCase:
    """One paired label object's case in the cache: its id, files, and the stamp of what it was converted from."""

    case_id: str
    series_key: str
    folder: Path
    image: Path
    label: Path
    stamp_path: Path
    stamp: dict

    def is_fresh(self) -> bool:
        """Whether the cached image, label map and stamp are there and the stamp matches."""
        fresh = self.image.is_file() and self.label.is_file() and self.stamp_path.is_file()
        if fresh:
            try:
                fresh = json.loads(self.stamp_path.read_text()) == self.stamp
            except ValueError:
                fresh = False
        return fresh


def _pairs_table(pairs: list, stem: str, synonyms: dict | None) -> LabelTable:
    """The label table from the ROI / segment names of all paired objects (first colour and code of a name win)."""
    names, colors, codes = [], {}, {}
    for ob in pairs:
        names += ob["names"]
        colors.update({k: v for k, v in ob["colors"].items() if k not in colors})
        codes.update({k: v for k, v in ob["codes"].items() if k not in codes})
    return table_from_names(names, name=stem, colors=colors, codes=codes, synonyms=synonyms)


def _cached_case(ob: dict, cand, case_id: str, cache: Path, table: LabelTable) -> _CachedCase:
    """Where ``ob``'s case sits under ``cache``, with the stamp of its object bytes, series instances and table."""
    skey = cand.series.series_key
    folder = cache / skey
    img_path, lab_path = folder / "image.nii.gz", folder / f"{ob['key']}.label.nii.gz"
    series_sha = hashlib.sha256("\n".join(sorted(x.sop_uid for x in cand.plan.slices)).encode()).hexdigest()
    stamp = {
        "object_sha256": _sha256(ob["path"]),
        "series_instances_sha256": series_sha,
        "table": table.to_dict(),
        "kind": ob["kind"],
    }
    stamp_path = folder / f"{ob['key']}.source.json"
    return _CachedCase(case_id, skey, folder, img_path, lab_path, stamp_path, stamp)


def _write_cached_case(res, ob: dict, modality: str, case: _CachedCase) -> None:
    """Write a read label object's image (int16 when it is integral CT), label map, findings and stamp."""
    is_ct = (
        modality == "CT"
        and np.all(np.isfinite(res.image.array))
        and np.array_equal(res.image.array, np.round(res.image.array))
        and res.image.array.min() >= -32768
        and res.image.array.max() <= 32767
    )
    write_volume(res.image, case.image, dtype=np.int16 if is_ct else None)
    write_label_map(res.labels, case.label)
    write_json(
        case.folder / f"{ob['key']}.findings.json",
        {
            "case_id": case.case_id,
            "series_key": case.series_key,
            "label_object": ob["key"],
            "rois": res.rois,
            "unmapped": res.unmapped,
            "findings": res.findings,
        },
    )
    write_json(case.stamp_path, case.stamp)
    log.info("case %s: %s %s -> label map (%d findings)", case.case_id, ob["kind"], ob["key"], len(res.findings))


def manifest_from_dicom(
    export: str | os.PathLike,
    out: str | os.PathLike,
    *,
    split: str = "train",
    synonyms: dict | None = None,
    salt: str | None = None,
    progress: bool = False,
) -> DicomManifest:
    """Write the manifest ``out``, ``<stem>_labels.yaml``, ``<stem>_unpaired.csv`` and the cached NIfTI pairs."""
    import pandas as pd
    import yaml

    export, out = Path(export), Path(out)
    inv = scan_inventory(export, progress=progress, salt=salt)
    pairs, unpaired, usable = pair_label_objects(inv, salt=salt)
    stem = out.stem
    table = _pairs_table(pairs, stem, synonyms)
    table_path = out.with_name(stem + "_labels.yaml")
    cache = out.with_name(stem + "_cache")
    n_per_series: dict = {}
    for ob in pairs:
        n_per_series[ob["series_uid"]] = n_per_series.get(ob["series_uid"], 0) + 1
    rows = []
    for ob in sorted(pairs, key=lambda o: (usable[o["series_uid"]].series.series_key, o["key"])):
        cand = usable[ob["series_uid"]]
        skey = cand.series.series_key
        case_id = skey if n_per_series[ob["series_uid"]] == 1 else f"{skey}_{ob['key']}"
        case = _cached_case(ob, cand, case_id, cache, table)
        if not case.is_fresh():
            try:
                reader = read_rtstruct if ob["kind"] == "rtstruct" else read_dicom_seg
                res = reader(ob["path"], export, table=table, synonyms=synonyms, inventory=inv)
            except MedsegError as exc:
                unpaired.append(
                    {
                        "kind": ob["kind"],
                        "key": ob["key"],
                        "modality": ob["kind"].upper(),
                        "reason": f"paired with series {skey} but could not be read: {exc}",
                    }
                )
                continue
            _write_cached_case(res, ob, cand.series.modality, case)
        rows.append(
            {
                "case_id": case_id,
                "image": os.path.relpath(case.image, out.parent),
                "label": os.path.relpath(case.label, out.parent),
                "split": split,
                "series_key": skey,
                "label_object": ob["key"],
                "label_kind": ob["kind"],
                "modality": cand.series.modality,
            }
        )
    if not rows:
        raise InputError(
            f"no image series with an RTSTRUCT or SEG that references it ({len(unpaired)} objects/series "
            "could not be paired); expected a DICOM export holding images and their structure sets",
            path=export,
        )
    write_csv(out, pd.DataFrame(rows))
    write_text(
        table_path,
        "# written by medseg manifest from-dicom: structures from the ROI/segment names (synonyms applied)\n"
        + yaml.safe_dump(table.to_dict(), sort_keys=False),
    )
    unpaired_path = out.with_name(stem + "_unpaired.csv")
    write_csv(unpaired_path, pd.DataFrame(unpaired, columns=UNPAIRED_COLUMNS))
    return DicomManifest(out, table_path, unpaired_path, [r["case_id"] for r in rows], unpaired)
