"""DICOM image series: header-only scan, geometry planning, series selection, pixels, conversion to volumes.

- ``scan``: walk a folder (any tree, DICOMDIR) reading headers only -> series.
- ``geometry``: plan each series into regular stacks (spacing, tilt, gaps, orientation), every decision recorded.
- ``select``: the rule that picks the series to segment (modality, slices, description).
- ``pixels``: a planned stack's pixel data -> array (rescale, bounded memory).
- ``series``: folder -> inventory, stacks and volumes (the entry points ``medseg`` uses).
- ``convert``: DICOM folders -> NIfTI volumes and label maps.
- ``monai_reader``: a MONAI ``ImageReader`` over ``series``.
"""
