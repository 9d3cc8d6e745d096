"""Models trained by other tools, run by medseg's predictor (nnU-Net v2 result folders)."""
