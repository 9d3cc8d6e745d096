"""What the batch code, the runner and the writers use of a predictor: the ``Predictor`` protocol.

A predictor turns one case (a path, a DICOM folder or a ``Volume``; a list of them, one per channel, for
multi-channel models) into a label map on the (first) input's own grid, with the input's affine. medseg's
checkpoints (``medseg.inference.predictor.CheckpointPredictor``) and every adapter of another tool's model
(``medseg.adapters``: nnU-Net, TotalSegmentator, MONAI bundles, portable files) implement it; they share
code by composition (``read_case_channels``, ``resolve_device``), not by subclassing. In the spirit of
MONAI's ``Inferer``: a small interface, no base class.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from medseg.io.volume import Volume
from medseg.labels import LabelTable


@runtime_checkable
class Predictor(Protocol):
    """One model, ready to segment cases.

    - ``labels``: the label table of the maps it returns;
    - ``in_channels``: images per case (one file per channel, in the training order);
    - ``device``: the ``torch.device`` it runs on (the run record names it);
    - ``inference``, ``preprocessing``, ``provenance``: plain dicts written to each case's sidecar and the run
      record (settings, what was done to the input, which model: ``model_path``, ``model_sha256``...).

    ``predict(source, keep_probabilities=False)`` returns a ``Volume`` on the input's grid whose ``meta`` holds
    the timings (``seconds``, ``seconds_read``, ``seconds_windows``...), ``network_grid``, ``peak_rss_mb``,
    ``confidence`` per structure and ``findings`` about the input; with ``keep_probabilities``,
    ``meta["probabilities"]`` is ``(array (x, y, z, classes) float32, affine)``.

    Optional (not part of the checked protocol): ``prepare(source)`` reads and preprocesses a case ahead of its
    ``predict`` (``medseg.runner.local`` calls it in its reader threads, so that the next case's preprocessing
    overlaps the current case's windows); the next ``predict`` of the same source (the same ``Volume`` object, or
    the same paths) then starts from it. It must be thread-safe against a concurrent ``predict`` of another case;
    a failure in it is repeated and reported by ``predict``. nnU-Net models have it
    (``medseg.adapters.nnunet.predictor.NnunetPredictor.prepare``).
    """

    labels: LabelTable
    in_channels: int
    device: Any
    inference: dict
    preprocessing: dict
    provenance: dict

    def predict(self, source, *, keep_probabilities: bool = False) -> Volume: ...
