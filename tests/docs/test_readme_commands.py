"""The README's quick start and the docs' examples, run as written; the docs' links checked.

Every fenced ```bash / ```sh / ```console block of README.md and docs/*.md is run, unless the
last non-blank line before it is ``<!-- not-tested: REASON -->`` (installs, PACS, clusters, long
training). A page's blocks run in order in one temporary folder, each command on its own
(continuation lines joined; no shell state carries over), through the installed ``medseg``
entry point (the one beside this interpreter). ``console`` blocks run their ``$ `` lines only.

The quick start segments with ``demo_out/model/best.pt``, the checkpoint of ``medseg demo``
(about 5 minutes). Here the checkpoint of the session's shortened demo (``shared_demo`` in
tests/conftest.py: the demo's recipe on 12 phantoms, 40 epochs; trained once a session, it also
serves the demo's own tests) is that file: it segments the quick start's phantoms well enough to
tell a correct pairing of predictions and references from a wrong one.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
DOCS = REPO / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
BIN = Path(sys.executable).parent  # .venv/bin: where pip put the medseg entry point
RUN_LANGS = {"bash", "sh", "shell", "console"}
NOT_TESTED = re.compile(r"^<!--\s*not-tested:\s*(?P<why>.*?)\s*-->$")
FENCE = re.compile(r"^(?P<fence>`{3,}|~{3,})\s*(?P<lang>[\w+-]*)")

# What the quick start makes. The README's "What you get" table must list exactly these paths:
QUICK_CASES = ["phantom_0000", "phantom_0001", "phantom_0002"]  # medseg phantoms --out ph -n 3
DICOM_CASES = ["phantom_0010"]  # medseg phantoms --out ph_dicom -n 1 --seed 10 --dicom
WRITTEN = {  # path pattern -> the cases it stands for (None: no <case> in it)
    "preds/<case>.nii.gz": QUICK_CASES,
    "preds/<case>.json": QUICK_CASES,
    "preds/run.json": None,
    "preds/predict.log": None,
    "preds_dicom/<case>.seg.dcm": DICOM_CASES,
    "preds_dicom/<case>.sr.dcm": DICOM_CASES,
    "preds_dicom/<case>.rtstruct.dcm": DICOM_CASES,
    "preds_dicom/<case>.probabilities.nii.gz": DICOM_CASES,
    "report/volumes.csv": None,
    "report/volumes_wide.csv": None,
    "report/summary.csv": None,
    "report/qc/<case>.png": QUICK_CASES,
    "report/report.html": None,
    "report/metrics.csv": None,
}
# listed by the table, not made by the quick start (no case fails; no --statistics-json, --longitudinal)
NOT_WRITTEN = {
    "preds/failures.csv": None,
    "report/statistics/<case>.json": QUICK_CASES,
    "report/longitudinal.csv": None,
}
# What the runnable examples of a docs page leave behind, beyond exit code 0.
PAGE_OUTPUTS = {
    "dicom-and-pacs.md": ["inventory.csv", "inventory_files.csv", "nifti/conversion.csv"],
    "pipelines-and-clusters.md": [
        "runs/batch1/volumes.csv",
        "runs/batch1/report.html",
        "runs/batch1/run.log",
        "runs/batch1/status.csv",
        "runs/batch1/failures.csv",
        "runs/batch1/cases/phantom_0010/labels.nii.gz",
        "runs/batch1/cases/phantom_0010/seg.dcm",
        "runs/batch1/cases/phantom_0010/sr.dcm",
        "runs/batch1/cases/phantom_0011/labels.nii.gz",
    ],
}


# --- reading the pages -----------------------------------------------------------------------------


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    body: list[str]
    not_tested: str | None  # the reason given, or None

    @property
    def runs(self) -> bool:
        return self.lang in RUN_LANGS and self.not_tested is None

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"

    def commands(self) -> list[str]:
        """The block's commands: continuation lines joined, blank and comment lines dropped."""
        lines = self.body
        if self.lang == "console":  # prompts only; a command's continuation lines follow its $ line
            kept, cont = [], False
            for ln in lines:
                if ln.startswith("$ ") or cont:
                    kept.append(ln[2:] if ln.startswith("$ ") and not cont else ln)
                    cont = ln.rstrip().endswith("\\")
            lines = kept
        cmds, cur = [], ""
        for ln in lines:
            if not cur and (not ln.strip() or ln.lstrip().startswith("#")):
                continue
            if ln.rstrip().endswith("\\"):
                cur += ln.rstrip()[:-1].strip() + " "
            else:
                cmds.append(cur + ln.strip())
                cur = ""
        if cur:
            cmds.append(cur.strip())
        return cmds


def fenced_blocks(page: Path) -> list[Block]:
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence = m.group("fence")
        j = i + 1
        while j < len(lines) and not (lines[j].strip().startswith(fence) and set(lines[j].strip()) == {fence[0]}):
            j += 1
        k = i - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        marker = NOT_TESTED.match(lines[k].strip()) if k >= 0 else None
        blocks.append(
            Block(page, i + 1, m.group("lang").lower(), lines[i + 1 : j], marker.group("why") if marker else None)
        )
        i = j + 1
    return blocks


def _section(page: Path, heading: str) -> str:
    """The text under a heading, up to the next heading of the same or a higher level."""
    text = page.read_text(encoding="utf-8")
    m = re.search(rf"^(#+) {re.escape(heading)}\s*$", text, re.M)
    assert m, f"{page.name}: no heading {heading!r}"
    level = len(m.group(1))
    end = re.compile(rf"^#{{1,{level}}} ", re.M).search(text, m.end())
    return text[m.end() : end.start() if end else len(text)]


def _table_rows(section: str) -> list[tuple[list[str], str]]:
    """Each row of the section's table(s): the backticked names of its first cell, and the rest of the row."""
    rows = []
    for row in section.splitlines():
        if row.startswith("|") and not re.match(r"^\|\s*-", row):
            cells = row.split("|")
            rows.append((re.findall(r"`([^`]+)`", cells[1]), "|".join(cells[2:])))
    return rows


def _first_cells(section: str) -> list[str]:
    return [name for names, _ in _table_rows(section) for name in names]


def _check_columns(heading: str, csv_columns) -> None:
    """The README documents every column of the CSV, and every column it documents is there unless its row
    says when it is written ("only when ...", "only with ...")."""
    rows = _table_rows(_section(README, heading))
    documented = {n for names, _ in rows for n in names}
    optional = {n for names, meaning in rows if re.search(r"\bonly (when|with)\b", meaning) for n in names}
    assert not set(csv_columns) - documented, f"{heading}: not in the README: {sorted(set(csv_columns) - documented)}"
    assert not documented - optional - set(csv_columns), (
        f"{heading}: in the README, not written: {sorted(documented - optional - set(csv_columns))}"
    )


DOC_PAGES = [p for p in PAGES[1:] if any(b.runs for b in fenced_blocks(p))]


# --- running them ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def demo_checkpoint(shared_demo):
    """``demo_out/model/best.pt`` of the quick start: the checkpoint of the session's shortened ``medseg demo``
    (``shared_demo`` in tests/conftest.py: 12 training phantoms, 40 epochs, other seeds than the quick start's)."""
    return Path(shared_demo["result"]["checkpoint"])


def _workdir(tmp_path: Path, checkpoint: Path) -> Path:
    work = tmp_path / "work"
    (work / "demo_out" / "model").mkdir(parents=True)
    shutil.copy(checkpoint, work / "demo_out" / "model" / "best.pt")
    return work


def run_page(page: Path, work: Path) -> None:
    """Run the page's runnable blocks in order in ``work``; fail naming the first command that fails."""
    medseg = BIN / "medseg"
    assert medseg.is_file(), f"no medseg entry point beside {sys.executable}: install the package (make install)"
    env = {**os.environ, "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")])}
    for block in fenced_blocks(page):
        if not block.runs:
            continue
        for cmd in block.commands():
            r = subprocess.run(
                ["bash", "-o", "pipefail", "-c", cmd], cwd=work, env=env, capture_output=True, text=True, timeout=900
            )
            if r.returncode != 0:
                pytest.fail(
                    f"{block.where}: exit {r.returncode}\n$ {cmd}\n--- stdout\n{r.stdout[-2000:]}\n--- "
                    f"stderr\n{r.stderr[-3000:]}",
                    pytrace=False,
                )


def _paths(pattern: str, cases: list[str] | None) -> list[str]:
    return [pattern.replace("<case>", c) for c in cases] if cases else [pattern]


@pytest.mark.slow
def test_the_readme_quick_start_runs_and_writes_what_the_readme_promises(demo_checkpoint, tmp_path):
    import pandas as pd

    work = _workdir(tmp_path, demo_checkpoint)
    run_page(README, work)

    for made in [
        "ph/images/phantom_0000.nii.gz",
        "ph/labels/phantom_0000.nii.gz",
        "ph/manifest.csv",
        "ph/manifest_labels.yaml",
        "ph_dicom/dicom/phantom_0010",
    ]:  # the layout the quick start's comments describe
        assert (work / made).exists(), made
    listed = {p for p in _first_cells(_section(README, "What you get")) if "/" in p}
    assert listed == set(WRITTEN) | set(NOT_WRITTEN), "the README's file table and this test disagree"
    missing = [p for pat, cases in WRITTEN.items() for p in _paths(pat, cases) if not (work / p).exists()]
    assert not missing, f"promised by the README, not written: {missing}"
    patterns = [re.compile(re.escape(p).replace(re.escape("<case>"), r"[^/]+") + "$") for p in listed]
    made = [
        f.relative_to(work).as_posix()
        for d in ("preds", "preds_dicom", "report")
        for f in (work / d).rglob("*")
        if f.is_file()
    ]
    unlisted = [
        m for m in made if not any(p.match(m) or p.match(m.replace("preds_dicom/", "preds/", 1)) for p in patterns)
    ]
    assert not unlisted, f"written by the quick start, not in the README's table: {unlisted}"
    unexpected = [p for pat, cases in NOT_WRITTEN.items() for p in _paths(pat, cases) if (work / p).exists()]
    assert not unexpected, f"written although the quick start does not ask for them: {unexpected}"
    # a folder of single-channel files is one case per file, and only label maps are read back as label maps
    assert sorted(p.name for p in (work / "preds").glob("*.nii.gz")) == [f"{c}.nii.gz" for c in QUICK_CASES]

    volumes = pd.read_csv(work / "report" / "volumes.csv")
    metrics = pd.read_csv(work / "report" / "metrics.csv")
    _check_columns("Columns of volumes.csv", volumes.columns)
    _check_columns("Columns of metrics.csv", metrics.columns)

    structures = ["liver", "spleen", "kidney_right", "kidney_left"]  # names from the sidecars / the phantoms' table
    for table in (volumes, metrics):
        assert sorted(table["case_id"].unique()) == QUICK_CASES
        assert sorted(table["structure"]) == sorted(structures * len(QUICK_CASES))
    assert volumes["status"].isin(["present", "touches_border"]).all(), volumes[["case_id", "structure", "status"]]
    assert volumes["intensity_mean"].notna().all() and volumes["model_sha256"].str.len().eq(64).all()
    assert (metrics["status"] == "both_present").all()
    assert metrics["dice"].mean() > 0.75 and metrics["dice"].min() > 0.5, metrics[["case_id", "structure", "dice"]]


@pytest.mark.slow
@pytest.mark.parametrize("page", DOC_PAGES, ids=lambda p: p.name)
def test_the_examples_of_a_docs_page_run(page, demo_checkpoint, tmp_path):
    work = _workdir(tmp_path, demo_checkpoint)
    run_page(page, work)
    missing = [p for p in PAGE_OUTPUTS.get(page.name, []) if not (work / p).exists()]
    assert not missing, f"{page.name}: not written: {missing}"


# --- fast checks of the pages themselves ------------------------------------------------------------


def test_every_command_block_runs_or_says_why_not():
    for page in PAGES:
        for block in fenced_blocks(page):
            if block.not_tested is not None:
                assert block.not_tested, f"{block.where}: a not-tested marker needs a reason"
                assert block.lang in RUN_LANGS, (
                    f"{block.where}: not-tested marker before a ```{block.lang} block, which never runs"
                )
            if block.runs:
                assert block.commands(), f"{block.where}: an empty command block"
    quick = [c for b in fenced_blocks(README) if b.runs for c in b.commands()]
    for verb in ("phantoms", "predict", "report", "evaluate"):
        assert any(c.startswith(f"medseg {verb} ") for c in quick), f"the README's quick start runs no medseg {verb}"
    assert set(PAGE_OUTPUTS) <= {p.name for p in DOC_PAGES}, "PAGE_OUTPUTS names a page without runnable examples"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _prose(text: str) -> str:
    """The text without fenced blocks and inline code, where links are not links."""
    text = re.sub(r"^(`{3,}|~{3,}).*?^\1\s*$", "", text, flags=re.M | re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def test_links_stay_inside_the_repository_and_resolve():
    for page in PAGES:
        text = page.read_text(encoding="utf-8").replace("dicomweb+http(s)://", "dicomweb+http://")
        # No URL anywhere (code included), apart from the PACS endpoint syntax of the examples.
        for m in re.finditer(r"(?<![\w+.-])([a-z][\w+.-]*://|www\.|mailto:)", text, re.I):
            scheme = m.group(1).lower()
            assert scheme in ("dicomweb+http://", "dicomweb+https://", "dimse://"), (
                f"{page.name}:{text.count(chr(10), 0, m.start()) + 1}: {text[m.start() : m.start() + 60]!r} points "
                "outside the repository"
            )
        prose = _prose(text)
        targets = re.findall(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", prose)  # [text](target), ![alt](target)
        targets += re.findall(r"^\s*\[[^\]]+\]:\s*(\S+)", prose, re.M)  # [ref]: target
        assert not re.search(r"<[a-z][\w+.-]*:[^>]*>", prose, re.I), f"{page.name}: an autolink"
        for target in targets:
            path, _, anchor = target.partition("#")
            assert not path.startswith("/"), f"{page.name}: {target}: links are relative to the page"
            dest = (page.parent / path).resolve() if path else page
            assert dest.exists(), f"{page.name}: {target}: no such file"
            assert dest.is_relative_to(REPO.resolve()), f"{page.name}: {target} leaves the repository"
            if anchor and dest.suffix == ".md":
                slugs = {
                    _slug(h) for h in re.findall(r"^#+ (.+?)\s*#*$", _prose(dest.read_text(encoding="utf-8")), re.M)
                }
                assert anchor in slugs, f"{page.name}: {target}: no heading with that anchor in {dest.name}"


def test_the_readme_stays_short_and_cites_this_version():
    import medseg

    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) < 250, "README.md grew past 250 lines: move details to docs/"
    bib = [b for b in fenced_blocks(README) if b.lang == "bibtex"]
    assert len(bib) == 1
    fields = dict(re.findall(r"^\s*(\w+)\s*=\s*\{+([^}]*)\}+", "\n".join(bib[0].body), re.M))
    assert (
        fields["version"] == medseg.__version__
        and fields["author"] == "medseg contributors"
        and fields["year"] == "2026"
    )
    assert "[LICENSE](LICENSE)" in text and "not a medical device" in text
