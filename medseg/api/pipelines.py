"""``run`` (a pipeline over many cases) and ``listen`` (a DICOM receiving node); see ``medseg.api``."""

from __future__ import annotations

import os
from typing import Sequence

from medseg.runner import run_pipeline
from medseg.service.listen import ListenConfig, run_listener

PathLike = str | os.PathLike


def run(
    *,
    pipeline: PathLike,
    input: PathLike,
    out: PathLike,
    overrides: Sequence[str] | None = None,
    resume: bool = False,
    engine: str = "local",
    workers: int | None = None,
    address: str | None = None,
    progress: bool = True,
    device: str | None = None,
    gpus_per_worker: float | None = None,
    query: Sequence[str] | None = None,
    accessions: PathLike | None = None,
    cache: PathLike | None = None,
    cache_max_gb: float | None = None,
):
    """Run a pipeline (a YAML path or a packaged pipeline name) over a folder or manifest; returns a ``RunResult``.

    ``input`` may also be a PACS (``dicomweb+http://HOST:PORT/dicom-web`` or ``dimse://AET@HOST:PORT``): one case
    per study found by ``query`` (``["StudyDate=20260101-20260131", "modality=CT"]``) and/or ``accessions`` (a CSV
    with a column AccessionNumber or StudyInstanceUID), retrieved into ``cache`` (at most ``cache_max_gb``).
    A PACS that cannot be reached or refuses medseg raises ``medseg.pacs.PacsError`` (exit code 3 in the CLI).

    ``engine="ray"``: ``workers`` actors at most (default: one per GPU, or one per node on CPUs),
    ``gpus_per_worker`` GPUs each (0.5: two share a GPU), ``address`` joins a cluster (``medseg.runner.cluster``).

    Running the same call again resumes: finished cases with unchanged inputs and settings are skipped.
    ``out`` must be new, empty or a run directory (it carries a ``.medseg-run`` marker); a non-empty folder
    without it, a file, or a run directory another run holds (``.medseg-lock``) raise ``OutputError``.
    """
    return run_pipeline(
        pipeline=pipeline,
        input=input,
        out=out,
        overrides=list(overrides or []),
        resume=resume,
        engine=engine,
        workers=workers,
        address=address,
        progress=progress,
        device=device,
        gpus_per_worker=gpus_per_worker,
        query=list(query or []),
        accessions=accessions,
        cache=cache,
        cache_max_gb=cache_max_gb,
    )


def listen(
    *,
    ae_title: str,
    port: int,
    pipeline: PathLike,
    out: PathLike,
    host: str = "127.0.0.1",
    allow_ae: Sequence[str] = (),
    quiet_seconds: float = 30.0,
    spool_max_gb: float = 20.0,
    overrides: Sequence[str] | None = None,
    tls_cert: PathLike | None = None,
    tls_key: PathLike | None = None,
    tls_ca: PathLike | None = None,
    device: str | None = None,
    keep_spool: bool = False,
    stop=None,
    console: bool = True,
) -> dict:
    """Run a C-STORE SCP (``medseg listen``) until SIGTERM/SIGINT or ``stop`` (a ``threading.Event``) is set.

    Every received instance is on disk in ``out/spool`` before it is acknowledged; a study with no new
    instance for ``quiet_seconds`` runs through ``pipeline`` (model loaded once) into ``out/run``.
    Restarting on the same ``out`` processes what was received and not yet done, and nothing twice.
    ``allow_ae``: the calling AE titles accepted (empty: any). Returns the studies' counts by status.
    """
    cfg = ListenConfig(
        ae_title=ae_title,
        port=int(port),
        pipeline=str(pipeline),
        out=str(out),
        host=host,
        allow_ae=tuple(allow_ae or ()),
        quiet_seconds=float(quiet_seconds),
        spool_max_gb=float(spool_max_gb),
        overrides=tuple(overrides or ()),
        tls_cert=str(tls_cert) if tls_cert else None,
        tls_key=str(tls_key) if tls_key else None,
        tls_ca=str(tls_ca) if tls_ca else None,
        device=device,
        keep_spool=keep_spool,
    )
    return run_listener(cfg, stop=stop, console=console)
