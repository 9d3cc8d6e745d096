"""CLI verbs, one module per verb group; each exposes ``add(subparsers)``.

A module registers its parser(s) with ``set_defaults(func=...)``; the function takes the parsed args, makes one
call into ``medseg.api`` (imported at the module's top) and returns an exit code. ``medseg.cli.VERBS`` names each
verb's module, imported only when that verb runs, so ``medseg --help`` stays fast.
To add a verb: write ``medseg/commands/<name>.py`` and list its verbs in ``medseg.cli.VERBS``.
"""

#: ``--no-progress`` of the verbs that print a plain line now and then when the bars are off.
NO_PROGRESS_HELP = "no progress bars (a plain line now and then is still printed)"


def from_args(args, names: str) -> dict:
    """``{name: args.<name>}`` for the space-separated ``names``: the options a verb hands to ``medseg.api`` as
    they are parsed."""
    return {name: getattr(args, name) for name in names.split()}


def add_flags(parser, flags: dict[str, str]) -> None:
    """``store_true`` options, in order: ``{"--flag": help}``."""
    for flag, help_text in flags.items():
        parser.add_argument(flag, action="store_true", help=help_text)


def add_grid_policy(parser) -> None:
    """``--resample-irregular`` and ``--refuse-tilt``: what becomes of DICOM series whose slices are not a regular,
    orthogonal stack (``medseg dicom scan``, ``medseg convert``, ``medseg predict``)."""
    add_flags(
        parser,
        {
            "--resample-irregular": "interpolate series with missing slices or uneven spacing onto a regular grid "
            "(default: refuse)",
            "--refuse-tilt": "refuse gantry-tilted series (default: resample them onto an orthogonal grid)",
        },
    )
