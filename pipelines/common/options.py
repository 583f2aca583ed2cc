"""Options declared once. A verb's config is a dataclass; each field's `option(...)` metadata says its
help, unit, bounds and choices, and its type comes from the annotation. From that one declaration come:

- the verb's flags, each with its default and unit in `--help` (`add_options`);
- `--config FILE` (YAML or JSON, unknown keys refused), `--set KEY=VALUE` (dotted keys reach nested
  mappings) and `--dry-run` for every verb;
- the type, bound and choice checks that name the field (`check_declared`), which each config's own
  `validate` calls before its cross-field checks.

Precedence: defaults ← config file ← flags ← `--set`.
"""

import argparse
import json
import sys
import traceback
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from pipelines.common.config_fields import ConfigError, check_choice, check_integer, check_number, fields_from_mapping


@dataclass(frozen=True)
class Option:
    help: str
    unit: str = ""                      # shown beside the default: "px", "s", "CPUs", "bytes", "fraction"
    choices: tuple = ()                 # accepted values (argparse and config file alike)
    minimum: float | None = None
    maximum: float | None = None
    exclusive: bool = False             # the minimum itself is refused
    flag: str | None = None             # default: --field-name
    default_text: str | None = None     # how --help words the default when the value does not say it
    cli: bool = True                    # False: config file and --set only (mappings, parent-level options)
    positional: bool = False            # `ugpnet models promote NAME`: given without a flag
    repeatable: bool = False            # a list field whose flag may be given several times


def option(default: Any = MISSING, *, factory: Any = MISSING, **declaration) -> Any:
    """A dataclass field carrying its Option; `option()` with no default is a required field."""
    return field(default=default, default_factory=factory, metadata={"option": Option(**declaration)})


def is_required(f) -> bool:
    return f.default is MISSING and f.default_factory is MISSING


def declared(cls) -> list:
    return [f for f in fields(cls) if "option" in f.metadata]


def value_kind(annotation) -> type | None:
    """bool, int, float or str for a plain field (None allowed or not); None for tuples, lists and
    mappings, which the config's own validate parses."""
    members = typing.get_args(annotation) if isinstance(annotation, types.UnionType) or \
        typing.get_origin(annotation) is typing.Union else (annotation,)
    plain = [m for m in members if m is not type(None)]
    if len(plain) == 1 and plain[0] in (bool, int, float, str):
        return plain[0]
    if set(plain) == {int, float}:
        return float
    return None


def allows_none(annotation) -> bool:
    return type(None) in typing.get_args(annotation)


# ---------------------------------------------------------------- flags

def add_options(parser: argparse.ArgumentParser, cls, *, dest_prefix: str = "", only: tuple[str, ...] = (),
                common: bool = True) -> None:
    """One flag per declared field of `cls` (or of `only`), and `--config`, `--set`, `--dry-run`."""
    for f in declared(cls):
        spec = f.metadata["option"]
        if not spec.cli or only and f.name not in only:
            continue
        kind = value_kind(f.type)
        # Choices are listed, not enforced by argparse: validation refuses a bad value naming the field,
        # the same way whether it came from a flag, the config file or --set.
        choices = f"one of {', '.join(map(str, spec.choices))}; " if spec.choices else ""
        text = f"{spec.help} ({choices}{default_phrase(f, spec)})"
        dest = dest_prefix + f.name
        if spec.positional:
            parser.add_argument(dest, nargs="?", default=None, help=text, metavar=f.name.upper())
        elif spec.repeatable:
            parser.add_argument(spec.flag or flag_of(f.name), dest=dest, action="append", default=None, help=text,
                                metavar=f.name.upper())
        elif kind is bool and spec.flag and spec.flag.startswith("--no-"):  # an off-switch alone: --no-register
            parser.add_argument(spec.flag, dest=dest, action="store_false", default=None, help=text)
        elif kind is bool:
            parser.add_argument(spec.flag or flag_of(f.name), dest=dest, action=argparse.BooleanOptionalAction,
                                default=None, help=text)
        else:
            parser.add_argument(spec.flag or flag_of(f.name), dest=dest, default=None, help=text,
                                type=kind if kind in (int, float) else str, metavar=f.name.upper())
    if common:
        add_common_flags(parser)


def add_common_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML or JSON file of the fields above (by their field names); "
                                         "flags given here override it")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="set any field, dotted for nested ones, e.g. --set quality=90 (repeatable; "
                             "applied last)")
    parser.add_argument("--dry-run", action="store_true", help="validate, print the resolved config and exit "
                                                               "without doing any work")


def flag_of(name: str) -> str:
    return "--" + name.replace("_", "-")


def default_phrase(f, spec: Option) -> str:
    if spec.default_text is not None:
        text = spec.default_text
    elif is_required(f):
        return "required" + (f"; unit: {spec.unit}" if spec.unit else "")
    else:
        value = f.default_factory() if f.default is MISSING else f.default
        text = describe_value(value)
    return f"default: {text}" + (f"; unit: {spec.unit}" if spec.unit else "")


def describe_value(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list | tuple):
        return ",".join(str(v).lstrip(".") for v in value) or "none"
    if isinstance(value, dict):
        return "none" if not value else json.dumps(value)
    return str(value) if value != "" else "none"


# ---------------------------------------------------------------- values

def config_values(args: argparse.Namespace, cls, section: str | None = None) -> dict:
    """The mapping a config is built from: the config file, then every flag given, then `--set`."""
    values = load_config_file(args.config, section) if getattr(args, "config", None) else {}
    for name, value in flag_values(args, cls).items():
        head, _, rest = name.partition(".")
        if rest:  # a nested field's flag, e.g. archive's --fit → restore.fit
            values[head] = {**values.get(head, {}), rest: value}
        else:
            values[name] = value
    for text in getattr(args, "overrides", None) or ():
        set_dotted(values, *split_override(text))
    return values


def flag_values(args: argparse.Namespace, cls) -> dict:
    """The flags given on the command line for fields of `cls` (and dotted, nested ones)."""
    names = {f.name for f in fields(cls)}
    return {name: value for name, value in vars(args).items()
            if value is not None and (name in names or "." in name)}


def split_override(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError("set", f"--set {text!r}: expected KEY=VALUE")
    return key.strip(), parse_value(value)


def parse_value(text: str) -> Any:
    """`--set` values are JSON when they parse as JSON (numbers, lists, true, null), else strings."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def set_dotted(values: dict, dotted_key: str, value: Any) -> None:
    node, parts = values, dotted_key.replace("-", "_").split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise ConfigError(dotted_key, f"--set: {part} is not a section of the config")
        else:
            child = node[part] = dict(child)
        node = child
    node[parts[-1]] = value


def load_config_file(path: str, section: str | None = None) -> dict:
    """A YAML or JSON mapping of field names to values; a file holding several verbs' sections
    (`restore:`, `archive:`) gives the one named `section`."""
    import yaml  # JSON is YAML too, but its own parser gives the better message

    file = Path(path)
    if not file.is_file():
        raise ConfigError("config", f"{path} is not a file")
    text = file.read_text()
    try:
        data = json.loads(text) if file.suffix.lower() == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as err:
        raise ConfigError("config", f"{path} is not valid {'JSON' if file.suffix.lower() == '.json' else 'YAML'}: "
                                    f"{err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("config", f"{path} must hold a mapping of field names to values")
    return dict(data[section]) if section and isinstance(data.get(section), dict) else dict(data)


def from_mapping(cls, values: dict):
    """The config, not yet validated: unknown keys and missing required fields are refused, naming them."""
    required = tuple(f.name for f in fields(cls) if is_required(f))
    return cls(**fields_from_mapping(cls, values, required))


def build(cls, values: dict):
    return from_mapping(cls, values).validate()


def config_from_args(args: argparse.Namespace, cls, section: str | None = None):
    """The verb's validated config from its parsed command line."""
    return build(cls, config_values(args, cls, section))


# ---------------------------------------------------------------- checks

def check_declared(config) -> None:
    """Type, bounds and choices of every declared field, as its Option says; raises ConfigError."""
    for f in declared(config):
        spec, value = f.metadata["option"], getattr(config, f.name)
        if value is None and allows_none(f.type):
            continue
        kind = value_kind(f.type)
        if kind is bool and not isinstance(value, bool):
            raise ConfigError(f.name, f"must be true or false, got {value!r}")
        if kind is int:
            check_integer(f.name, value, spec.minimum, spec.maximum)
        elif kind is float:
            check_number(f.name, value, spec.minimum, spec.maximum, spec.exclusive)
        elif kind is str and not isinstance(value, str):
            raise ConfigError(f.name, f"must be a string, got {value!r}")
        if spec.choices:
            check_choice(f.name, value, spec.choices)


def public_dict(config) -> dict:
    """The config as JSON-ready data (tuples as lists), for dry runs and run records."""
    return json.loads(json.dumps(asdict(config), default=str))


class Declared:
    """Base of a config whose checks are all in its declarations; a config with cross-field checks
    overrides `validate` and calls `check_declared` first."""

    def validate(self):
        check_declared(self)
        return self


# ---------------------------------------------------------------- the verb

def handler(cls, run, section: str | None = None):
    """An argparse handler: build and validate the config, print it on `--dry-run`, else run it."""

    def handle(args) -> int:
        config = config_from_args(args, cls, section)  # ConfigError → the CLI exits 2
        if args.dry_run:
            print(json.dumps(public_dict(config), indent=2))
            return 0
        return run(config)

    return handle


def add_verb(sub, name: str, cls, run, *, help: str, description: str | None = None, section: str | None = None,
             common: bool = True) -> argparse.ArgumentParser:
    """A verb's sub-parser: its declared options (and, with `common`, --config, --set, --dry-run), and
    the handler that builds its config and runs it."""
    parser = sub.add_parser(name, help=help, description=description)
    add_options(parser, cls, common=common)
    parser.set_defaults(handler=handler(cls, run, section))
    return parser


def guarded(verb: str, run):
    """`run`, with an unexpected failure printed as its traceback and `ugpnet VERB: run failed: …`, exit
    status 1 (the run itself failed); a ConfigError still reaches the CLI, which exits 2."""

    def run_guarded(config) -> int:
        try:
            return run(config)
        except ConfigError:
            raise
        except Exception as err:
            traceback.print_exc()
            print(f"ugpnet {verb}: run failed: {err}", file=sys.stderr)
            return 1

    return run_guarded
