"""``medseg dicom scan`` (inventory of a DICOM folder) and ``medseg convert`` (image series -> NIfTI)."""

from medseg import api
from medseg.commands import NO_PROGRESS_HELP, add_grid_policy, from_args


def _scan(args) -> int:
    inv, series_csv, files_csv = api.scan_dicom(
        **from_args(args, "folder out resample_irregular refuse_tilt with_identifiers salt"),
        progress=not args.no_progress,
    )
    n_ok = sum(e.segmentable for e in inv.entries)
    print(
        f"{inv.scan.n_files} files: {len(inv.entries)} series ({n_ok} segmentable), "
        f"{len(inv.scan.skipped)} files not in an image stack -> {series_csv}, {files_csv}"
    )
    return 0


def _convert(args) -> int:
    r = api.convert_dicom(
        **from_args(
            args, "folder out min_slices description resample_irregular refuse_tilt with_identifiers salt label_table"
        ),
        modalities=args.modality or (),
        progress=not args.no_progress,
    )
    n_lab = sum(row.get("status") == "converted" for row in r.label_maps)
    extra = f", {n_lab} RTSTRUCT/SEG label maps" if r.label_maps else ""
    print(f"{len(r.outputs)} series converted{extra}, {len(r.refused)} refused -> {args.out} (see conversion.csv)")
    return r.exit_code


def _common(p) -> None:
    add_grid_policy(p)
    p.add_argument(
        "--with-identifiers",
        action="store_true",
        help="also write PatientName/ID/BirthDate, AccessionNumber and UIDs (off: pseudonymous keys only)",
    )
    p.add_argument("--salt", help="salt of the study/series keys (default: $MEDSEG_KEY_SALT or a fixed one)")
    p.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)


def add(sub) -> None:
    d = sub.add_parser("dicom", help="inspect DICOM folders")
    dsub = d.add_subparsers(dest="dicom_command", metavar="VERB", required=True)
    s = dsub.add_parser("scan", help="header-only inventory: one CSV row per series, + the files not used and why")
    s.add_argument("folder", help="folder tree of DICOM files (any names, any nesting)")
    s.add_argument("--out", required=True, help="inventory CSV; the file list goes next to it as <name>_files.csv")
    _common(s)
    s.set_defaults(func=_scan)

    c = sub.add_parser("convert", help="write each image series of a DICOM folder as NIfTI + JSON sidecar")
    c.add_argument("folder", help="folder tree of DICOM files (any names, any nesting)")
    c.add_argument("--out", required=True, help="output folder")
    c.add_argument("--modality", action="append", help="only this modality (repeatable), e.g. CT")
    c.add_argument("--min-slices", type=int, default=1, help="only stacks with at least this many slices")
    c.add_argument(
        "--series-description",
        "--description",
        dest="description",
        help="only series whose description matches this regular expression",
    )
    c.add_argument(
        "--label-table",
        help="number the structures of converted RTSTRUCT/SEG objects as this table does "
        "(a YAML file or a name in configs/labels; default: alphabetical, names in <name>.labels.yaml)",
    )
    _common(c)
    c.set_defaults(func=_convert)
