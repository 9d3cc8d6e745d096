"""The documented, keyword-only functions users call; the CLI is a thin shell over these.

- ``train(config=, manifest=, out=)``               -> a run directory with ``best.pt``
- ``predict(model=, inputs=, out=)``                -> one label map (+ JSON sidecar) per input
- ``report(labels=, out=, images=, label_table=)``  -> ``volumes.csv``
- ``evaluate(pred=, ref=, out=, label_table=)``     -> ``metrics.csv``
- ``plan(manifest=, out=)``                         -> a training config with the data set's label table
- ``run(pipeline=, input=, out=)``                  -> a resumable batch run directory
- ``listen(ae_title=, port=, pipeline=, out=)``    -> a DICOM receiving node: each received study run through the
  pipeline
- ``scan_dicom(folder=, out=)``, ``convert_dicom(folder=, out=)`` -> DICOM inventory / NIfTI + sidecars
- ``import_dataset(folder=, out=)``                 -> manifest + label table from an nnU-Net/Decathlon folder
- ``phantoms(out=, n=)``, ``demo(out=)``, ``list_models()``, ``model_info(name)``

Errors in the user's input raise ``medseg.MedsegError`` subclasses with a
one-line message naming the file. Each function delegates to the stage's own
module (``training.trainer``, ``inference.batch``, ``reporting.report``).

``from medseg import api; api.predict(...)`` and ``from medseg.api import predict`` work as they always did, but
the functions live in one module per verb (``medseg/api/predicting.py``, ``training.py``...), listed in ``NAMES``
below: ``import medseg.api`` imports none of them, and the first use of a name imports its module only (PEP 562
``__getattr__``). So ``medseg predict`` loads the inference stack and the model formats, not training, the
runner, reporting or PACS (``import medseg.api`` alone took 6 s and 474 MB when it imported every verb's stack).
This table is, with ``medseg.cli.VERBS``, one of medseg's two lazy imports of its own package; the verb modules
themselves import what they use at their top. To add a function: define it in its verb's module and list it here.
"""

from __future__ import annotations

import importlib

#: Every public name of the API -> the module under ``medseg/api/`` that defines it (imported on first use).
NAMES: dict[str, str] = {
    "predict": "predicting",
    "PredictOptions": "predicting",
    "PredictResult": "predicting",
    "train": "training",
    "plan": "training",
    "report": "reporting",
    "evaluate": "reporting",
    "dice_summary": "reporting",
    "run": "pipelines",
    "listen": "pipelines",
    "scan_dicom": "dicom",
    "convert_dicom": "dicom",
    "import_dicom": "dicom",
    "import_dataset": "datasets",
    "phantoms": "datasets",
    "demo": "demos",
    "DEMO_CONFIG": "demos",
    "DEMO_PARTS": "demos",
    "DEMO_MARKER": "demos",
    "DEMO_DONE": "demos",
    "list_models": "catalog",
    "model_info": "catalog",
    "failed_plugins": "catalog",
    "import_model": "catalog",
}
#: Helpers of the demo that its tests call (not part of the documented API).
_INTERNAL = {"_prepare_demo": "demos"}

__all__ = sorted(NAMES)


def __getattr__(name: str):
    module = NAMES.get(name) or _INTERNAL.get(name)
    if module is None:
        raise AttributeError(f"module 'medseg.api' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"medseg.api.{module}"), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *NAMES})
