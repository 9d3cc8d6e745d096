"""nnU-Net v2 trained-model folders: ``folder`` (read plans, dataset.json, checkpoints without running code),
``inference`` (nnU-Net's preprocessing and export step for step), ``predictor`` (the adapter)."""
