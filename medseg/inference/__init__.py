"""Inference: sliding-window scores and the Predictor that maps them back onto the input grid.

Modules: ``predictor`` (``Predictor``), ``load`` (which predictor a model path gets), ``sliding_window``,
``labels_from_scores``, ``crf``, ``channels_last``, ``batch`` (``medseg predict``) and ``outputs`` (one case's files).
Importing the package imports none of them (nor torch).
"""
