"""``predict``: segment images with one loaded model (``medseg predict``); see ``medseg.api``.

Importing this module registers the model formats of other tools (``medseg.adapters``: each adapter's module is
imported only when its format is detected, ``medseg.adapters.formats``), and loads the inference stack, nothing of
training, reporting, the runner or PACS.
"""

from __future__ import annotations

import os
from typing import Sequence

import medseg.adapters  # noqa: F401  (registers the model formats of other tools with medseg.inference.load)
from medseg.inference.batch import PredictOptions, PredictResult, predict_many

PathLike = str | os.PathLike

__all__ = ["PredictOptions", "PredictResult", "predict"]


def predict(
    *,
    model: PathLike | Sequence[PathLike],
    inputs: Sequence[PathLike],
    out: PathLike,
    device=None,
    progress: bool = True,
    overwrite: bool = False,
    expected_labels=None,
    dicom_seg: bool = True,
    rtstruct: bool = False,
    save_probabilities: bool = False,
    modalities: Sequence[str] = (),
    min_slices: int = 1,
    series_description: str | None = None,
    resample_irregular: bool = False,
    refuse_tilt: bool = False,
    sr: bool = True,
    options: PredictOptions | None = None,
    **inference_overrides,
) -> PredictResult:
    """Segment every input with one loaded model (several checkpoints: an ensemble); returns a ``PredictResult``.

    A DICOM folder holding several image series is one case per series that the selection rule
    (``modalities``, ``min_slices``, ``series_description``: a regular expression) admits.
    ``resample_irregular`` / ``refuse_tilt``: the geometry policy for DICOM series, as for ``convert_dicom``.
    ``sr``: with the SEG of a DICOM case, a TID 1500 measurement report ``<case>.sr.dcm`` (``medseg.io.objects.sr``).

    ``inference_overrides`` change the checkpoint's inference settings, e.g.
    ``sw_batch_size=8, amp="off", tta_flips=[2]``. See ``medseg.inference.batch.predict_many``.
    Outputs are written by ``medseg.inference.outputs.write_case_outputs`` (label map first; a DICOM SEG that cannot
    be made is a finding in the sidecar, not a failure); an output path that is an input raises ``OutputError``.

    ``options``: all these settings as one ``PredictOptions`` (as ``medseg predict`` builds them); the keywords after
    ``out`` are then not read, and inference overrides go in ``options.inference``.
    """
    if options is None:
        options = PredictOptions(
            device=device,
            progress=progress,
            overwrite=overwrite,
            expected_labels=expected_labels,
            dicom_seg=dicom_seg,
            rtstruct=rtstruct,
            save_probabilities=save_probabilities,
            sr=sr,
            modalities=tuple(modalities),
            min_slices=min_slices,
            series_description=series_description,
            resample_irregular=resample_irregular,
            refuse_tilt=refuse_tilt,
            inference=dict(inference_overrides),
        )
    elif inference_overrides:
        raise TypeError(
            "predict() takes inference overrides in options.inference when options is given: "
            f"{sorted(inference_overrides)}"
        )
    return predict_many(model=model, inputs=inputs, out=out, options=options)
