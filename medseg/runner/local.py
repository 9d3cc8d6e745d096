"""The local engine: one process, the model loaded once, reading overlapped with inference.

Three steps run side by side: ``workers`` reader threads hash and read the
next cases (DICOM scan -> select -> convert; decoding and gzip release the
GIL) and, where the predictor has a ``prepare`` step (nnU-Net models: their
preprocessing and resampling), prepare them for the network; the calling
thread runs the network on the current case, and one writer
thread writes the previous case's outputs (label map, SEG, tables, QC). Reads
are submitted only while fewer than ``workers`` cases are read or waiting, and
a case is handed to the writer only after the previous one is written, so at
most ``workers + 2`` images are in memory however many cases there are.
"""

from __future__ import annotations

import collections
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from medseg.progress import progress_bar as tqdm
from medseg.runner.case_work import CaseFailure, fail, mark_running, now, read_case, segment, write_case
from medseg.runner.model import load_predictor, predictor_info
from medseg.runner.rundir import RUN_LOG

log = logging.getLogger(RUN_LOG)


def read_and_prepare(ctx, case, predictor):
    """``read_case``, then (where the predictor has one: ``medseg.inference.protocol``) its ``prepare`` step on what
    ``segment`` will hand to ``predict``, in this reader thread. A failure of ``prepare`` is left to ``predict``,
    which repeats the step and reports it in the ``predict`` stage as it would have without the read-ahead."""
    loaded = read_case(ctx, case)
    prepare = getattr(predictor, "prepare", None)
    if prepare is not None:
        channels = getattr(case, "channels", ())  # as segment() builds the source
        try:
            prepare([loaded.image, *channels] if channels else loaded.image)
        except Exception as exc:  # noqa: BLE001 - predict() repeats the step and records the failure in its stage
            log.debug("%s: prepare failed (%s); predict repeats it", case.case_id, type(exc).__name__)
    return loaded


def run_local(
    ctx, cases, *, workers: int = 1, progress: bool = True, on_record=None, stats: dict | None = None
) -> list[dict]:
    """Process ``cases``; returns their final state records in the order they finished.

    ``stats`` (a dict) receives ``input_wait_s``: the seconds inference waited for a case to be read (a PACS
    input: retrieved), i.e. the time the network sat idle for want of data.
    """
    if not cases:
        return []
    predictor = load_predictor(ctx)
    info = predictor_info(predictor)
    workers = max(1, int(workers))
    records: list[dict] = []
    bar = tqdm(total=len(cases), desc="cases", unit="case", disable=not progress, smoothing=0.1)

    failed = [0]  # counted as cases finish: not a scan of every record per case (quadratic over 10,000 cases)

    def done(rec: dict) -> None:
        records.append(rec)
        failed[0] += rec["status"] == "failed"
        bar.update(1)
        bar.set_postfix(failed=failed[0], refresh=False)
        if on_record:
            on_record(rec)

    def write(loaded, labels, t0):
        try:
            return write_case(ctx, info, loaded, labels, t0=t0)
        except CaseFailure as exc:
            return fail(ctx, loaded.case, exc, attempt=loaded.attempt, started=loaded.started, t0=t0)

    queue: collections.deque = collections.deque()
    todo = iter(cases)

    def submit(pool) -> None:
        case = next(todo, None)
        if case is not None:
            started, t0 = now(), time.monotonic()
            attempt = mark_running(ctx, case)
            queue.append((case, attempt, started, t0, pool.submit(read_and_prepare, ctx, case, predictor)))

    with (
        ThreadPoolExecutor(workers, thread_name_prefix="medseg-read") as readers,
        ThreadPoolExecutor(1, thread_name_prefix="medseg-write") as writer,
    ):
        for _ in range(workers):
            submit(readers)
        writing = None
        try:
            while queue:
                case, attempt, started, t0, fut = queue.popleft()
                submit(readers)
                try:
                    t_wait = time.monotonic()
                    try:
                        loaded = fut.result()
                    finally:
                        if stats is not None:
                            stats["input_wait_s"] = round(stats.get("input_wait_s", 0.0) + time.monotonic() - t_wait, 3)
                    loaded.attempt, loaded.started = attempt, started
                    labels = segment(predictor, loaded)
                except CaseFailure as exc:
                    done(fail(ctx, case, exc, attempt=attempt, started=started, t0=t0))
                    continue
                if writing is not None:
                    done(writing.result())
                writing = writer.submit(write, loaded, labels, t0)
                del loaded, labels
            if writing is not None:
                done(writing.result())
                writing = None
        finally:
            for item in queue:  # interrupted: do not start reads that nobody will use
                item[-1].cancel()
            bar.close()
    return records
