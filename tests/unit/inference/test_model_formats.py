"""The registry of model formats in ``medseg.inference.load``: what the adapters plug into."""

from __future__ import annotations

import subprocess
import sys

from medseg.inference import load
from medseg.inference.protocol import Predictor


class _FakePredictor:
    labels = None
    in_channels = 1
    device = "cpu"
    inference: dict = {}
    preprocessing: dict = {}
    provenance = {"model_path": "fake"}

    def __init__(self, path, options):
        self.path, self.options = path, options

    def predict(self, source, *, keep_probabilities: bool = False):
        raise NotImplementedError


def test_a_registered_format_is_found_by_load_predictor(tmp_path):
    folder = tmp_path / "fake_model"
    folder.mkdir()
    (folder / "fake.marker").write_text("x")
    seen = {}

    def loader(path, *, device, progress, folds, checkpoint, expected_labels, **options):
        seen.update(device=device, folds=folds, checkpoint=checkpoint)
        return _FakePredictor(path, options)

    fmt = load.ModelFormat(
        "fake", lambda p: (p / "fake.marker").is_file(), loader, lambda p: {"path": str(p), "model": {"name": "fake"}}
    )
    load.register_format(fmt)
    try:
        assert load.detect(folder) is fmt and load.is_external_model(folder)
        assert not load.is_external_model(tmp_path / "missing")
        pred = load.load_predictor(folder, device="cpu", overlap=0.3)
        assert isinstance(pred, _FakePredictor) and isinstance(pred, Predictor)
        assert pred.path == folder and pred.options == {"overlap": 0.3}
        assert seen == {"device": "cpu", "folds": None, "checkpoint": "final"}
        assert load.run_summary(folder)["model"] == {"name": "fake"}
        load.register_format(fmt)  # again: replaced in place, not listed twice
        assert [f.name for f in load.model_formats()].count("fake") == 1
    finally:
        load.unregister_format("fake")
    assert load.detect(folder) is None


def test_importing_the_adapters_registers_their_formats_in_order():
    import medseg.adapters  # noqa: F401

    names = [f.name for f in load.model_formats() if f.name != "medseg_cascade"]  # inference's own, registered first
    assert names[:4] == ["monai_bundle", "totalsegmentator", "nnunet", "medseg_import"]
    assert load.model_formats()[0].name == "medseg_cascade"


def test_inference_imports_no_adapter():
    code = (
        "import sys, medseg.inference.load, medseg.inference.batch; "
        "bad = sorted(m for m in sys.modules if m.startswith('medseg.adapters')); assert not bad, bad"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
