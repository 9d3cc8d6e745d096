"""Shared fixtures: small phantoms and an 'oracle' checkpoint for geometry tests.

The oracle network reads the label straight from the intensity of a phantom
whose HU encode the label (label * 100 HU, no noise). Any error in orientation,
resampling or the inverse mapping shows up as a lost Dice, and left/right
swaps show up as kidney_right/kidney_left exchanged.
"""

from __future__ import annotations

import warnings

import helpers
import numpy as np
import pytest
from helpers import TINY_MODEL, label_coded, register_oracle, tiny_config  # noqa: F401  (fixtures below use them)

warnings.filterwarnings("ignore", message=".*nvImageCodec.*")

# --- markers for what a test needs (declared in pyproject.toml; pytest runs with --strict-markers) ---
# A test is marked from the fixtures it asks for and the folder it lives in, so a new test that uses the
# ``orthanc`` fixture is ``needs_orthanc`` without anyone remembering to say so:
#   pytest -m "not needs_orthanc"          everything but the tests that start Orthanc
#   pytest -m "not slow and not needs_nnunet"
NEEDS_BY_FIXTURE = {
    "orthanc": "needs_orthanc",
    "orthanc_factory": "needs_orthanc",
    "nnunet_model": "needs_nnunet",
    "nnunet_mr_model": "needs_nnunet",
}
NEEDS_BY_FOLDER = {"external": "needs_nnunet"}
# Tests needing a program rather than a fixture (Chromium, dcmtk, Ray) carry their marker explicitly.


def pytest_collection_modifyitems(config, items):
    for item in items:
        needs = {NEEDS_BY_FIXTURE[f] for f in getattr(item, "fixturenames", ()) if f in NEEDS_BY_FIXTURE}
        folder = item.path.parent.name
        if folder in NEEDS_BY_FOLDER:
            needs.add(NEEDS_BY_FOLDER[folder])
        for marker in sorted(needs):
            item.add_marker(getattr(pytest.mark, marker))


def _registered() -> dict:
    from medseg.models import MODELS
    from medseg.runner.settings import STAGE_TYPES
    from medseg.training.losses import LOSSES
    from medseg.transforms.intensity import INTENSITY

    return {
        "model": set(MODELS.names()),
        "intensity scheme": set(INTENSITY.names()),
        "stage": set(STAGE_TYPES.names()),
        "loss": set(LOSSES.names()),
    }


@pytest.fixture(autouse=True)
def _no_registrations_left_behind():
    """A test that registers a model or scheme must remove it (the session's oracle model excepted)."""
    before = _registered()
    yield
    after = _registered()
    left = {k: sorted(after[k] - before[k] - {"test_intensity_oracle"}) for k in after}
    assert not any(left.values()), f"registrations left behind by this test: {left}"


@pytest.fixture(scope="session", autouse=True)
def _oracle_registered_for_the_session():
    register_oracle()
    yield
    from medseg.models import MODELS

    MODELS.unregister("test_intensity_oracle")


@pytest.fixture(scope="session")
def oracle_checkpoint(tmp_path_factory):
    """The intensity oracle on a 2 mm grid (``helpers.oracle_checkpoint``), saved once a session."""
    return helpers.oracle_checkpoint(tmp_path_factory.mktemp("oracle") / "oracle.pt")


@pytest.fixture(scope="session")
def coarse_phantom():
    """A phantom on a coarse grid (fast), with flips on two axes."""
    from medseg.data.phantoms import make_phantom

    return make_phantom(11, spacing=(1.6, 1.6, 4.0), flips=(True, False, True))


# --- small data sets for training tests: tiny volumes, a tiny network, a few epochs ---


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory):
    """Four coarse phantoms (NIfTI) and their manifest; the 4th is split=val."""
    import pandas as pd

    from medseg.data.phantoms import make_phantom
    from medseg.io.readers import write_label_map, write_volume

    root = tmp_path_factory.mktemp("tiny_cohort")
    rows = []
    for i in range(4):
        case = make_phantom(700 + i, spacing=(3.0, 3.0, 5.0), fov_mm=(240, 180, 136))
        write_volume(case.image, root / f"img_{i}.nii.gz", dtype=np.int16)
        write_label_map(case.labels, root / f"lab_{i}.nii.gz")
        rows.append(
            {
                "case_id": f"c{i}",
                "image": f"img_{i}.nii.gz",
                "label": f"lab_{i}.nii.gz",
                "split": "val" if i == 3 else "train",
                "fold": str(i % 2),
            }
        )
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
