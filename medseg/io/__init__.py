"""Reading and writing volumes: NIfTI/NRRD/MHA files and DICOM series."""

from medseg.io.readers import read_volume, write_label_map, write_volume
from medseg.io.volume import Volume

__all__ = ["Volume", "read_volume", "write_volume", "write_label_map"]
