"""CLI verbs, one module per verb group; each exposes ``add(subparsers)``.

A module registers its parser(s) with ``set_defaults(func=...)``; the function
takes the parsed args and returns an exit code. Modules import heavy packages
(torch, MONAI) inside those functions, so ``medseg --help`` stays fast.
To add a verb: write ``medseg/commands/<name>.py`` and list it in ``MODULES``.
"""

MODULES = ("models", "phantoms", "dicom", "manifest", "plan", "train", "predict", "report", "run", "listen", "demo")
