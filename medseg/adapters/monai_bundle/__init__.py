"""MONAI bundles: ``bundle`` (read and check the bundle's configs without evaluating code), ``predictor``."""
