"""``medseg`` command line: a thin shell over ``medseg.api``.

The verbs live in ``medseg/commands/`` (one module each). A ``MedsegError``
becomes one line on stderr (``medseg: error: ...``) and its exit code (2);
batch commands exit 1 when some cases failed. Listing commands never build a model.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import warnings


def _quiet_third_party() -> None:
    # MONAI announces optional GPU decoders it cannot find; not the user's concern.
    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*NvImgCodec.*")
    warnings.filterwarnings("ignore", message=".*nvImageCodec.*")


def _one_line(text: str) -> str:
    """Control characters (a newline in a file name) shown escaped, so an error stays one line and forges none."""
    import re

    return re.sub(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]", lambda m: repr(m.group())[1:-1], text)


def build_parser() -> argparse.ArgumentParser:
    from medseg.commands import MODULES

    p = argparse.ArgumentParser(prog="medseg", description="Segment CT/MR volumes and quantify what is found.")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details and tracebacks")
    p.add_argument("--version", action="store_true", help="print the version and exit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name in MODULES:
        importlib.import_module(f"medseg.commands.{name}").add(sub)
    for verb in _verbs(p).values():  # -v after the verb too (medseg predict ... -v); SUPPRESS keeps one given before it
        for parser in [verb, *_verbs(verb).values()]:
            if "--verbose" not in parser._option_string_actions:
                parser.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                                    help="log progress details and tracebacks")
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
        inner = _verbs(verb).get(next((getattr(args, k) for k in vars(args) if k.endswith("_command")), "") or "") if verb else None
        (inner or verb or parser).error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    from medseg.command_log import ConsoleFilter
    from medseg.errors import MedsegError

    parser = build_parser()
    args = _parse(parser, argv)
    if args.version:
        import medseg

        print(medseg.__version__)
        return 0
    if not args.command:
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="medseg: %(levelname)s: %(message)s")
    logging.captureWarnings(True)  # library warnings become log records: the log files keep them, the console not
    for handler in logging.getLogger().handlers:  # the console's level; log files beside outputs take INFO lines
        if type(handler) is not logging.StreamHandler:  # the console only (not a test harness's capture)
            continue
        handler.setLevel(logging.INFO if args.verbose else logging.WARNING)
        if not args.verbose and not any(isinstance(f, ConsoleFilter) for f in handler.filters):
            handler.addFilter(ConsoleFilter())
    # A log line that cannot be written (disk full under run.log) is dropped, not printed as a traceback.
    logging.raiseExceptions = False
    _quiet_third_party()
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
