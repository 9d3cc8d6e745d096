"""Preprocessing shared by training and inference.

``spatial.py`` holds the array operations (resampling to a target spacing and
its exact inverse); ``presets.py`` builds the MONAI Compose pipelines for
training and validation from a ``PreprocessingConfig``; ``inference.py`` applies
the same steps to one volume and undoes them, in named reverse order.
"""
