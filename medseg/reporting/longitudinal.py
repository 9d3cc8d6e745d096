"""Changes over time: the studies of one patient in date order, per structure (``longitudinal.csv``).

Which studies belong to one patient, and when each was made, comes from

- a manifest's ``subject`` and ``date`` columns (``case_id, subject, date``; any date pandas reads), or
- for DICOM inputs, the headers of the series each label map was predicted from (its predict sidecar names the
  folder and the series): PatientID (else PatientName) and StudyDate (else SeriesDate, AcquisitionDate,
  ContentDate).

Both are read in memory only. What is written names the patient by a salted hash (``pt...``, the same salt as
the study and series keys: ``MEDSEG_KEY_SALT``) and the time by days since the patient's first study: no
identifier and no date reaches ``longitudinal.csv``, its plots or the logs.

Per patient x structure x time point: the volume, its change from the baseline and from the previous time
point (mL and %), the days between, and ``flag`` with ``flag_reasons`` when the change exceeds the
measurement-noise threshold (``NOISE``) or a time point's segmentation is not ``pass`` (its ``qc`` verdict,
when the report has one).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from medseg.errors import InputError
from medseg.io.atomic import atomic_path, write_csv, write_text
from medseg.io.dicom.scan import pseudonym
from medseg.io.readers import case_id_for

log = logging.getLogger(__name__)
PathLike = str | os.PathLike


@dataclass(frozen=True)
class NoiseThreshold:
    """A change counts as real when it exceeds both bounds.

    ``relative`` 10%: repeated automatic segmentations of the same organ on scans a short time apart differ
    by a few percent (test-retest CT/MR organ volumetry reports 2-8%); 10% keeps the flag for changes beyond
    that. ``absolute_ml`` 0.5 mL: below it, a few boundary voxels of a small structure move the percentage
    by more than 10% without any real change.
    """

    relative: float = 0.10
    absolute_ml: float = 0.5

    def exceeded(self, before: float, after: float) -> bool:
        change = abs(after - before)
        return bool(change > self.absolute_ml and change > self.relative * max(abs(before), 1e-9))

    def describe(self) -> str:
        return f"|change| > {self.relative:.0%} and > {self.absolute_ml:g} mL"


NOISE = NoiseThreshold()

COLUMNS = [
    "patient_key",
    "structure",
    "time_point",
    "case_id",
    "days_from_baseline",
    "days_from_previous",
    "volume_ml",
    "change_from_baseline_ml",
    "change_from_baseline_pct",
    "change_from_previous_ml",
    "change_from_previous_pct",
    "qc",
    "flag",
    "flag_reasons",
]

#: Header fields read for the patient and the date (in memory only).
_PATIENT_TAGS = ("PatientID", "PatientName")
_DATE_TAGS = ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate")


def time_points_from_manifest(manifest: PathLike) -> dict[str, tuple[str, pd.Timestamp]]:
    """case_id -> (patient key, date) from a manifest with ``case_id``, ``subject`` and ``date`` columns."""
    path = Path(manifest)
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read as CSV ({str(exc).splitlines()[0]})", path=path) from None
    missing = [c for c in ("case_id", "subject", "date") if c not in df.columns]
    if missing:
        raise InputError(
            f"a longitudinal manifest needs columns case_id, subject and date; missing {missing}", path=path
        )
    out = {}
    for i, row in df.iterrows():
        date = pd.to_datetime(row["date"], errors="coerce")
        if pd.isna(date) or not row["subject"]:
            raise InputError(f"row {i + 2}: subject and a date (e.g. 2026-03-01) are needed for each case", path=path)
        out[str(row["case_id"]).lstrip("'")] = (pseudonym(str(row["subject"]), prefix="pt"), date)
    return out


def time_points_from_dicom(labels: Sequence[PathLike], case_ids: Sequence[str]) -> dict[str, tuple[str, pd.Timestamp]]:
    """case_id -> (patient key, date) from the DICOM series each label map's predict sidecar names."""
    out = {}
    for cid, lab in zip(case_ids, labels, strict=False):
        sidecar = Path(lab).parent / f"{case_id_for(lab)}.json"
        try:
            side = json.loads(sidecar.read_text())
        except (OSError, ValueError):
            raise InputError(
                "no predict sidecar beside this label map: its patient and date cannot be known; give "
                "--longitudinal a manifest with case_id, subject and date columns",
                path=lab,
            ) from None
        source, key = Path(str(side.get("source", "")).split(",")[0]), (side.get("dicom") or {}).get("series_key")
        if not key or not source.is_dir():
            raise InputError(
                "was not predicted from a DICOM series that is still there; give --longitudinal a manifest "
                "with case_id, subject and date columns",
                path=lab,
            )
        out[cid] = _patient_and_date(source, key, lab)
    return out


def _patient_and_date(folder: Path, series_key: str, lab) -> tuple[str, pd.Timestamp]:
    import pydicom

    for root, _dirs, files in os.walk(folder):
        for name in sorted(files):
            try:
                ds = pydicom.dcmread(
                    Path(root) / name,
                    stop_before_pixels=True,
                    specific_tags=["SeriesInstanceUID", *_PATIENT_TAGS, *_DATE_TAGS],
                )
            except Exception:  # noqa: BLE001 (not DICOM: the next file)
                continue
            if pseudonym(str(ds.get("SeriesInstanceUID", "")), prefix="se") != series_key:
                continue
            patient = next((str(ds.get(t)) for t in _PATIENT_TAGS if str(ds.get(t, "") or "").strip()), "")
            raw = next((str(ds.get(t)) for t in _DATE_TAGS if str(ds.get(t, "") or "").strip()), "")
            date = pd.to_datetime(raw, format="%Y%m%d", errors="coerce")
            if not patient or pd.isna(date):
                raise InputError(
                    "its source series has no PatientID/PatientName or no study date; give --longitudinal "
                    "a manifest with case_id, subject and date columns",
                    path=lab,
                )
            return pseudonym(patient, prefix="pt"), date
    raise InputError("its source series is no longer in the folder the sidecar names", path=lab)


def _pct(change: float, base: float) -> float:
    return 100.0 * change / base if base else float("nan")


def longitudinal_frame(volumes: pd.DataFrame, points: dict, noise: NoiseThreshold = NOISE) -> pd.DataFrame:
    """The rows of ``longitudinal.csv`` from ``volumes.csv`` rows and each case's (patient key, date)."""
    missing = sorted(set(volumes["case_id"].astype(str)) - set(points))
    if missing:
        raise InputError(f"no subject and date for case(s) {missing[:5]}; every case needs one for --longitudinal")
    df = volumes.copy()
    df["case_id"] = df["case_id"].astype(str)
    df["patient_key"] = df["case_id"].map(lambda c: points[c][0])
    df["date"] = df["case_id"].map(lambda c: points[c][1])
    has_qc = "qc" in df.columns
    rows = []
    for (patient, structure), group in df.groupby(["patient_key", "structure"], sort=True):
        group = group.sort_values(["date", "case_id"])
        base, prev = None, None
        for t, (_, r) in enumerate(group.iterrows()):
            vol = float(r["volume_ml"]) if pd.notna(r["volume_ml"]) else float("nan")
            qc = str(r["qc"]) if has_qc and pd.notna(r.get("qc")) else ""
            reasons = []
            row = {
                "patient_key": patient,
                "structure": structure,
                "time_point": t,
                "case_id": r["case_id"],
                "days_from_baseline": 0,
                "days_from_previous": np.nan,
                "volume_ml": vol,
                "qc": qc,
            }
            if base is not None:
                row.update(
                    days_from_baseline=int((r["date"] - base["date"]).days),
                    days_from_previous=int((r["date"] - prev["date"]).days),
                    change_from_baseline_ml=vol - base["vol"],
                    change_from_baseline_pct=_pct(vol - base["vol"], base["vol"]),
                    change_from_previous_ml=vol - prev["vol"],
                    change_from_previous_pct=_pct(vol - prev["vol"], prev["vol"]),
                )
                if noise.exceeded(prev["vol"], vol):
                    reasons.append(
                        f"change_from_previous({row['change_from_previous_ml']:+.2f} mL; {noise.describe()})"
                    )
                if noise.exceeded(base["vol"], vol):
                    reasons.append(f"change_from_baseline({row['change_from_baseline_ml']:+.2f} mL)")
                if (base["qc"] and base["qc"] != "pass") or (prev["qc"] and prev["qc"] != "pass" and prev is not base):
                    reasons.append("an earlier time point is not qc pass")
            if qc and qc != "pass":
                reasons.append(f"this time point is qc {qc}")
            row["flag"] = bool(reasons)
            row["flag_reasons"] = "; ".join(reasons)
            rows.append(row)
            prev = {"date": r["date"], "vol": vol, "qc": qc}
            base = base or prev
    return pd.DataFrame(rows, columns=COLUMNS)


def write_longitudinal(out_dir: PathLike, volumes_csv: PathLike, points: dict, *, plots: bool = True) -> Path:
    """``OUT/longitudinal.csv`` (and, with ``plots``, ``OUT/longitudinal/<patient key>.png``); returns the CSV path."""
    out_dir = Path(out_dir)
    volumes = pd.read_csv(volumes_csv, dtype={"case_id": str})
    volumes["case_id"] = volumes["case_id"].str.replace(r"^'(?=[=+\-@\t\r])", "", regex=True)  # write_csv's escaping
    volumes = volumes[volumes["structure"].astype(str).map(lambda s: not s.startswith("unlisted_"))]
    frame = longitudinal_frame(volumes, points)
    path = write_csv(out_dir / "longitudinal.csv", frame)
    n_patients = frame["patient_key"].nunique()
    log.info(
        "longitudinal: %d patient(s), %d flagged change(s) (%s)", n_patients, int(frame["flag"].sum()), NOISE.describe()
    )
    if plots:
        for patient, group in frame.groupby("patient_key"):
            _plot(out_dir / "longitudinal" / f"{patient}.png", patient, group)
    return path


def _plot(path: Path, patient: str, group: pd.DataFrame) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 2.8), dpi=100)
    for structure, rows in group.groupby("structure"):
        line = ax.plot(rows["days_from_baseline"], rows["volume_ml"], marker="o", label=str(structure))[0]
        flagged = rows[rows["flag"]]
        ax.scatter(
            flagged["days_from_baseline"],
            flagged["volume_ml"],
            s=80,
            facecolors="none",
            edgecolors=line.get_color(),
            linewidths=1.5,
        )
    ax.set_xlabel("days from baseline")
    ax.set_ylabel("volume (mL)")
    ax.set_title(f"{patient} (circled: flagged)", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def add_to_html(report_html: PathLike, frame_csv: PathLike, out_dir: PathLike) -> None:
    """A "Changes over time" section in ``report.html``: one plot per patient and its flagged changes."""
    import html

    page = Path(report_html)
    if not page.is_file():
        return
    frame = pd.read_csv(frame_csv)
    parts = [
        "<h2>Changes over time</h2>",
        f"<p>Studies of one patient in date order; a change is flagged when {html.escape(NOISE.describe())}, "
        "or when a time point's segmentation is not qc pass. Patients are salted hashes; times are days from "
        "each patient's first study.</p>",
    ]
    for patient, group in frame.groupby("patient_key"):
        png = Path(out_dir) / "longitudinal" / f"{patient}.png"
        flagged = group[group["flag"]]
        parts.append(f"<h3>{html.escape(str(patient))}</h3>")
        if png.is_file():
            parts.append(
                f'<img src="longitudinal/{html.escape(png.name)}" alt="volumes of {html.escape(str(patient))}">'
            )
        if len(flagged):
            items = "".join(
                f"<li>{html.escape(str(r.structure))}, day {int(r.days_from_baseline)}: "
                f"{html.escape(str(r.flag_reasons))}</li>"
                for r in flagged.itertuples()
            )
            parts.append(f"<ul>{items}</ul>")
    text = page.read_text(encoding="utf-8")

    write_text(page, text.replace("</body></html>", "\n".join(parts) + "\n</body></html>", 1))
