"""Training from a data manifest: ``medseg.training.loop.train``."""
