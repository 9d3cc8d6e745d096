"""DICOM objects medseg reads and writes: one module per object, reading and writing together.

- ``seg``: DICOM Segmentation (SEG) <-> label maps.
- ``rtstruct``: RT Structure Set <-> label maps (contours in patient coordinates).
- ``sr``: TID 1500 measurement reports (structured reports of volumes and quality verdicts).
- ``contours``, ``roi_names``, ``referenced``, ``label_objects``: what the objects share (polygon rasterising,
  ROI name synonyms, the image instances an object references, the label map a SEG or RTSTRUCT is read into and
  how overlapping structures are resolved).
"""
