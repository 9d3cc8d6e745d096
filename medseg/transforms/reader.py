"""Training reads images the way inference does: a MONAI ``ImageReader`` over ``medseg.io.readers.read_volume``.

NIfTI, NRRD and MetaImage (``.mha``/``.mhd``) files give the same array (voxel order of the
file) and RAS affine as ``medseg predict`` reads them, with the same hardening (headers whose
claimed size is not backed by the file, NIfTI units other than mm). Arrays come as float32,
as MONAI's ``NibabelReader`` gives them, so NIfTI data train exactly as before.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from monai.data import ImageReader
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple

from medseg.errors import InputError
from medseg.io.readers import ITK_SUFFIXES, NIFTI_SUFFIXES, read_volume


class VolumeReader(ImageReader):
    """``LoadImaged(reader=VolumeReader())``: one 3D file per key."""

    def verify_suffix(self, filename) -> bool:
        return all(Path(str(f)).name.lower().endswith(NIFTI_SUFFIXES + ITK_SUFFIXES) for f in ensure_tuple(filename))

    def read(self, data, **kwargs):
        files = ensure_tuple(data)
        if len(files) != 1:
            raise InputError(f"expected one image file per key, got {len(files)}", path=str(files[0]))
        return read_volume(files[0])

    def get_data(self, img) -> tuple[np.ndarray, dict]:
        meta = {
            MetaKeys.AFFINE: img.affine.copy(),
            MetaKeys.ORIGINAL_AFFINE: img.affine.copy(),
            MetaKeys.SPATIAL_SHAPE: np.asarray(img.array.shape),
            MetaKeys.SPACE: SpaceKeys.RAS,
            MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan"),  # one 3D volume: no channel axis
        }
        return np.asarray(img.array, dtype=np.float32), meta
