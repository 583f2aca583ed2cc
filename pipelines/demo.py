"""`ugpnet demo`: the newcomer's first run. Degrades a few shipped photos, restores them with the
default model through the real restore pipeline (local Ray, local folders), and writes an HTML
page that shows each input beside its outputs with PSNR against the clean photo."""

import html
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.common import options
from pipelines.common import shared_options as common_options
from pipelines.common.options import option
from ugpnet.tasks import DEFAULT_TASK, TASK_SPECS, TASKS, get_task

DEMO_MAX_SIDE = 512
SIDE_MULTIPLE = max(spec.scale for spec in TASK_SPECS.values())  # the same photos for every task: ×8 SR needs
                                                                 # sides divisible by 8


@dataclass
class DemoConfig(options.Declared):
    out: str = option("demo_output", help="folder for inputs, outputs and index.html")
    model: str | None = common_options.model(None, default_text="default:<task>")
    task: str = option(DEFAULT_TASK, choices=TASKS, help="the degradation shown")
    fit: str = option("tile", choices=("tile", "resize"), help="how any image size meets the model")


def add_parsers(sub) -> None:
    options.add_verb(sub, "demo", DemoConfig, run_cli,
                     help="restore the sample photos with the default model; write an HTML page")


def demo_photos(max_side: int = DEMO_MAX_SIDE):
    """The installed-package photos that fall in the fixed test split of `ugpnet data prepare`
    (so the shipped defaults never trained on them), reduced to `max_side`."""
    from pipelines.data.photo_sources import installed_photos
    from pipelines.data.prepare import TEST_FRACTION, VAL_FRACTION, reduce, split_of

    return [(photo.name.replace("/", "_"), reduce(photo.image, max_side)) for photo in installed_photos()
            if split_of(photo.name, VAL_FRACTION, TEST_FRACTION) == "test"]


def prepare_inputs(out: Path, task: str) -> list[str]:
    """Clean test-split photos, their degraded versions (seeded) and what each blind classical baseline
    makes of those very inputs, side by side in `out`."""
    import torch

    from ugpnet.baselines import run_baseline
    from ugpnet.degradations import degrade_recorded, get_degradation, sample_seed
    from ugpnet.images import encode_image

    clean_dir, degraded_dir = out / "clean", out / "degraded"
    clean_dir.mkdir(parents=True, exist_ok=True)
    degraded_dir.mkdir(parents=True, exist_ok=True)
    degradation = get_degradation(get_task(task).demo_degradation)
    names = []
    for index, (stem, image) in enumerate(demo_photos()):
        rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        h, w = (rgb.shape[0] // SIDE_MULTIPLE) * SIDE_MULTIPLE, (rgb.shape[1] // SIDE_MULTIPLE) * SIDE_MULTIPLE
        rgb = np.ascontiguousarray(rgb[:h, :w])
        lq, record = degrade_recorded(torch.from_numpy(rgb.transpose(2, 0, 1).copy()), degradation,
                                      sample_seed(2024, index))
        lq = lq.permute(1, 2, 0).numpy()
        (clean_dir / f"{stem}.png").write_bytes(encode_image(rgb))
        (degraded_dir / f"{stem}.png").write_bytes(encode_image(lq))
        for baseline in demo_baselines(task):
            folder = out / "baselines" / baseline_folder(baseline.name)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{stem}.png").write_bytes(encode_image(run_baseline(baseline, lq, record)))
        names.append(stem)
    return names


def demo_baselines(task: str):
    """The task's blind classical baselines whose optional packages are installed: what a user could run
    instead of the model without knowing the degradation (the non-blind ones are in `ugpnet evaluate`)."""
    from ugpnet.baselines import baselines_for, missing_modules

    missing = set(missing_modules(task))
    return [b for b in baselines_for(task) if b.blind and not missing.intersection(b.modules)]


def baseline_folder(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(255.0**2 / mse) if mse > 0 else float("inf")


BASELINES_NOTE = (" The classical columns are free filters run on the very same degraded inputs, blind (not told "
                  "the degradation): what the model has to beat. `ugpnet evaluate` adds the non-blind ones.")
NO_BASELINES_NOTE = " Classical baselines: not shown (pip install -e '.[baselines]' adds them)."


def synthesized_note(model_ref: str) -> str:
    """What the synthesized column is, said plainly: for the shipped defaults it is not yet a picture."""
    note = ("Synthesized: the StyleGAN2 prior's own image, generated from the restored one; fusion takes "
            "its texture where it helps and the restored image's structure elsewhere.")
    if model_ref.startswith("default"):
        note += (" For this shipped default its GAN stage was trained for minutes on a CPU, so the synthesized "
                 "image carries colours and coarse layout, not the photo's structure, and the fused output "
                 "draws on the restored one (the model card has the figures).")
    return note


def write_page(out: Path, names: list[str], model_ref: str, summary, baselines: tuple[str, ...] = ()) -> Path:
    from PIL import Image

    def pixels(path: Path, size=None):
        image = Image.open(path).convert("RGB")
        return np.asarray(image.resize(size, Image.BICUBIC) if size and image.size != size else image)

    rows = []
    for stem in names:
        clean_path, lq_path = out / "clean" / f"{stem}.png", out / "degraded" / f"{stem}.png"
        outputs = {"restored": out / "restored" / "_intermediate" / "restored" / f"{stem}.png",
                   "synthesized": out / "restored" / "_intermediate" / "synthesized" / f"{stem}.png",
                   "fused": out / "restored" / f"{stem}.png"}
        outputs |= {f"{name} (classical)": out / "baselines" / baseline_folder(name) / f"{stem}.png"
                    for name in baselines}
        clean = pixels(clean_path)
        size = (clean.shape[1], clean.shape[0])
        cells = [("degraded input", lq_path, psnr(pixels(lq_path, size), clean))]
        cells += [(label, path, psnr(pixels(path, size), clean)) for label, path in outputs.items() if path.exists()]
        cells.append(("clean", clean_path, None))
        rows.append("<tr>" + "".join(
            f'<td><img src="{html.escape(str(path.relative_to(out)))}" loading="lazy"><br>{html.escape(label)}'
            + (f" — {value:.2f} dB" if value is not None else "") + "</td>" for label, path, value in cells) + "</tr>")
    page = out / "index.html"
    page.write_text(f"""<!doctype html><meta charset="utf-8"><title>UGPNet demo</title>
<style>body{{font-family:sans-serif}} td{{vertical-align:top;text-align:center;padding:4px}}
img{{max-width:300px}}</style>
<h1>UGPNet demo: {html.escape(model_ref)}</h1>
<p>{summary.ok} restored, {summary.errors} errors, {summary.images_per_s:.2f} images/s. PSNR against the clean
photo. Columns: degraded input | restored (regression) | synthesized (generative prior) | fused (output) |
{''.join(html.escape(name) + ' | ' for name in baselines)}clean.{BASELINES_NOTE if baselines else NO_BASELINES_NOTE}</p>
<p>{html.escape(synthesized_note(model_ref))}</p>
<table>{''.join(rows)}</table>
""")
    return page


def write_figure(out: Path, stem: str, baselines: tuple[str, ...] = (), crop: int = 224) -> Path:
    """One strip for the README: degraded | restored | fused | the best blind baseline on this image |
    clean, the same centre crop of each, each labelled with its PSNR on the whole image."""
    from PIL import Image, ImageDraw

    panels = [("degraded", out / "degraded" / f"{stem}.png"),
              ("restored", out / "restored" / "_intermediate" / "restored" / f"{stem}.png"),
              ("fused (ours)", out / "restored" / f"{stem}.png")]
    clean_path = out / "clean" / f"{stem}.png"
    clean = Image.open(clean_path).convert("RGB")
    reference = np.asarray(clean)

    def whole_psnr(path: Path) -> float:  # SR inputs are smaller: compared after a bicubic enlargement
        return psnr(np.asarray(Image.open(path).convert("RGB").resize(clean.size, Image.BICUBIC)), reference)

    scored = [(whole_psnr(path), name, path) for name in baselines
              if (path := out / "baselines" / baseline_folder(name) / f"{stem}.png").exists()]
    if scored:
        _, name, path = max(scored)
        panels.append((name, path))
    labelled = [(f"{label} {whole_psnr(path):.2f} dB", path) for label, path in panels]
    labelled.append(("ground truth", clean_path))
    side = min(crop, *clean.size)
    left, top = (clean.width - side) // 2, (clean.height - side) // 2
    strip = Image.new("RGB", (len(labelled) * (side + 4) - 4, side + 18), "white")
    draw = ImageDraw.Draw(strip)
    for i, (label, path) in enumerate(labelled):
        image = Image.open(path).convert("RGB").resize(clean.size, Image.BICUBIC)
        strip.paste(image.crop((left, top, left + side, top + side)), (i * (side + 4), 18))
        draw.text((i * (side + 4) + 4, 3), label, fill="black")
    path = out / "figure.png"
    strip.save(path)
    return path


def run_cli(args: DemoConfig) -> int:
    from pipelines.restore.run import RestoreConfig, run

    out = Path(args.out).resolve()
    names = prepare_inputs(out, args.task)
    model = args.model or get_task(args.task).default_model
    summary = run(RestoreConfig(input=str(out / "degraded"), output=str(out / "restored"), model=model,
                                fit=args.fit, save_intermediate=True, overwrite=True))
    baselines = tuple(b.name for b in demo_baselines(args.task))
    page = write_page(out, names, model, summary, baselines)
    if summary.errors == 0 and names:
        write_figure(out, names[0], baselines)
    print(json.dumps({"restored": summary.ok, "errors": summary.errors, "page": str(page)}))
    print(f"open {page} to see the inputs beside the outputs")
    return 0 if summary.errors == 0 else 1
