"""The `ugpnet` command. Each verb lives in its own module and registers its sub-parser here.

Heavy imports (torch, Ray, MLflow) happen inside the verb that needs them, so `ugpnet --help`
and config validation stay fast.
"""

import argparse
import sys
import traceback

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
    except Exception as exc:  # unexpected: the traceback, as Python prints it, minus credentials
        # (MLflow, for one, quotes the whole tracking URI, `https://user:token@host`, in its errors).
        print(redact("".join(traceback.format_exception(exc))), file=sys.stderr, end="")
        return 1


if __name__ == "__main__":
    sys.exit(main())
