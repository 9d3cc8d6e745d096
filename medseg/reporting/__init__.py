"""Reports: per-structure volumes and intensities, and evaluation against a reference."""
