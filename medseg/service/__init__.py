"""Long-running services: ``listen`` (a DICOM receiving node that segments the studies it is sent)."""
