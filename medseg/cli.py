"""``medseg`` command line: a thin shell over ``medseg.api``.

The verbs live in ``medseg/commands/`` (one module per verb group), listed in ``VERBS`` below. A ``MedsegError``
becomes one line on stderr (``medseg: error: ...``) and its exit code (2); batch commands exit 1 when some cases
failed. Listing commands never build a model.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import re
import sys
import warnings
from typing import NamedTuple

import medseg
from medseg.command_log import ConsoleFilter
from medseg.errors import MedsegError


class Verb(NamedTuple):
    module: str  # medseg.commands.<module>; one module may hold several verbs (dicom + convert)
    help: str  # the one line ``medseg --help`` shows; the module's add_parser(help=...) says the same (a test checks)


#: Every verb, in ``medseg --help`` order. This table and ``medseg.api.NAMES`` are medseg's two lazy imports of its own
#: package: ``import medseg.cli`` and ``medseg --help`` read only this table (fast, no torch); the module of a verb is
#: imported (``importlib``) only when that verb runs or its ``--help`` is asked. A command module imports ``medseg.api``
#: (a name table, light) at its top, so ``medseg predict --help`` loads no torch either; the verb's API module
#: (``medseg.api.predicting``: inference, MONAI, torch) loads when the command calls it. To add a verb: write
#: ``medseg/commands/<module>.py`` and list it here.
VERBS: dict[str, Verb] = {
    "models": Verb("models", "list registered models (builds none), or import a model folder of another tool"),
    "phantoms": Verb("phantoms", "write synthetic CT phantoms with exact truth and a manifest"),
    "dicom": Verb("dicom", "inspect DICOM folders"),
    "convert": Verb("dicom", "write each image series of a DICOM folder as NIfTI + JSON sidecar"),
    "manifest": Verb("manifest", "make data manifests"),
    "plan": Verb("plan", "derive a training config (spacing, patch size, intensity scheme) from a manifest's data"),
    "train": Verb("train", "train a model from a config and a data manifest"),
    "predict": Verb("predict", "segment images or DICOM folders; outputs sit on each input's grid"),
    "report": Verb(
        "report", "volumes.csv, cohort tables, QC montages and report.html from label maps (no model needed)"
    ),
    "evaluate": Verb(
        "report", "Dice, IoU, HD95, ASSD, NSD and volume error against reference label maps (metrics.csv)"
    ),
    "run": Verb("run", "run a pipeline (pipelines/*.yaml) over a folder or manifest; resumable"),
    "listen": Verb("listen", "receive DICOM studies (C-STORE SCP) and run a pipeline on each complete study"),
    "demo": Verb("demo", "train on phantoms, segment DICOM phantoms, report (about 5 minutes on 2 CPU cores)"),
}


def _quiet_third_party() -> None:
    # MONAI announces optional GPU decoders it cannot find; not the user's concern.
    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*NvImgCodec.*")
    warnings.filterwarnings("ignore", message=".*nvImageCodec.*")


def _one_line(text: str) -> str:
    """Control characters (a newline in a file name) shown escaped, so an error stays one line and forges none."""
    return re.sub(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]", lambda m: repr(m.group())[1:-1], text)


def _verb_in(argv: list[str]) -> str | None:
    """The verb ``argv`` names: its first word that is not an option (no top-level option takes a value)."""
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(verbs=None) -> argparse.ArgumentParser:
    """The parser; ``verbs`` (default: all) are built in full from their modules, the others only named with their
    help."""
    modules = {VERBS[v].module for v in (VERBS if verbs is None else verbs) if v in VERBS}
    p = argparse.ArgumentParser(prog="medseg", description="Segment CT/MR volumes and quantify what is found.")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details and tracebacks")
    p.add_argument("--version", action="store_true", help="print the version and exit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, verb in VERBS.items():
        if name in sub.choices:  # added with an earlier verb of its module
            continue
        if verb.module in modules:
            importlib.import_module(f"medseg.commands.{verb.module}").add(sub)
        else:
            sub.add_parser(name, help=verb.help)
    for verb_parser in _verbs(
        p
    ).values():  # -v after the verb too (medseg predict ... -v); SUPPRESS keeps one given before it
        for parser in [verb_parser, *_verbs(verb_parser).values()]:
            if "--verbose" not in parser._option_string_actions:
                parser.add_argument(
                    "-v",
                    "--verbose",
                    action="store_true",
                    default=argparse.SUPPRESS,
                    help="log progress details and tracebacks",
                )
    return p


def _verbs(parser: argparse.ArgumentParser) -> dict:
    """The sub-command parsers of ``parser`` by name (empty when it has none)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _parse(parser: argparse.ArgumentParser, argv):
    """Parse; an argument the verb does not take is reported with the verb's usage, not the top-level one."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        verb = _verbs(parser).get(getattr(args, "command", None) or "")
        inner = (
            _verbs(verb).get(next((getattr(args, k) for k in vars(args) if k.endswith("_command")), "") or "")
            if verb
            else None
        )
        (inner or verb or parser).error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="medseg: %(levelname)s: %(message)s")
    logging.captureWarnings(True)  # library warnings become log records: the log files keep them, the console not
    for handler in logging.getLogger().handlers:  # the console's level; log files beside outputs take INFO lines
        if type(handler) is not logging.StreamHandler:  # the console only (not a test harness's capture)
            continue
        handler.setLevel(logging.INFO if verbose else logging.WARNING)
        if not verbose and not any(isinstance(f, ConsoleFilter) for f in handler.filters):
            handler.addFilter(ConsoleFilter())
    # A log line that cannot be written (disk full under run.log) is dropped, not printed as a traceback.
    logging.raiseExceptions = False
    _quiet_third_party()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    verb = _verb_in(argv)
    parser = build_parser([verb] if verb else [])
    args = _parse(parser, argv)
    if args.version:
        print(medseg.__version__)
        return 0
    if not args.command:
        parser.print_help()
        return 2
    _configure_logging(args.verbose)
    try:
        return args.func(args)
    except MedsegError as exc:
        if args.verbose:
            logging.exception("details")
        print(f"medseg: error: {_one_line(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("medseg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
