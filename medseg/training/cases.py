"""The cases a training run reads: the train/validation split, cached MONAI data sets, the input profile.

``split_cases`` picks the training and validation cases of a manifest (``fold`` column, else
``split=val``, else a seeded 20% of the training rows); ``cached_dataset`` loads them through a
transform chain once; ``input_profile`` summarises the first training cases for the checkpoint (what
``medseg.reporting.quality`` compares new inputs with); ``say_if_the_data_names_otherwise`` warns when
the data set's own label table disagrees with the config's.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from medseg.data.label_sources import table_for_manifest
from medseg.errors import InputError, MedsegError
from medseg.io.readers import read_volume
from medseg.reporting.quality import training_profile

log = logging.getLogger("medseg.training.loop")  # the name train.log has always shown for these lines

#: Training cases read for the checkpoint's input profile (the first ones of the manifest: deterministic).
PROFILE_CASES = 24


def split_cases(df, seed: int, fold: int | None = None):
    """Training and validation cases: ``fold`` column, else split=val, else a seeded 20% of train."""
    train = df[df["split"] == "train"]
    if fold is not None:
        if "fold" not in df.columns:
            raise InputError(
                "--fold given but the manifest has no 'fold' column (medseg manifest from-folder --folds K writes one)"
            )
        in_fold = train["fold"].astype(str) == str(fold)
        if not in_fold.any():
            raise InputError(f"no training case has fold {fold}; folds present: {sorted(set(train['fold']))}")
        return train[~in_fold], train[in_fold]
    val = df[df["split"] == "val"]
    if len(val) == 0:
        if len(train) < 2:
            raise InputError("need at least 2 cases with split=train (or a split=val case) to validate")
        rng = np.random.default_rng(seed)
        n_val = max(1, round(0.2 * len(train)))
        pick = set(rng.choice(train["case_id"].to_numpy(), size=n_val, replace=False))
        val = train[train["case_id"].isin(pick)]
        train = train[~train["case_id"].isin(pick)]
        shown = ", ".join(map(str, val["case_id"].tolist()[:10])) + (" ..." if len(val) > 10 else "")
        log.warning(
            "no split=val rows: validating on %d case(s) drawn from the training rows (seed %d): %s; mark rows "
            "split=val to choose them",
            len(val),
            seed,
            shown,
        )
    if len(train) == 0:
        raise InputError("no training cases (split=train) in the manifest")
    return train, val


def records(df, image_cols: list[str]) -> list[dict]:
    """The manifest rows as MONAI data records (image channels, ``label``, ``case_id``)."""
    return [{**{c: getattr(r, c) for c in image_cols}, "label": r.label, "case_id": r.case_id} for r in df.itertuples()]


def cached_dataset(dataset_class, items: list[dict], transform, progress: bool):
    """A ``CacheDataset`` of ``items``; medseg's input errors raised inside its transforms come out as themselves
    (one line naming the file), not wrapped in MONAI's "applying transform" RuntimeError."""
    try:
        return dataset_class(items, transform, progress=progress, num_workers=0)
    except RuntimeError as exc:
        cause = exc.__cause__
        while cause is not None and not isinstance(cause, MedsegError):
            cause = cause.__cause__
        if cause is None:
            raise
        raise cause from None


def input_profile(df, image_cols: list[str], table, intensity: str) -> dict | None:
    """``medseg.reporting.quality.training_profile`` of the first training cases; None (logged) when it fails:
    the profile serves the quality verdicts and never stops a training run."""
    rows = df.head(PROFILE_CASES)

    def cases():
        for _, row in rows.iterrows():
            label = row.get("label")
            yield read_volume(row[image_cols[0]]), read_volume(label) if isinstance(label, str) and label else None

    t = time.monotonic()
    try:
        profile = training_profile(cases(), table, modality="CT" if intensity.startswith("ct") else "MR")
    except Exception as exc:  # noqa: BLE001 (a bad case is the data checks' to report; the profile is optional)
        log.warning(
            "no input profile in the checkpoint (%s: %s); quality verdicts will not compare inputs with the "
            "training data",
            type(exc).__name__,
            exc,
        )
        return None
    log.info("input profile of %d training case(s) in %.1f s", len(rows), time.monotonic() - t)
    return profile


def say_if_the_data_names_otherwise(manifest, df, table) -> None:
    """A warning when the data set carries a label table (from-folder's, dataset.json, labels.csv...) that names its
    values otherwise than the config: a config planned on another data set would put that set's names on this one's
    structures. (``medseg plan --labels`` chooses another table on purpose; the warning then says what it replaced.)"""
    found = table_for_manifest(manifest, df, fallback=False)
    if found is not None and not found.table.same_structures(table):
        log.warning(
            "the config's label table (%s) is not the data set's (%s, from %s); outputs will use the config's names. "
            "Run `medseg plan` on this manifest for a config with the data's table",
            ", ".join(table.names),
            ", ".join(found.table.names),
            found.source,
        )
