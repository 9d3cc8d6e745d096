"""Small inputs for the benchmarks' ``--smoke`` runs (tests/unit/test_benchmark_scripts.py runs each script that way).

A smoke run takes the same code path as a real run on inputs small enough for seconds: phantoms on a coarse grid
(``make_phantom`` at 4 mm draws a case in a fraction of a second; ``write_cohort``'s sub-millimetre cases take
seconds each), one repetition, a budget of a few steps. Its numbers say only that the script runs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medseg.data.phantoms import PHANTOM_LABELS, make_phantom
from medseg.io.readers import write_label_map, write_volume

#: the coarse grid of the smoke phantoms (mm)
SPACING = (4.0, 4.0, 5.0)


def coarse_cohort(
    out: Path, n_cases: int, *, seed: int = 0, split: str = "train", prefix: str = "phantom", spacing=SPACING
) -> Path:
    """``write_cohort``'s manifest (case_id, image, label, split, true volumes; paths relative to it) and label table
    (``manifest_labels.yaml``) on a coarse grid."""
    import pandas as pd
    import yaml

    out = Path(out)
    rows = []
    for n in range(n_cases):
        case = make_phantom(seed + n, case_id=f"{prefix}_{seed + n:04d}", spacing=spacing)
        img, lab = out / "images" / f"{case.case_id}.nii.gz", out / "labels" / f"{case.case_id}.nii.gz"
        write_volume(case.image, img, dtype=np.int16)
        write_label_map(case.labels, lab)
        rows.append(
            {
                "case_id": case.case_id,
                "image": str(img.relative_to(out)),
                "label": str(lab.relative_to(out)),
                "split": split,
                **{f"true_{k}_ml": v for k, v in case.volumes_ml.items()},
            }
        )
    manifest = out / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    manifest.with_name("manifest_labels.yaml").write_text(yaml.safe_dump(PHANTOM_LABELS.to_dict(), sort_keys=False))
    return manifest
