"""Write MODEL_CARD.md for a trained bundle from what was recorded: the training config, the data
manifest, the final validation metrics of each stage (MLflow) and an evaluation report's summary.json.

    python -m pipelines.registry.model_card --bundle ugpnet/defaults/denoise \
        --config infra/configs/defaults/denoise.yaml \
        --data-manifest WORK/photos/manifest.json --tracking-uri sqlite:///WORK/mlflow.db \
        --evaluation WORK/eval/denoise/summary.json
"""

import argparse
import json
from collections import Counter
from pathlib import Path

import yaml

from ugpnet.checkpoint import CONFIG_FILE, WEIGHTS_FILE
from ugpnet.presets import get_preset
from ugpnet.tasks import get_task

STAGES = ("restoration", "synthesis", "fusion")
OUTPUTS = ("input", "restored", "synthesized", "fused")
STAGE_OUTPUTS = dict(zip(STAGES, OUTPUTS[1:], strict=True))  # the output each stage trains


def stage_metrics(tracking_uri: str, run_name: str) -> dict[str, dict]:
    """The last validation metrics logged by each stage's latest nested run `<run_name>/<stage>`, its
    wall time in seconds as `seconds`, and the validation curve of the stage's own output as `curve`
    ([(step, PSNR)], the measured curve its schedule was chosen from)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    result = {}
    for experiment in client.search_experiments():
        for stage in STAGES:
            runs = client.search_runs([experiment.experiment_id], f"tags.mlflow.runName = '{run_name}/{stage}'",
                                      order_by=["attributes.start_time DESC"], max_results=1)
            if runs:
                info = runs[0].info
                result[stage] = {k: v for k, v in runs[0].data.metrics.items() if k.startswith("val/")}
                result[stage]["seconds"] = ((info.end_time or info.start_time) - info.start_time) / 1000
                history = client.get_metric_history(info.run_id, f"val/{STAGE_OUTPUTS[stage]}_psnr")
                result[stage]["curve"] = sorted((m.step, m.value) for m in history)
    return result


def evaluation_table(summary: dict) -> str:
    metrics = [m for m in ("psnr", "ssim", "hf_distance", "gmsd") if any(m in e for e in summary["table"])]
    lines = [f"| strength | output | {' | '.join(metrics)} |", "|---|---|" + "---|" * len(metrics)]
    for entry in summary["table"]:
        values = [f"{entry[m]:.3f}" if entry.get(m) is not None else "–" for m in metrics]
        lines.append(f"| {entry['strength']} | {entry['output']} | {' | '.join(values)} |")
    return "\n".join(lines)


def comparison_lines(summary: dict) -> str:
    lines = []
    for c in summary["comparisons"]:
        gain, cost = c["restored_minus_input_psnr_db"], c["fused_minus_restored_psnr_db"]
        texture = {True: "closer to GT than the restored image's",
                   False: "not closer to GT than the restored image's", None: "not measured"}[
            c["fused_texture_closer_than_restored"]]
        baseline = ""
        if c.get("best_blind_baseline"):
            baseline = (f"; fused − best blind baseline ({c['best_blind_baseline']}) "
                        f"**{c['fused_minus_best_blind_baseline_psnr_db']:+.2f} dB**")
        lines.append(f"- strength {c['strength']}: restored − input PSNR **{gain:+.2f} dB**; fused − restored "
                     f"**{cost:+.2f} dB**{baseline}; fused texture (hf_distance {c['fused_hf_distance']:.3f} vs "
                     f"{c['restored_hf_distance']:.3f}) {texture}")
    return "\n".join(lines)


def baseline_table(summary: dict) -> str:
    """PSNR per strength: ours beside each classical baseline run on the same inputs (non-blind ones,
    given the true degradation, are marked); empty when the evaluation ran none."""
    baselines = summary.get("baselines") or []
    if not baselines:
        return ""
    psnr = {(e["strength"], e["output"]): e.get("psnr") for e in summary["table"]}
    columns = ["input", "restored", "fused"] + [b["name"] for b in baselines]
    labels = ["input", "restored", "**fused**"] + [b["name"] + ("" if b["blind"] else " (non-blind)")
                                                   for b in baselines]
    lines = [f"| strength | {' | '.join(labels)} |", "|---|" + "---|" * len(columns)]
    for strength in sorted({e["strength"] for e in summary["table"]}):
        cells = [psnr.get((strength, c)) for c in columns]
        lines.append(f"| {strength} | " + " | ".join("–" if v is None else f"{v:.2f}" for v in cells) + " |")
    return ("PSNR (dB) beside the classical baselines, on the very same degraded inputs "
            "(`ugpnet evaluate --baselines`):\n\n" + "\n".join(lines))


def curve_text(stages: dict, trained: list[str]) -> str:
    """The measured validation curve of each stage this run trained (what its schedule was chosen by)."""
    lines = []
    for stage in trained:
        curve = stages.get(stage, {}).get("curve") or []
        if curve:
            points = ", ".join(f"{step}: {value:.2f}" for step, value in curve)
            lines.append(f"- {stage} (val {STAGE_OUTPUTS[stage]} PSNR by step): {points}")
    return "\n".join(lines)


def degradation_text(config: dict) -> str:
    if config.get("degradation"):
        return f"the named degradation `NAMED_DEGRADATIONS['{config['degradation']}']`"
    return (f"the task's training degradation `NAMED_DEGRADATIONS['{get_task(config['task']).training_degradation}']`"
            " (ugpnet.tasks)")


def warm_start(stage: dict) -> str:
    if stage.get("init_identity"):
        return "I_R = input (init_identity)"
    if stage.get("init_from_restoration"):
        return "I_F = I_R (init_from_restoration)"
    return "previous stage"


EVALUATION_HEADING = "## Evaluation on the test split"
LIMITS_HEADING = "## Limits"  # the section after the evaluation: where refresh_evaluation stops
DATA_SOURCES = "installed,kodak,mate,plasma"  # what scripts/train_defaults.sh prepares


def evaluation_section(summary: dict, default_model: str, task: str) -> str:
    """The card's evaluation section, from an evaluation report's summary.json (up to `## Limits`)."""
    return f"""{EVALUATION_HEADING}

`ugpnet evaluate --model {default_model} --data <prepared>/test --task {task}
{' '.join(f'--{k.replace("_", "-")} {v}' for k, v in summary['config'].items()
          if k in ('strengths', 'crop') and v not in (None, '', []))}` — means over {summary['images']} images:

{baseline_table(summary)}

All metrics:

{evaluation_table(summary)}

{comparison_lines(summary)}

hf_distance = |log2(high-frequency energy of the output / that of the ground truth)|: 0 means the
output has the ground truth's amount of fine texture. GMSD: gradient-magnitude similarity deviation
(lower is better).

"""


def refresh_evaluation(bundle: Path, evaluation: Path, note: str = "") -> Path:
    """Replace the evaluation section of an existing card by one from a newer evaluation of the same
    bundle (a larger test split, new baselines) while the training sections, whose MLflow records may be
    gone, stay as they were written."""
    path = bundle / "MODEL_CARD.md"
    card = path.read_text()
    start, end = card.index(EVALUATION_HEADING), card.index(LIMITS_HEADING)
    bundle_config = json.loads((bundle / CONFIG_FILE).read_text())
    task = bundle_config["task"]
    summary = json.loads(evaluation.read_text())
    section = evaluation_section(summary, get_task(task).default_model, task)
    if note:
        section = section.replace("\n\n", f"\n\n{note}\n\n", 1)
    path.write_text(card[:start] + section + card[end:])
    return path


def write_card(bundle: Path, config_path: Path, manifest_path: Path, tracking_uri: str, evaluation: Path,
               limits: str, history: str = "", sources: str = DATA_SOURCES) -> Path:
    config = yaml.safe_load(config_path.read_text())
    bundle_config = json.loads((bundle / CONFIG_FILE).read_text())
    manifest = json.loads(manifest_path.read_text())
    train = [r for r in manifest if r["split"] == "train"]
    test = [r for r in manifest if r["split"] == "test"]
    summary = json.loads(evaluation.read_text())
    stages = stage_metrics(tracking_uri, config["run_name"])
    trained = [s for s in STAGES if s in config.get("stages", STAGES)]  # the others came with init_bundle
    minutes = {stage: stages.get(stage, {}).get("seconds", 0) / 60 for stage in trained}
    hyper = config["hyperparams"]
    packages = Counter(f"{r['package']} {r['version']}" for r in train)
    licences = sorted({r["licence"].split(" (")[0] for r in train})
    size_mb = (bundle / WEIGHTS_FILE).stat().st_size / 1e6
    resolution = get_preset(bundle_config["preset"]["name"]).resolution
    validation = "\n".join(
        f"| {stage} | " + " | ".join(f"{stages.get(stage, {}).get(f'val/{o}_psnr', float('nan')):.2f}"
                                     for o in OUTPUTS) + " |" for stage in trained)
    default_model = get_task(config["task"]).default_model
    card = f"""# Default model `{default_model}` — {bundle_config['preset']['name']}

Trained on a 2-core CPU machine (no GPU) by this project's own pipeline: `bash scripts/train_defaults.sh
{config['task']}` (`ugpnet data prepare`, then `ugpnet train --config {config_path.as_posix()}`: Ray Train,
tracked in MLflow): {sum(minutes.values()):.0f} minutes of training in all
({', '.join(f'{stage} {m:.0f}' for stage, m in minutes.items())}; MLflow stage run times,
{config.get('workers', 1)} worker, {config.get('cpus_per_worker', 1)} CPU each, sharing the 2 cores with other work).
{history}
Weights: `model.safetensors`, {size_mb:.1f} MB; `ugpnet.json` holds the preset and provenance.

## Data

- Training: the `train` split of `ugpnet data prepare --sources {sources}` — {len(train)} photos
  ({', '.join(f'{n} from {p}' for p, n in sorted(packages.items()))}), random {resolution} px crops
  with flips; licences: {'; '.join(licences)}. Sources, paths and the licence of every image are in
  the data manifest (`ugpnet/defaults/data-manifest.json`, a copy of `manifest.json`).
- One training photo is held out (by path hash) for validation during training.
- Evaluation: the fixed `test` split ({len(test)} photos, never trained on): {', '.join(r['name'] for r in test)}.

## Degradation

Training: {degradation_text(config)}; see `ugpnet/degradations.py` and docs/degradations.md.
Evaluation: `ugpnet evaluate --task {config['task']}` at the strengths below.

## Training

| stage | steps | batch | lr | lr milestones | lr warm-up | starts from |
|---|---|---|---|---|---|---|
""" + "\n".join(f"| {s} | {hyper[s]['steps']} | {hyper[s]['batch_size']} | {hyper[s]['lr']} | "
                f"{hyper[s].get('lr_milestones', [])} | {hyper[s].get('warmup_steps', 0)} | {warm_start(hyper[s])} |"
                if s in trained else f"| {s} | not trained in this run: kept from `init_bundle` | | | | | |"
                for s in STAGES) + f"""

Perceptual (LPIPS) and contextual terms are 0: their VGG weights cannot be downloaded here. The official
schedule is 20k / 40k / 40k steps at batch 8 on a GPU; this run's is
{' / '.join(str(hyper[s]['steps']) for s in trained)} ({', '.join(trained)}).

Measured validation curves:

{curve_text(stages, trained)}

Validation PSNR (dB) at the end of each stage (held-out crops, training degradation):

| after stage | input | restored | synthesized | fused |
|---|---|---|---|---|
{validation}

{evaluation_section(summary, default_model, config['task'])}{LIMITS_HEADING}

{limits}
"""
    path = bundle / "MODEL_CARD.md"
    path.write_text(card)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--evaluation", type=Path, required=True)
    parser.add_argument("--refresh-evaluation", action="store_true",
                        help="only replace the existing card's evaluation section (the bundle is unchanged)")
    parser.add_argument("--refresh-note", default="", help="with --refresh-evaluation: a line saying when and why")
    parser.add_argument("--config", type=Path)
    parser.add_argument("--data-manifest", type=Path)
    parser.add_argument("--sources", default=DATA_SOURCES,
                        help="the `ugpnet data prepare --sources` the data manifest came from")
    parser.add_argument("--tracking-uri")
    parser.add_argument("--limits", default="Small and briefly trained: expect far weaker results than the "
                        "official models. The synthesized image of so short a GAN stage carries little real "
                        "detail; the fused output leans on the restored one.")
    parser.add_argument("--history", default="", help="how this bundle came to be, where the config alone "
                        "does not say (e.g. the earlier run its init_bundle came from)")
    args = parser.parse_args()
    if args.refresh_evaluation:
        print(refresh_evaluation(args.bundle, args.evaluation, args.refresh_note))
        return
    missing = [f"--{n.replace('_', '-')}" for n in ("config", "data_manifest", "tracking_uri") if not getattr(args, n)]
    if missing:
        parser.error(f"writing a card needs {', '.join(missing)} (or --refresh-evaluation)")
    print(write_card(args.bundle, args.config, args.data_manifest, args.tracking_uri, args.evaluation,
                     args.limits, args.history, args.sources))


if __name__ == "__main__":
    main()
