"""Models trained by other tools (nnU-Net, TotalSegmentator, MONAI bundles, portable files) run by medseg.

Importing this package registers their formats with ``medseg.inference.load`` (``formats.FORMATS``), so
that ``load_predictor`` and ``medseg run`` recognise their folders. Adapters sit above ``models`` and
``inference``: ``inference`` never imports ``adapters``; each adapter is a ``Predictor``
(``medseg.inference.protocol``) composed of inference's public pieces, with its own typed options.
"""

from medseg.adapters.formats import FORMATS, register_formats

register_formats()

__all__ = ["FORMATS", "register_formats"]
