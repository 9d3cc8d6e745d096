"""Data sets: manifests, imports from other layouts, DICOM manifests, label sources and synthetic phantoms."""
