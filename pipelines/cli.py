"""The `ugpnet` command. Each verb lives in its own module and registers its sub-parser here.

Heavy imports (torch, Ray, MLflow) happen inside the verb that needs them, so `ugpnet --help`
and config validation stay fast.
"""

import argparse
import sys

from pipelines import archive, data_prepare, demo, evaluate, model_commands, registry_commands, restore, train
from pipelines.redaction import redact

VERB_MODULES = [model_commands, registry_commands, restore, archive, train, evaluate, demo, data_prepare]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ugpnet", description="UGPNet image restoration at archive scale")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for module in VERB_MODULES:
        module.add_parsers(sub)
    return parser


class CommandError(Exception):
    """A user-facing failure: printed without a traceback, exit status 2."""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except (CommandError, ValueError, FileNotFoundError) as exc:
        print(f"ugpnet {args.verb}: error: {redact(str(exc))}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
