"""``medseg run PIPELINE.yaml --input FOLDER_OR_MANIFEST --out RUN_DIR``: a resumable batch run."""

import sys

from medseg import api
from medseg.commands import NO_PROGRESS_HELP, from_args


def _run(args) -> int:
    r = api.run(
        **from_args(
            args,
            "pipeline input out resume engine workers address device gpus_per_worker query accessions cache "
            "cache_max_gb",
        ),
        overrides=args.set,
        progress=not args.no_progress,
    )
    print(f"{len(r.done)} done, {len(r.skipped)} already done, {len(r.failures)} failed of {r.n_cases} -> {r.run_dir}")
    for cid, err in r.failures.items():
        print(f"  failed {cid}: {err}", file=sys.stderr)
    if r.failures:
        print(f"  (listed in {r.run_dir / 'failures.csv'})", file=sys.stderr)
    return r.exit_code


def _add_engine_options(s) -> None:
    """--engine, --workers, --address, --gpus-per-worker."""
    s.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="local (default): this process; ray: Ray actors (pip install 'medseg[ray]')",
    )
    s.add_argument(
        "--workers",
        type=int,
        default=None,
        help="local: reader threads overlapping inference (default 1); ray: the most actors, each with its own "
        "model (default: one per GPU, or one per node on CPUs)",
    )
    s.add_argument(
        "--address",
        help="Ray cluster address HOST:PORT to join (default: start a local Ray instance); every node is checked "
        "first: it must see the run directory and the same model (exit code 4 otherwise)",
    )
    s.add_argument(
        "--gpus-per-worker",
        type=float,
        metavar="N",
        help="ray: GPUs each actor asks for (default 1: one actor per GPU; 0.5: two actors share a GPU)",
    )


def add(sub) -> None:
    s = sub.add_parser(
        "run",
        help="run a pipeline (pipelines/*.yaml) over a folder or manifest; resumable",
        description="Exit code: 0 all cases done, 1 done with failures (see failures.csv), 2 nothing done "
        "or a usage error, 3 a PACS (--input ENDPOINT) cannot be reached or refuses medseg, "
        "4 a Ray cluster (--address) failed its check before any case (a node cannot see the run directory "
        "or has another model). "
        "Running the same command again resumes: finished cases whose inputs and settings "
        "are unchanged are skipped (a PACS study finished earlier is neither retrieved nor "
        "sent again).",
    )
    s.add_argument(
        "pipeline",
        help="a packaged pipeline's name (dicom_volumetry, pacs_volumetry, train_and_evaluate) "
        "or a pipeline YAML file, e.g. my_pipeline.yaml",
    )
    s.add_argument(
        "--input",
        required=True,
        help="folder (one image file or DICOM sub-folder per case), manifest .csv, "
        "or a PACS: dicomweb+http://HOST:PORT/dicom-web or dimse://AET@HOST:PORT[?calling=MEDSEG&retrieve=move&scp_port=N]",
    )
    s.add_argument("--out", required=True, help="run directory (created, or resumed when it holds a run)")
    s.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a pipeline setting, e.g. predict.model=best.pt or input.column=dicom (repeatable)",
    )
    s.add_argument("--resume", action="store_true", help="continue the run in --out (error if there is none)")
    _add_engine_options(s)
    s.add_argument("--device", help="cpu, cuda, cuda:1 (default: the pipeline's, else cuda when available)")
    s.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)
    g = s.add_argument_group("PACS input (--input ENDPOINT)")
    g.add_argument(
        "--query",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="study filter, repeatable: StudyDate=20260101-20260131, modality=CT, PatientID=..., "
        "StudyDescription=..., AccessionNumber=... (one case per study found)",
    )
    g.add_argument(
        "--accessions",
        metavar="FILE.csv",
        help="CSV with a column AccessionNumber or StudyInstanceUID: one query per row",
    )
    g.add_argument(
        "--cache", metavar="DIR", help="study cache folder (default ~/.cache/medseg/pacs, or $MEDSEG_PACS_CACHE)"
    )
    g.add_argument(
        "--cache-max-gb",
        type=float,
        metavar="GB",
        help="cache size limit: finished studies are evicted, least recently used first",
    )
    s.set_defaults(func=_run)
