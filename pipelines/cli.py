"""The `ugpnet` command. Each verb lives in its own module and registers its sub-parser here.

Heavy imports (torch, Ray, MLflow) happen inside the verb that needs them, so `ugpnet --help`
and config validation stay fast.
"""

import argparse
import logging
import sys
import traceback

from pipelines import demo
from pipelines import models_cli as model_commands
from pipelines.archive import run as archive
from pipelines.common import logs
from pipelines.common.redaction import redact
from pipelines.data import prepare as data_prepare
from pipelines.evaluate import run as evaluate
from pipelines.registry import run as registry_commands
from pipelines.restore import run as restore
from pipelines.train import run as train

VERB_MODULES = [model_commands, registry_commands, restore, archive, train, evaluate, demo, data_prepare]


class VerbParser(argparse.ArgumentParser):
    """Every parser of the CLI: the top-level one and, as argparse makes sub-parsers of their parent's
    class, every verb's. So the options common to all verbs are defined here, once, and may be given
    before or after the verb."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        logs.add_option(self)


def build_parser() -> argparse.ArgumentParser:
    parser = VerbParser(prog="ugpnet", description="UGPNet image restoration at archive scale")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for module in VERB_MODULES:
        module.add_parsers(sub)
    return parser


class CommandError(Exception):
    """A user-facing failure: printed without a traceback, exit status 2."""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # The format is known before the full parse, so that a usage error is a JSON line too.
    with logs.driver_output(logs.requested_format(argv)):
        args = build_parser().parse_args(argv)
        logs.bind(verb=verb_of(args))
        return run_verb(args)


def verb_of(args) -> str:
    """The verb as typed: `restore`, `models promote`, `data prepare`."""
    actions = [value for name, value in sorted(vars(args).items()) if name.endswith("_verb") and value]
    return " ".join([args.verb, *actions])


def run_verb(args) -> int:
    try:
        return int(args.handler(args) or 0)
    except (CommandError, ValueError, FileNotFoundError) as exc:
        logs.emit(f"ugpnet {args.verb}: error: {redact(str(exc))}", level=logging.ERROR, stream="stderr")
        return 2
    except Exception as exc:  # unexpected: the traceback, as Python prints it, minus credentials
        # (MLflow, for one, quotes the whole tracking URI, `https://user:token@host`, in its errors).
        print(redact("".join(traceback.format_exception(exc))), file=sys.stderr, end="")
        return 1


if __name__ == "__main__":
    sys.exit(main())
