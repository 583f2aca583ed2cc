"""Options that several verbs take (restore, evaluate, archive, train, models), declared once here:
each function is one dataclass field with its help, default and unit (see pipelines.common.options).

The vocabularies mirror ugpnet's (not imported: `import ugpnet` loads torch, which the CLI loads
only when it runs a model; tests/test_inference.py and test_images.py check they agree).
"""

from pipelines.common.options import option

FIT_POLICIES = ("resize", "tile", "error")  # ugpnet.fitting.FIT_POLICIES
PRECISIONS = ("fp32", "bf16", "fp16")       # ugpnet.inference.PRECISIONS
COMPILE_MODES = ("off", "on", "auto")       # ugpnet.compiled.COMPILE_MODES
# ugpnet.images.READABLE_EXTENSIONS: every format the decoder reads.
DEFAULT_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".gif")
MODEL_REFERENCES = "bundle dir, models:/NAME@ALIAS, models:/NAME/VERSION, default[:TASK], preset:NAME"


def model(default="default", default_text=None):
    return option(default, default_text=default_text, help=MODEL_REFERENCES)


def fit(default="resize"):
    return option(default, choices=FIT_POLICIES, help="how any image size meets the model (ugpnet.fitting)")


def precision():
    return option("fp32", choices=PRECISIONS, help="forward pass precision; fp16 needs a GPU")


def gpus_per_actor(default=0.0, default_text=None):
    return option(default, minimum=0.0, unit="GPUs", default_text=default_text,
                  help="GPUs per model actor, fractional allowed")


def cpus_per_actor():
    return option(0.5, minimum=0.0, unit="CPUs", help="Ray CPUs reserved per model actor")


def cpus_per_task():
    return option(0.5, minimum=0.0, exclusive=True, unit="CPUs",
                  help="Ray CPUs reserved per read/decode or encode/write task")


def threads_per_actor():
    return option(0, minimum=0, unit="threads", default_text="0: max(1, ceil(cpus-per-actor))",
                  help="torch threads in a CPU actor")


def extensions():
    return option(DEFAULT_EXTENSIONS, help="comma-separated input file endings taken from folders and prefixes")


def max_pixels():
    return option(100_000_000, minimum=1, unit="px", help="largest input width*height accepted; larger inputs "
                                                          "are error rows")


def allow_local_manifest_paths():
    return option(False, help="let a manifest read from S3 name local files (off: such entries are error rows)")


def run_id(default_text="UTC time + random suffix"):
    return option(None, default_text=default_text, help="name of this run (its manifest, summary and records)")


def tracking_uri(cli=True):
    return option(None, cli=cli, default_text="$MLFLOW_TRACKING_URI, else sqlite:///mlflow.db",
                  help="MLflow tracking URI")


def experiment(default):
    return option(default, help="MLflow experiment of the runs this verb logs")
