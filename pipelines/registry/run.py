"""`ugpnet models …`: list registered versions, register a bundle, promote behind a metric gate."""

from dataclasses import dataclass

from pipelines.common import options
from pipelines.common import shared_options as common_options
from pipelines.common.config_fields import ConfigError
from pipelines.common.options import check_declared, option
from pipelines.common.tracking import use_tracking


@dataclass
class ModelsOptions:
    """Given before the action: `ugpnet models --tracking-uri URI list`."""

    tracking_uri: str | None = common_options.tracking_uri()


@dataclass
class ListConfig(options.Declared):
    name: str | None = option(None, default_text="all", help="only this registered model")
    tracking_uri: str | None = common_options.tracking_uri(cli=False)


@dataclass
class RegisterBundleConfig(options.Declared):
    bundle: str = option(positional=True, help="bundle directory (model.safetensors + ugpnet.json)")
    name: str | None = option(None, default_text="ugpnet-<task>", help="registered model name")
    alias: str = option("candidate", help="alias to set on the new version")
    experiment: str = common_options.experiment("ugpnet-bundles")
    tracking_uri: str | None = common_options.tracking_uri(cli=False)


@dataclass
class PromoteConfig:
    name: str = option(positional=True, help="registered model name")
    version: str = option(help="the version the alias will point at")
    alias: str = option("champion", help="alias to point at the version")
    require: tuple[str, ...] = option((), repeatable=True, help="METRIC>=VALUE: refuse unless the version's metric "
                                                                "meets this bar (repeatable); read from its latest "
                                                                "ugpnet evaluate run when it has one, else from its "
                                                                "training run")
    tracking_uri: str | None = common_options.tracking_uri(cli=False)

    def validate(self) -> "PromoteConfig":
        self.version = str(self.version) if isinstance(self.version, int) else self.version  # YAML `version: 3`
        check_declared(self)
        if isinstance(self.require, str):
            self.require = (self.require,)
        if not all(isinstance(r, str) for r in self.require):
            raise ConfigError("require", f"must be METRIC>=VALUE strings, got {self.require!r}")
        return self


def add_parsers(sub) -> None:
    models = sub.add_parser("models", help="the MLflow model registry")
    options.add_options(models, ModelsOptions, common=False)
    verbs = models.add_subparsers(dest="models_verb", required=True, metavar="ACTION")
    for action, help_text, config, run in (
            ("list", "registered UGPNet models, versions and aliases", ListConfig, run_list),
            ("register-bundle", "log a bundle directory and register it", RegisterBundleConfig, run_register_bundle),
            ("promote", "point an alias (e.g. champion) at a version", PromoteConfig, run_promote)):
        options.add_verb(verbs, action, config, run, help=help_text)


def run_list(args: ListConfig) -> int:
    from pipelines.registry import store as registry

    use_tracking(args.tracking_uri)
    versions = registry.list_versions(args.name)
    print(f"{'name':28} {'version':>7}  {'aliases':24} run")
    for v in versions:
        print(f"{v.name:28} {v.version:>7}  {','.join(v.aliases) or '-':24} {v.run_id or '-'}")
    return 0


def run_register_bundle(args: RegisterBundleConfig) -> int:
    import mlflow

    from pipelines.registry import store as registry
    from ugpnet.checkpoint import read_bundle_config

    use_tracking(args.tracking_uri)
    config = read_bundle_config(args.bundle)
    name = registry.registered_name(config["task"], args.name)
    mlflow.set_experiment(args.experiment)
    with mlflow.start_run(run_name=f"register {name}"):
        mlflow.log_params({"preset": config["preset"]["name"], "task": config["task"]})
        for key, value in (config.get("metrics") or {}).items():
            mlflow.log_metric(key, float(value))
        version = registry.log_bundle(args.bundle, register_as=name, alias=args.alias)
    print(f"registered {name} version {version.version} (alias {args.alias})")
    return 0


def run_promote(args: PromoteConfig) -> int:
    from pipelines.registry import store as registry

    use_tracking(args.tracking_uri)
    for line in registry.promote(args.name, args.version, args.alias, args.require):
        print(line)
    print(f"{args.name}@{args.alias} -> version {args.version}")
    return 0
