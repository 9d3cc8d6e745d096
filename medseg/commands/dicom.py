"""``medseg dicom scan`` (inventory of a DICOM folder) and ``medseg convert`` (image series -> NIfTI)."""

from medseg import api


def _scan(args) -> int:
    inv, series_csv, files_csv = api.scan_dicom(
        folder=args.folder,
        out=args.out,
        resample_irregular=args.resample_irregular,
        refuse_tilt=args.refuse_tilt,
        progress=not args.no_progress,
        with_identifiers=args.with_identifiers,
        salt=args.salt,
    )
    n_ok = sum(e.segmentable for e in inv.entries)
    print(
        f"{inv.scan.n_files} files: {len(inv.entries)} series ({n_ok} segmentable), "
        f"{len(inv.scan.skipped)} files not in an image stack -> {series_csv}, {files_csv}"
    )
    return 0


def _convert(args) -> int:
    r = api.convert_dicom(
        folder=args.folder,
        out=args.out,
        modalities=args.modality or (),
        min_slices=args.min_slices,
        description=args.description,
        resample_irregular=args.resample_irregular,
        refuse_tilt=args.refuse_tilt,
        progress=not args.no_progress,
        with_identifiers=args.with_identifiers,
        salt=args.salt,
        label_table=args.label_table,
    )
    n_lab = sum(row.get("status") == "converted" for row in r.label_maps)
    extra = f", {n_lab} RTSTRUCT/SEG label maps" if r.label_maps else ""
    print(f"{len(r.outputs)} series converted{extra}, {len(r.refused)} refused -> {args.out} (see conversion.csv)")
    return r.exit_code


def _common(p) -> None:
    p.add_argument(
        "--resample-irregular",
        action="store_true",
        help="interpolate series with missing slices or uneven spacing onto a regular grid (default: refuse)",
    )
    p.add_argument(
        "--refuse-tilt",
        action="store_true",
        help="refuse gantry-tilted series (default: resample them onto an orthogonal grid)",
    )
    p.add_argument(
        "--with-identifiers",
        action="store_true",
        help="also write PatientName/ID/BirthDate, AccessionNumber and UIDs (off: pseudonymous keys only)",
    )
    p.add_argument("--salt", help="salt of the study/series keys (default: $MEDSEG_KEY_SALT or a fixed one)")
    p.add_argument(
        "--no-progress", action="store_true", help="no progress bars (a plain line now and then is still printed)"
    )


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
