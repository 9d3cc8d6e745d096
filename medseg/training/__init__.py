"""Training from a data manifest: ``medseg.training.trainer`` (``Trainer``, ``train``, ``train_from_files``)."""
