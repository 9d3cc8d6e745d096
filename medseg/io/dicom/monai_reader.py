"""medseg's DICOM reader as a MONAI ``ImageReader``.

``LoadImage``/``LoadImaged`` then read a DICOM folder exactly as
``medseg.io.read_volume`` does (same series selection, geometry checks and
RAS affine), so transform pipelines need not care whether a case is NIfTI or
DICOM::

    from medseg.io.dicom.monai_reader import MedsegDicomReader, register_with_monai
    LoadImaged(keys="image", reader=MedsegDicomReader())   # explicit
    register_with_monai(); LoadImaged(keys="image")        # auto-selected for DICOM folders
    LoadImaged(keys="image", reader="medseg.io.dicom.monai_reader.MedsegDicomReader")  # by dotted name

Only folders (and DICOMDIR files) are claimed (``verify_suffix``); other files go to MONAI's own readers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from monai.data.image_reader import ImageReader
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple

from medseg.io.dicom.series import is_dicom_folder, read_dicom_series

READER_KEY = "medsegdicomreader"


class MedsegDicomReader(ImageReader):
    """Read a DICOM folder into a (columns, rows, slices) array with a RAS affine."""

    def __init__(self, rule=None, policy=None, **_ignored):
        super().__init__()
        self.rule, self.policy = rule, policy

    def verify_suffix(self, filename) -> bool:
        names = ensure_tuple(filename)
        return bool(names) and all(is_dicom_folder(Path(str(f))) for f in names)  # a DICOM folder or a DICOMDIR file

    def read(self, data, **kwargs):
        vols = [read_dicom_series(Path(str(f)), rule=self.rule, policy=self.policy) for f in ensure_tuple(data)]
        return vols if len(vols) > 1 else vols[0]

    def get_data(self, img):
        vols = list(img) if isinstance(img, list | tuple) else [img]
        arrays, meta = [], {}
        for vol in vols:
            arrays.append(np.asarray(vol.array))
            if not meta:
                meta = {
                    MetaKeys.AFFINE: vol.affine.copy(),
                    MetaKeys.ORIGINAL_AFFINE: vol.affine.copy(),
                    MetaKeys.SPATIAL_SHAPE: np.asarray(vol.shape),
                    MetaKeys.SPACE: SpaceKeys.RAS,
                    MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan"),
                    "modality": vol.meta.get("modality", ""),
                    "dicom_series_key": vol.meta.get("dicom", {}).get("key", ""),
                    "dicom_findings": "; ".join(
                        f"{f['kind']}: {f['action']}" for f in vol.meta.get("dicom", {}).get("findings", [])
                    ),
                }
        if len(arrays) > 1:
            meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = 0
            return np.stack(arrays, axis=0), meta
        return arrays[0], meta


def register_with_monai() -> None:
    """Add the reader to MONAI's ``SUPPORTED_READERS`` so ``LoadImage()`` picks it for DICOM folders."""
    from monai.transforms.io.array import SUPPORTED_READERS

    SUPPORTED_READERS[READER_KEY] = MedsegDicomReader
