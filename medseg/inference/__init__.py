"""Inference: sliding-window scores and the Predictor that maps them back onto the input grid."""

from __future__ import annotations


def __getattr__(name):  # lazy: importing medseg.inference does not import torch
    if name == "Predictor":
        from medseg.inference.predictor import Predictor

        return Predictor
    raise AttributeError(name)


__all__ = ["Predictor"]
