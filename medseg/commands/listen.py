"""``medseg listen --ae-title AE --port N --pipeline P.yaml --out RUN_DIR``: a DICOM receiving node."""

from medseg import api
from medseg.commands import from_args


def _listen(args) -> int:
    api.listen(
        **from_args(
            args,
            "ae_title port pipeline out host allow_ae quiet_seconds spool_max_gb "
            "tls_cert tls_key tls_ca device keep_spool",
        ),
        overrides=args.set,
    )
    return 0


def add(sub) -> None:
    s = sub.add_parser(
        "listen",
        help="receive DICOM studies (C-STORE SCP) and run a pipeline on each complete study",
        description="A storage SCP: every instance is on disk (RUN_DIR/spool) before it is acknowledged; a study "
        "with no new instance for --quiet-seconds runs through the pipeline (model loaded once; results "
        "in RUN_DIR/run, forwarded when the pipeline has an export stage). Restarting on the same RUN_DIR "
        "processes what was received and not yet done, nothing twice. Stops on SIGTERM/SIGINT (exit 0).",
    )
    s.add_argument("--ae-title", required=True, help="this node's AE title, e.g. MEDSEG")
    s.add_argument("--port", required=True, type=int, help="TCP port, e.g. 11112")
    s.add_argument("--pipeline", required=True, help="pipeline YAML, e.g. pipelines/dicom_volumetry.yaml")
    s.add_argument("--out", required=True, help="listener directory (created, or resumed when it holds one)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    s.add_argument(
        "--allow-ae",
        nargs="+",
        default=[],
        metavar="AE",
        help="calling AE titles accepted (default: any, with a warning)",
    )
    s.add_argument(
        "--quiet-seconds",
        type=float,
        default=30.0,
        help="a study is complete after this many seconds without a new instance (default 30)",
    )
    s.add_argument(
        "--spool-max-gb",
        type=float,
        default=20.0,
        help="spool size limit; when full, instances are refused with status A700 (default 20)",
    )
    s.add_argument("--keep-spool", action="store_true", help="keep a study's received files after it is done")
    s.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a pipeline setting, e.g. predict.model=best.pt (repeatable)",
    )
    s.add_argument("--device", help="cpu, cuda, cuda:1 (default: the pipeline's, else cuda when available)")
    s.add_argument("--tls-cert", help="TLS: this node's certificate (PEM)")
    s.add_argument("--tls-key", help="TLS: its private key (PEM)")
    s.add_argument("--tls-ca", help="TLS: require client certificates signed by this CA (PEM)")
    s.set_defaults(func=_listen)
