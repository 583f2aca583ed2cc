"""`ugpnet models …`: list registered versions, register a bundle, promote behind a metric gate."""

from pipelines.tracking import use_tracking


def add_parsers(sub) -> None:
    models = sub.add_parser("models", help="the MLflow model registry")
    models.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite)")
    verbs = models.add_subparsers(dest="models_verb", required=True, metavar="ACTION")

    listing = verbs.add_parser("list", help="registered UGPNet models, versions and aliases")
    listing.add_argument("--name", help="only this registered model")
    listing.set_defaults(handler=run_list)

    register = verbs.add_parser("register-bundle", help="log a bundle directory and register it")
    register.add_argument("bundle", help="bundle directory (model.safetensors + ugpnet.json)")
    register.add_argument("--name", help="registered model name (default ugpnet-<task>)")
    register.add_argument("--alias", default="candidate", help="alias to set on the new version")
    register.add_argument("--experiment", default="ugpnet-bundles")
    register.set_defaults(handler=run_register_bundle)

    promote = verbs.add_parser("promote", help="point an alias (e.g. champion) at a version")
    promote.add_argument("name")
    promote.add_argument("--version", required=True)
    promote.add_argument("--alias", default="champion")
    promote.add_argument("--require", action="append", default=[], metavar="METRIC>=VALUE",
                         help="refuse unless the version's metric meets this bar (repeatable); read from its "
                              "latest ugpnet evaluate run when it has one, else from its training run")
    promote.set_defaults(handler=run_promote)


def run_list(args) -> int:
    from pipelines import registry

    use_tracking(args.tracking_uri)
    versions = registry.list_versions(args.name)
    print(f"{'name':28} {'version':>7}  {'aliases':24} run")
    for v in versions:
        print(f"{v.name:28} {v.version:>7}  {','.join(v.aliases) or '-':24} {v.run_id or '-'}")
    return 0


def run_register_bundle(args) -> int:
    import mlflow

    from pipelines import registry
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


def run_promote(args) -> int:
    from pipelines import registry

    use_tracking(args.tracking_uri)
    for line in registry.promote(args.name, args.version, args.alias, args.require):
        print(line)
    print(f"{args.name}@{args.alias} -> version {args.version}")
    return 0
