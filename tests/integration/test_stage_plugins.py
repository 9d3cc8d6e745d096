"""A pipeline stage from a plugin: one registered class, checked like the built-ins, run on every segmented case."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
from helpers import label_coded

from medseg.cli import main
from medseg.data.phantoms import PhantomCase, make_phantom
from medseg.errors import ConfigError
from medseg.io.readers import write_volume
from medseg.runner.settings import STAGE_TYPES, Stage, pipeline_from_dict, register_stage, stage_order


@dataclass
class CountSettings:
    min_voxels: int = 1  # structures with fewer voxels are not counted


class CountStructures(Stage):
    """Count the structures present (a test plugin)."""

    name = "count_structures"
    settings = CountSettings
    rank = 90

    def run_case(self, settings, *, case_id, labels, image, table, case_dir):
        counts = {lab.name: int((labels.array == lab.index).sum()) for lab in table.labels}
        path = case_dir / "count.json"
        path.write_text(json.dumps({k: v for k, v in counts.items() if v >= settings.min_voxels}))
        return {"counts": path}


@pytest.fixture
def plugin_stage():
    register_stage(CountStructures)
    yield CountStructures.name
    STAGE_TYPES.unregister(CountStructures.name)


def test_builtin_order_and_unknown_stage_names():
    assert stage_order()[:8] == ["scan", "select", "convert", "plan", "train", "predict", "evaluate", "report"]
    with pytest.raises(ConfigError, match="unknown stage 'reprot'; did you mean 'report'"):
        pipeline_from_dict({"stages": {"reprot": {}}})


def test_a_plugin_stage_is_checked_and_runs_on_each_case(plugin_stage, oracle_checkpoint, tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'min_voxel'"):
        pipeline_from_dict({"stages": {"predict": {"model": str(oracle_checkpoint)}, plugin_stage: {"min_voxel": 3}}})
    with pytest.raises(ConfigError, match="need a 'predict' stage"):
        pipeline_from_dict({"stages": {plugin_stage: {}}})
    cases = tmp_path / "cases"
    for i in range(2):
        ph = make_phantom(300 + i, case_id=f"c{i}", spacing=(4.0, 4.0, 6.0), noise_hu=0)
        write_volume(label_coded(PhantomCase(ph.case_id, ph.image, ph.labels, ph.voxel_counts)), cases / f"c{i}.nii.gz")
    pipe = tmp_path / "p.yaml"
    pipe.write_text(
        f"name: counting\nstages:\n  predict: {{model: {oracle_checkpoint}}}\n  {plugin_stage}: {{min_voxels: 1}}\n"
    )
    assert main(["run", str(pipe), "--input", str(cases), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    for i in range(2):
        rec = json.loads((tmp_path / "run" / "state" / f"c{i}.json").read_text())
        counts = json.loads((tmp_path / "run" / rec["outputs"]["count_structures.counts"]).read_text())
        labels = np.asarray(__import__("nibabel").load(str(tmp_path / "run" / rec["outputs"]["labels"])).dataobj)
        assert counts == {k: int(v) for k, v in counts.items()} and sum(counts.values()) == int((labels > 0).sum())
