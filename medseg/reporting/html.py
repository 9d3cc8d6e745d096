"""``report.html``: one page for the run that opens from disk with no server.

Top to bottom: what needs a look (the quality verdicts, ``fail`` then
``review``, with their reasons; without verdicts: outliers, structures cut by
the border, below the minimum size or unlisted), the cohort table (one row per
case, volumes in mL, click a column header to sort), the per-structure
summary, a volume distribution plot per structure, and each case's QC
montage (the case id in the table links to it).

No scripts, styles or fonts are fetched from anywhere: CSS and the small
sorting script are inline, plots are embedded as data URIs, and montages are
embedded too while their total size stays under ``embed_limit_mb`` (else they
are linked as ``qc/<case>.png`` next to the page, which must then travel with it).
"""

from __future__ import annotations

import base64
import html
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from medseg.io.atomic import write_text
from medseg.reporting.qc import distribution_png
from medseg.reporting.volumes import FOUND

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;font-size:13px;margin:.5em 0 1.5em}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#eef;cursor:pointer;user-select:none}
td.t,th.t{text-align:left}
td.absent{color:#999}
td.touches_border{background:#fff4d6}
td.below_min_size{background:#eee}
td.outlier{background:#ffd6d6;font-weight:bold}
.flags li{margin:2px 0}
.flags li.qc-fail{color:#a00}
figure{margin:1em 0;border-top:1px solid #ddd;padding-top:.5em}
figure:target{outline:3px solid #36c}
img{max-width:100%}
.note{color:#555;font-size:13px}
"""
_SORT_JS = """
function sortTable(th){const t=th.closest('table'),i=[...th.parentNode.children].indexOf(th),
b=t.tBodies[0],asc=th.dataset.dir!=='asc';th.dataset.dir=asc?'asc':'desc';
const v=r=>{const c=r.children[i],s=c.dataset.v!==undefined?c.dataset.v:c.textContent;\
const n=parseFloat(s);return isNaN(n)?s:n};
[...b.rows].sort((x,y)=>{const p=v(x),q=v(y);\
const r=(typeof p===typeof q)?(p<q?-1:p>q?1:0):(typeof p==='number'?-1:1);return asc?r:-r})
.forEach(r=>b.appendChild(r))}
window.addEventListener('load',()=>{const bad=[...document.images].filter(i=>!(i.complete&&i.naturalWidth>0)).length;
document.body.dataset.brokenImages=bad;document.body.dataset.images=document.images.length});
"""


def anchor(case_id: str) -> str:
    return "case-" + re.sub(r"[^A-Za-z0-9_.-]", "_", case_id)


def _fmt(v, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return ""
    if isinstance(v, (float, np.floating)):
        return f"{v:.{digits}f}"
    return html.escape(str(v))


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def write_html(
    path: str | os.PathLike,
    long_df,
    wide_df,
    summary_df,
    structures: list[str],
    montages: dict[str, Path | None],
    *,
    title: str = "medseg volumes report",
    notes: list[str] | None = None,
    embed_limit_mb: float = 30.0,
) -> Path:
    """Write ``report.html`` (atomically) from the cohort tables and the montage files."""
    out = Path(path)
    e = html.escape
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>{_CSS}</style>"
        f"<script>{_SORT_JS}</script></head><body>",
        f"<h1>{e(title)}</h1>",
    ]
    n_cases = len(wide_df)
    parts.append(
        f"<p class='note'>{n_cases} case(s), {len(structures)} structure(s). Volumes in mL, counted on each label "
        "map's own grid. Yellow: cut by the image border (a lower bound). Red: outlier. Grey: absent or below the "
        "minimum size.</p>"
    )
    for note in notes or []:
        parts.append(f"<p class='note'>{e(note)}</p>")
    parts += _flags_section(long_df)
    parts += _cohort_table(long_df, wide_df, structures)
    parts += _summary_table(summary_df)
    parts += _distributions(long_df, structures)
    parts += _montages(montages, wide_df, out, embed_limit_mb)
    parts.append("</body></html>\n")
    return write_text(out, "\n".join(parts))


def _flags_section(long_df) -> list[str]:
    """What needs a look, first: quality verdicts fail, then review (medseg.reporting.quality), then the
    remaining outliers and statuses of a table without verdicts."""
    e = html.escape
    flags = []
    has_qc = "qc" in long_df.columns
    for _, r in long_df.iterrows():
        why = []
        qc = r.get("qc") if has_qc and isinstance(r.get("qc"), str) else ""
        if qc in ("fail", "review"):
            why.append(f"{qc.upper()}: {r.get('qc_reasons') or ''}".strip())
        if _is_true(r.get("outlier")) and not qc:
            basis = r.get("outlier_basis")
            z = r.get("robust_z")
            why.append(f"outlier ({basis}{'' if _isna(z) else f', z={z:.1f}'})")
        if r["status"] in ("touches_border", "below_min_size", "not_in_label_table") and not qc:
            why.append(str(r["status"]))
        if why:
            rank = {"fail": 0, "review": 1}.get(qc, 2 if why[0].startswith("outlier") else 3)
            flags.append((rank, r["case_id"], r["structure"], r["volume_ml"], "; ".join(why)))
    parts = ["<h2 id='flags'>Needs a look</h2>"]
    if has_qc:
        n_fail, n_review = sum(f[0] == 0 for f in flags), sum(f[0] == 1 for f in flags)
        parts.append(
            f"<p class='note'>Quality verdicts without ground truth: {n_fail} fail, {n_review} review "
            "(codes and thresholds: medseg.reporting.quality).</p>"
        )
    if flags:
        parts.append("<ul class='flags'>")
        for rank, cid, s, v, why in sorted(flags, key=lambda f: (f[0], f[1], f[2])):
            cls = {0: " class='qc-fail'", 1: " class='qc-review'"}.get(rank, "")
            parts.append(f"<li{cls}><a href='#{anchor(cid)}'>{e(cid)}</a> {e(s)}: {_fmt(v)} mL, {e(why)}</li>")
        parts.append("</ul>")
    else:
        parts.append("<p>Nothing flagged.</p>")
    return parts


def _cohort_table(long_df, wide_df, structures: list[str]) -> list[str]:
    e = html.escape
    status_of = {(r.case_id, r.structure): r for r in long_df.itertuples()}
    parts = ["<h2>Cohort</h2><table id='cohort'><thead><tr><th class='t' onclick='sortTable(this)'>case</th>"]
    parts += [f"<th onclick='sortTable(this)'>{e(s)} (mL)</th>" for s in structures]
    parts.append("</tr></thead><tbody>")
    for _, w in wide_df.iterrows():
        cid = w["case_id"]
        cells = [f"<td class='t'><a href='#{anchor(cid)}'>{e(cid)}</a></td>"]
        for s in structures:
            r = status_of.get((cid, s))
            status = r.status if r is not None else "absent"
            cls = [status]
            if r is not None and _is_true(getattr(r, "outlier", None)):
                cls.append("outlier")
            v = w.get(f"{s}_ml")
            text = "absent" if status == "absent" else ("&ge;" if status == "touches_border" else "") + _fmt(v)
            cells.append(
                f"<td class='{' '.join(cls)}' data-v='{'' if _isna(v) else v}' title='{e(status)}'>{text}</td>"
            )
        parts.append("<tr>" + "".join(cells) + "</tr>")
    parts.append("</tbody></table>")
    return parts


def _summary_table(summary_df) -> list[str]:
    e = html.escape
    parts = ["<h2>Summary (cases with the structure present)</h2><table id='summary'><thead><tr>"]
    parts += [
        f"<th class='{'t' if c == 'structure' else ''}' onclick='sortTable(this)'>{e(c)}</th>"
        for c in summary_df.columns
    ]
    parts.append("</tr></thead><tbody>")
    for _, r in summary_df.iterrows():
        parts.append(
            "<tr>"
            + "".join(f"<td class='{'t' if c == 'structure' else ''}'>{_fmt(r[c])}</td>" for c in summary_df.columns)
            + "</tr>"
        )
    parts.append("</tbody></table>")
    return parts


def _distributions(long_df, structures: list[str]) -> list[str]:
    values, flagged = {}, {}
    for s in structures:
        part = long_df[(long_df["structure"] == s) & long_df["status"].isin(FOUND)]
        values[s] = part["volume_ml"].to_numpy(dtype=float)
        flagged[s] = (
            part["outlier"].fillna(False).to_numpy(dtype=bool) if "outlier" in part else np.zeros(len(part), bool)
        )
    return [
        "<h2>Volume distributions</h2>",
        f"<img alt='volume distribution per structure' src='{_data_uri(distribution_png(values, flagged))}'>",
    ]


def _montages(montages: dict[str, Path | None], wide_df, out: Path, embed_limit_mb: float) -> list[str]:
    """The QC montages, embedded, or linked from qc/ when together they are over ``embed_limit_mb``."""
    e = html.escape
    total = sum(p.stat().st_size for p in montages.values() if p is not None and p.is_file())
    embed = total <= embed_limit_mb * 1e6
    parts = ["<h2>QC montages</h2>"]
    if not embed:
        parts.append(
            f"<p class='note'>Montages ({total / 1e6:.0f} MB) are linked from qc/, which must stay next to this "
            "page.</p>"
        )
    for cid in wide_df["case_id"]:
        p = montages.get(cid)
        parts.append(
            f"<figure id='{anchor(cid)}'><figcaption><b>{e(cid)}</b> <a href='#cohort'>back to the "
            "table</a></figcaption>"
        )
        if p is None:
            parts.append("<p class='note'>No structure found: nothing to show.</p>")
        else:
            src = _data_uri(p.read_bytes()) if embed else os.path.relpath(p, out.parent).replace(os.sep, "/")
            parts.append(f"<img alt='QC montage {e(cid)}' src='{e(src)}'>")
        parts.append("</figure>")
    return parts


def _is_true(v) -> bool:
    return v is not None and not _isna(v) and bool(v)


def _isna(v) -> bool:
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False
