"""Small data sets for training tests: tiny volumes, a tiny network, a few epochs."""

import numpy as np
import pytest

TINY_MODEL = {"name": "unet", "spatial_dims": 3, "kwargs": {"channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 0}}


def tiny_config(**training) -> dict:
    return {
        "labels": "abdomen_phantom",
        "model": TINY_MODEL,
        "preprocessing": {"spacing": [6.0, 6.0, 6.0], "crop_margin": 2},
        "training": {"epochs": 3, "val_every": 1, "patch_size": [32, 32, 16], "batch_size": 2, "samples_per_image": 1, "amp": "off", **training},
        "inference": {"roi_size": [32, 32, 16], "sw_batch_size": 2},
    }


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory):
    """Four coarse phantoms (NIfTI) and their manifest; the 4th is split=val."""
    import pandas as pd

    from medseg.io.readers import write_label_map, write_volume
    from medseg.phantoms import make_phantom

    root = tmp_path_factory.mktemp("tiny_cohort")
    rows = []
    for i in range(4):
        case = make_phantom(700 + i, spacing=(3.0, 3.0, 5.0), fov_mm=(240, 180, 136))
        write_volume(case.image, root / f"img_{i}.nii.gz", dtype=np.int16)
        write_label_map(case.labels, root / f"lab_{i}.nii.gz")
        rows.append({"case_id": f"c{i}", "image": f"img_{i}.nii.gz", "label": f"lab_{i}.nii.gz", "split": "val" if i == 3 else "train", "fold": str(i % 2)})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root / "manifest.csv"


@pytest.fixture
def write_config(tmp_path):
    import yaml

    def _write(**training):
        p = tmp_path / "config.yaml"
        p.write_text(yaml.safe_dump(tiny_config(**training)))
        return p

    return _write
