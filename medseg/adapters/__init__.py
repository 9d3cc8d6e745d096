"""Models trained by other tools (nnU-Net, TotalSegmentator, MONAI bundles, portable files) run by medseg.

``formats`` is the table of folder formats; each adapter module registers nothing at import time and is
imported only when a folder of its format is used. Adapters sit above ``models`` and ``inference``:
``inference`` never imports ``adapters``.
"""
