"""CLI verbs, one module per verb group; each exposes ``add(subparsers)``.

A module registers its parser(s) with ``set_defaults(func=...)``; the function takes the parsed args, makes one
call into ``medseg.api`` (imported at the module's top) and returns an exit code. ``medseg.cli.VERBS`` names each
verb's module, imported only when that verb runs, so ``medseg --help`` stays fast.
To add a verb: write ``medseg/commands/<name>.py`` and list its verbs in ``medseg.cli.VERBS``.
"""
