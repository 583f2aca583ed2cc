"""The infrastructure files parse, and every `ugpnet` command line in them is a valid invocation: each
goes through the CLI parser and the verb's own validation (`--dry-run` where the verb has one)."""

import datetime
import re
import shlex
import subprocess
from pathlib import Path

import yaml

from pipelines import cli
from pipelines.restore import run as restore

pytest_plugins = ["services"]

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
SHELL_OPERATORS = {";", "&&", "||", "|", ">", ">>", "2>&1", "<"}


def strings_in(value) -> list[str]:
    """Every string in a parsed YAML document, and in YAML documents embedded as strings (templates)."""
    if isinstance(value, dict):
        return [s for item in value.values() for s in strings_in(item)]
    if isinstance(value, list):
        return [s for item in value for s in strings_in(item)]
    if isinstance(value, str):
        if "apiVersion:" in value and "kind:" in value:
            return strings_in(yaml.safe_load(value))  # its commands, not its raw text
        return [value]
    return []


def command_lines(path: Path) -> list[list[str]]:
    """The `ugpnet VERB …` commands in a file, as argv lists (shell operators end a command)."""
    if path.suffix in (".yaml", ".yml"):
        texts = [s for doc in yaml.safe_load_all(path.read_text()) for s in strings_in(doc)]
    else:
        joined = path.read_text().replace("\\\n", " ")
        texts = [line for line in joined.splitlines() if not line.lstrip().startswith("#")]
    commands = []
    for text in texts:
        if not re.search(r"\bugpnet\s+(restore|train|archive)\b", text):
            continue
        tokens = shlex.split(text)
        for index, token in enumerate(tokens):
            if token == "ugpnet" and index + 1 < len(tokens) and tokens[index + 1] in ("restore", "train", "archive"):
                argv = []
                for part in tokens[index + 1:]:
                    if part in SHELL_OPERATORS:
                        break
                    argv.append(part)
                commands.append(argv)
    return commands


def infra_files() -> list[Path]:
    return sorted(p for p in INFRA.rglob("*") if p.is_file() and p.suffix in (".yaml", ".yml", ".crontab"))


def test_every_infra_command_is_a_valid_ugpnet_invocation(s3_buckets, capsys):
    client = s3_buckets.client()
    # `train --dry-run` checks that its data prefix exists: give it one on the test S3 server.
    for bucket in ("photos", "ugpnet-runs"):
        client.create_bucket(Bucket=bucket)
    client.put_object(Bucket="photos", Key="clean/a.png", Body=b"not read by a dry run")
    found = {}
    for path in infra_files():
        for argv in command_lines(path):
            found.setdefault(argv[0], []).append(path.relative_to(ROOT))
            if argv[0] == "restore":  # no --dry-run: parse, then the same validation a run does first
                args = cli.build_parser().parse_args(argv)
                assert restore.config_from_args(args).input.startswith("s3://"), argv
            else:
                assert cli.main([*argv, "--dry-run"]) == 0, (path, argv, capsys.readouterr().err)
    assert set(found) == {"restore", "train", "archive"}, found
    archive_files = {p.name for p in found["archive"]}
    assert archive_files == {"archive.cronjob.yaml", "archive.raycronjob.yaml", "archive.crontab"}
    assert {p.name for p in found["restore"]} >= {"ray-job.restore.yaml"}
    assert {p.name for p in found["train"]} >= {"ray-job.train.yaml"}


def test_kuberay_manifests_have_the_promised_shape():
    docs = {p.name: list(yaml.safe_load_all(p.read_text())) for p in (INFRA / "kuberay").glob("*.yaml")}
    for name, items in docs.items():
        assert all(isinstance(d, dict) and d.get("apiVersion") and d.get("kind") for d in items), name
    cluster = docs["ray-cluster.gpu.yaml"][0]
    assert cluster["kind"] == "RayCluster"
    import ray

    assert cluster["spec"]["rayVersion"] == ray.__version__  # the image's Ray is the one the tests ran
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head["resources"]["limits"]
    workers = cluster["spec"]["workerGroupSpecs"]
    assert any(int(g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0)) >= 1
               for g in workers)
    by_kind = {d["kind"]: d for d in docs["archive.cronjob.yaml"]}
    assert by_kind["CronJob"]["spec"]["concurrencyPolicy"] == "Forbid"
    template = yaml.safe_load(by_kind["ConfigMap"]["data"]["rayjob.yaml"])
    assert template["kind"] == "RayJob" and "RUN_SLOT" in template["metadata"]["name"]  # one RayJob per slot
    cron_template = docs["archive.raycronjob.yaml"][0]["spec"]["jobTemplate"]
    jobs = {name: docs[name][0] for name in ("ray-job.restore.yaml", "ray-job.train.yaml")} | {
            "archive.cronjob.yaml": template, "archive.raycronjob.yaml": {"kind": "RayJob", "spec": cron_template}}
    for name, document in jobs.items():
        job = document["spec"]
        assert document["kind"] == "RayJob" and "clusterSelector" not in job, name  # a cluster of its own ...
        assert job["shutdownAfterJobFinishes"] is True, name  # ... removed when the job ends,
        assert 0 < job["ttlSecondsAfterFinished"] <= 86400, name  # ... after a TTL
        assert job["rayClusterSpec"]["rayVersion"] == ray.__version__, name
        assert job["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0", name
    for spec in [cluster["spec"]] + [job["spec"]["rayClusterSpec"] for job in jobs.values()]:
        assert spec["authOptions"] == {"mode": "token"}  # the job server binds 0.0.0.0 only behind token auth
    assert "RUN_SLOT" in " ".join(by_kind["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
                                  ["containers"][0]["command"])
    assert docs["archive.raycronjob.yaml"][0]["kind"] == "RayCronJob"
    images = {c["image"] for d in (cluster,) for c in [head] + [g["template"]["spec"]["containers"][0]
                                                                for g in workers]}
    assert len(images) == 1  # head and workers run the same image


def test_the_archive_scheduler_creates_this_hours_job_and_prunes_only_old_finished_ones(tmp_path):
    """Run the CronJob's own shell command with a `kubectl` that records its calls (no Kubernetes API
    here): it creates the RayJob for this hour, and deletes finished archive RayJobs older than a day,
    never a recent or a running one."""
    docs = {d["kind"]: d for d in yaml.safe_load_all((INFRA / "kuberay" / "archive.cronjob.yaml").read_text())}
    container = docs["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][:2] == ["/bin/sh", "-c"]
    (tmp_path / "template").mkdir()
    (tmp_path / "template" / "rayjob.yaml").write_text(docs["ConfigMap"]["data"]["rayjob.yaml"])
    script = container["command"][2].replace("/tmp/", f"{tmp_path}/").replace("/template/", f"{tmp_path}/template/")
    now = datetime.datetime.now(datetime.UTC)
    old, recent = ((now - datetime.timedelta(hours=hours)).strftime("%Y%m%d%H") for hours in (30, 2))
    calls = tmp_path / "calls"
    kubectl = tmp_path / "bin" / "kubectl"
    kubectl.parent.mkdir()
    # "Complete" RayJobs: the old one and the recent one (a running one is not in the filtered list).
    kubectl.write_text(f"""#!/bin/sh
echo "$*" >> {calls}
case "$*" in "get rayjob -l"*) printf 'ugpnet-archive-{old} ugpnet-archive-{recent} ';; esac
""")
    kubectl.chmod(0o755)
    env = {"PATH": f"{kubectl.parent}:/usr/bin:/bin"}
    result = subprocess.run(["/bin/sh", "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = calls.read_text().splitlines()
    assert lines[0] == f"create -f {tmp_path}/rayjob.yaml"
    created = yaml.safe_load((tmp_path / "rayjob.yaml").read_text())
    slot = created["metadata"]["name"].removeprefix("ugpnet-archive-")
    assert slot in {now.strftime("%Y%m%d%H"), (now + datetime.timedelta(hours=1)).strftime("%Y%m%d%H")}
    listing = next(line for line in lines if line.startswith("get rayjob -l"))
    assert "status.jobDeploymentStatus==\"Complete\"" in listing
    assert [line for line in lines if line.startswith("delete")] == [f"delete rayjob ugpnet-archive-{old}"]


def test_plain_cron_submits_with_a_deterministic_submission_id():
    line = next(line for line in (INFRA / "kuberay" / "archive.crontab").read_text().splitlines()
                if "ray job submit" in line and not line.startswith("#"))
    tokens = shlex.split(line.split(None, 5)[5])  # after the five schedule fields
    submission = tokens[tokens.index("--submission-id") + 1]
    assert "$(date -u +" in submission and "%H" in submission.replace("\\%", "%")  # the scheduled hour
    assert "%S" not in submission and "%N" not in submission and "RANDOM" not in submission
    assert tokens[tokens.index("--") + 1:tokens.index("--") + 3] == ["ugpnet", "archive"]


def test_ray_up_config_passes_rays_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((INFRA / "ray-up" / "cluster.gpu.yaml").read_text())
    validate_config(prepare_config(config))
    assert config["available_node_types"]["gpu_worker"]["resources"]["GPU"] >= 1
    assert config["available_node_types"]["head"]["resources"].get("GPU", 0) == 0
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and "0.0.0.0" not in head_start


def test_dockerfile_pins_the_stack():
    text = (INFRA / "docker" / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11\.\d+-slim", text, re.MULTILINE)  # a patch-level base image
    assert "-c scripts/constraints.txt" in text and "COPY scripts/constraints.txt" in text
    assert re.search(r'ARG TORCH_REQUIREMENT="torch==[\d.]+"', text)
    constraints = (ROOT / "scripts" / "constraints.txt").read_text()
    import ray

    assert f"ray=={ray.__version__}" in constraints
