import pytest
import torch

from medseg.errors import CheckpointError
from medseg.inference.predictor import Predictor
from medseg.labels import Label, LabelTable
from medseg.models.checkpoint import build_model, load_checkpoint


def test_checkpoint_loads_weights_only_with_provenance(oracle_checkpoint):
    ckpt = load_checkpoint(oracle_checkpoint)
    assert ckpt["model"]["name"] == "test_intensity_oracle"
    assert ckpt["labels"]["name"] == "abdomen_phantom"
    assert len(ckpt["file_sha256"]) == 64 and len(ckpt["weights_sha256"]) == 64
    assert set(ckpt["versions"]) >= {"medseg", "monai", "torch"}
    assert build_model(ckpt).training is False


def test_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    bad = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, bad)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_checkpoint(bad)


def test_garbage_and_foreign_files_are_refused(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_checkpoint(junk)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(foreign)


def test_checkpoint_for_another_label_table_is_refused(oracle_checkpoint):
    other = LabelTable("brain", (Label(1, "tumour"),))
    with pytest.raises(CheckpointError, match="tumour"):
        Predictor.from_checkpoint(oracle_checkpoint, expected_labels=other)
