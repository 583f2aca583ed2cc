"""The evaluation report: means per (strength, output), what each module adds, a text table for the
terminal, plots of each metric against degradation strength, and one self-contained HTML page
(plots as inline SVG, image grids as base64 PNG) that can be mailed or archived as a single file.
Classical baselines, when evaluated, are outputs like the model's: rows in the tables, dashed lines
in the plots, panels in the grids."""

import base64
import html
import io
import math
from collections import defaultdict

from pipelines.evaluate.stages import OUTPUTS, grid_key
from ugpnet.metrics import PSNR_CAP_DB

METRIC_TITLES = {"psnr": "PSNR (dB) ↑", "ssim": "SSIM ↑", "hf_ratio": "HF energy ratio (1 = GT)",
                 "hf_distance": "|log2 HF ratio| ↓", "gmsd": "GMSD ↓", "lpips": "LPIPS ↓"}
OUTPUT_COLOURS = {"input": "#888888", "restored": "#1f77b4", "synthesized": "#2ca02c", "fused": "#d62728"}
BASELINE_COLOURS = ("#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf")  # dashed lines, in table order


def aggregate(rows: list[dict], metrics: list[str], outputs=OUTPUTS) -> list[dict]:
    """One entry per (strength, output): ok and error counts, and each metric's mean over ok images."""
    groups = defaultdict(list)
    for row in rows:
        groups[(row["strength"], row["output"])].append(row)
    table = []
    for strength in sorted({s for s, _ in groups}):
        for output in outputs:
            members = groups.get((strength, output), [])
            ok = [r for r in members if r["status"] == "ok"]
            entry = {"strength": strength, "output": output, "n": len(ok), "errors": len(members) - len(ok)}
            for metric in metrics:
                values = [min(r[metric], PSNR_CAP_DB) for r in ok if r.get(metric) is not None]
                entry[metric] = sum(values) / len(values) if values else None
            table.append(entry)
    return table


def compare(table: list[dict], blind_baselines: tuple[str, ...] = ()) -> list[dict]:
    """Per strength: the restored image's PSNR gain over the input, the fused image's PSNR cost
    against the restored one, whether fusion brings the texture closer to GT's, and the fused
    image's PSNR against the best blind baseline (the free filter a user could run instead)."""
    by_key = {(e["strength"], e["output"]): e for e in table}
    result = []
    for strength in sorted({e["strength"] for e in table}):
        inp, res, fus = (by_key.get((strength, name), {}) for name in ("input", "restored", "fused"))

        def difference(a, b, metric):
            return None if a.get(metric) is None or b.get(metric) is None else a[metric] - b[metric]

        entry = {"strength": strength, "restored_minus_input_psnr_db": difference(res, inp, "psnr"),
                 "fused_minus_restored_psnr_db": difference(fus, res, "psnr"),
                 "restored_hf_distance": res.get("hf_distance"), "fused_hf_distance": fus.get("hf_distance")}
        texture = difference(fus, res, "hf_distance")
        entry["fused_texture_closer_than_restored"] = None if texture is None else texture < 0
        measured = [by_key[(strength, name)] for name in blind_baselines
                    if by_key.get((strength, name), {}).get("psnr") is not None]
        best = max(measured, key=lambda e: e["psnr"], default={})
        entry["best_blind_baseline"] = best.get("output")
        entry["fused_minus_best_blind_baseline_psnr_db"] = difference(fus, best, "psnr")
        result.append(entry)
    return result


def _number(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return f"{value:.{digits}f}"


def text_table(table: list[dict], metrics: list[str], strength_label: str) -> str:
    """The means as a fixed-width table for the terminal."""
    header = [f"strength ({strength_label})", "output", "n", *metrics]
    lines = [header]
    for entry in table:
        lines.append([f"{entry['strength']:g}", entry["output"], str(entry["n"]),
                      *(_number(entry.get(m), 2 if m == "psnr" else 4) for m in metrics)])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.rjust(width) if i > 1 else cell.ljust(width)
                               for i, (cell, width) in enumerate(zip(line, widths, strict=True))) for line in lines)


def plot_svg(table: list[dict], metrics: list[str], strength_label: str) -> str:
    """One SVG (one panel per metric, one line per output, dashed for baselines) of mean metric
    against strength."""
    import matplotlib

    matplotlib.use("Agg")  # no display on workers and servers
    from matplotlib import pyplot as plt

    columns = min(3, len(metrics))
    rows = math.ceil(len(metrics) / columns)
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "ugpnet-evaluate"}):
        figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
        outputs = list(dict.fromkeys(e["output"] for e in table))
        baselines = [o for o in outputs if o not in OUTPUT_COLOURS]
        for axis, metric in zip(axes.flat, metrics, strict=False):
            for output in outputs:
                points = [(e["strength"], e[metric]) for e in table
                          if e["output"] == output and e.get(metric) is not None]
                if not points:
                    continue
                if output in OUTPUT_COLOURS:
                    style = {"color": OUTPUT_COLOURS[output], "marker": "o"}
                else:
                    colour = BASELINE_COLOURS[baselines.index(output) % len(BASELINE_COLOURS)]
                    style = {"color": colour, "marker": "s", "linestyle": "--"}
                axis.plot(*zip(*points, strict=True), label=output, **style)
            axis.set_title(METRIC_TITLES.get(metric, metric))
            axis.set_xlabel(strength_label)
            axis.grid(alpha=0.3)
        for axis in list(axes.flat)[len(metrics):]:
            axis.set_visible(False)
        axes.flat[0].legend(fontsize="small")
        figure.tight_layout()
        buffer = io.StringIO()
        figure.savefig(buffer, format="svg")
        plt.close(figure)
    text = buffer.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and doctype: the SVG goes inside HTML


def html_page(context: dict, table: list[dict], comparisons: list[dict], rows: list[dict], *, read, root) -> str:
    """The whole report as one HTML string. `read(location)` fetches grid PNGs under `root`."""
    metrics, label = context["metrics"], context["strength_label"]
    esc = html.escape
    model = context["model"]
    head_rows = [("model", f"{model['ref']} — {model['preset']} ({model['task']}), version {model['version']}"
                           + (f", registry {model['registry_version']}" if model.get("registry_version") else "")),
                 ("data", context["data"]), ("task", context["task"]),
                 ("degradation", f"{label}: {', '.join(f'{s:g}' for s in context['strengths'])} "
                                 f"(seed {context['seed']}; per-image seeds from each image's key)"),
                 ("images", f"{context['images']} clean images, crop {context['crop'] or 'none'}, "
                            f"fit {context['fit']}; "
                            f"{context['ok']} image×strength evaluated, {context['errors']} errors"),
                 ("run", f"{context['run_id']} started {context['started_at']}")]
    parts = [f"<!doctype html><meta charset='utf-8'><title>UGPNet evaluation — {esc(model['ref'])}</title>",
             "<style>body{font-family:sans-serif;margin:1.5em} table{border-collapse:collapse} "
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right} th{background:#f3f3f3} "
             "td.l{text-align:left} figure{display:inline-block;margin:6px} img{image-rendering:pixelated}</style>",
             f"<h1>UGPNet evaluation: {esc(context['task'])}</h1><table>",
             *(f"<tr><th>{esc(k)}</th><td class='l'>{esc(str(v))}</td></tr>" for k, v in head_rows), "</table>",
             "<h2>Mean metrics per output and strength</h2>",
             "<p>Every image is measured as an 8-bit file against the clean ground truth. <i>input</i> is the "
             "degraded image (bicubic-enlarged for SR). HF ratio: Laplacian energy ÷ GT's (1 ideal, below 1 "
             "smoother, above 1 noisier); |log2 HF ratio| is its distance from GT's texture. PSNR means cap "
             f"infinite values at {PSNR_CAP_DB:g} dB.</p>", _metric_table(table, metrics, label),
             _baselines_section(context.get("baselines", [])),
             "<h2>What each module adds</h2>", _comparison_table(comparisons, label),
             "<h2>Metrics against degradation strength</h2>", plot_svg(table, metrics, label),
             "<h2>Images</h2><p>Centre crops at 1:1. Columns: LQ (enlarged, nearest) | restored | synthesized | "
             f"fused | {''.join(esc(b['name']) + ' | ' for b in context.get('baselines', []))}GT.</p>",
             _grids(rows, read, root, context.get("outputs", OUTPUTS)), _errors(rows)]
    return "\n".join(parts) + "\n"


def _metric_table(table, metrics, label) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(METRIC_TITLES.get(m, m))}</th>" for m in metrics)
    body = "".join(
        f"<tr><td>{e['strength']:g}</td><td class='l'>{esc(e['output'])}</td><td>{e['n']}</td><td>{e['errors']}</td>"
        + "".join(f"<td>{_number(e.get(m), 2 if m == 'psnr' else 4)}</td>" for m in metrics) + "</tr>"
        for e in table)
    return (f"<table class='metrics'><tr><th>{esc(label)}</th><th>output</th><th>images</th><th>errors</th>{head}"
            f"</tr>{body}</table>")


def _comparison_table(comparisons, label) -> str:
    with_baselines = any(c.get("best_blind_baseline") for c in comparisons)

    def baseline_cells(c) -> str:
        if not with_baselines:
            return ""
        return (f"<td class='l'>{html.escape(c.get('best_blind_baseline') or '–')}</td>"
                f"<td>{_number(c.get('fused_minus_best_blind_baseline_psnr_db'), 2)}</td>")

    body = "".join(
        f"<tr><td>{c['strength']:g}</td><td>{_number(c['restored_minus_input_psnr_db'], 2)}</td>"
        f"<td>{_number(c['fused_minus_restored_psnr_db'], 2)}</td><td>{_number(c['restored_hf_distance'])}</td>"
        f"<td>{_number(c['fused_hf_distance'])}</td><td>{_yes_no(c['fused_texture_closer_than_restored'])}</td>"
        f"{baseline_cells(c)}</tr>" for c in comparisons)
    head = "<th>best blind baseline</th><th>fused − best blind baseline PSNR (dB)</th>" if with_baselines else ""
    return (f"<table><tr><th>{html.escape(label)}</th><th>restored − input PSNR (dB)</th>"
            "<th>fused − restored PSNR (dB)</th><th>restored |log2 HF|</th><th>fused |log2 HF|</th>"
            f"<th>fused texture closer to GT</th>{head}</tr>{body}</table>")


def _baselines_section(baselines: list[dict]) -> str:
    """Which classical methods ran beside the model, blind or given the truth, and their parameters."""
    if not baselines:
        return ""
    items = "".join(f"<tr><td class='l'>{html.escape(b['name'])}</td>"
                    f"<td class='l'>{'blind' if b['blind'] else 'non-blind (given the true degradation)'}</td>"
                    f"<td class='l'>{html.escape(b['how'])}</td></tr>" for b in baselines)
    return ("<h2>Classical baselines</h2><p>Run on the very degraded inputs the model gets. Blind methods see "
            "only the input (their parameters are fixed or estimated from it); non-blind ones are given the "
            "degradation's true parameter, an advantage the model does not have.</p>"
            f"<table class='baselines'><tr><th>baseline</th><th>kind</th><th>parameters</th></tr>{items}</table>")


def _yes_no(value) -> str:
    return "–" if value is None else ("yes" if value else "no")


def _grids(rows, read, root, outputs=OUTPUTS) -> str:
    """A figure per (image, strength) that has a grid strip, captioned with each output's PSNR."""
    psnr = {(r["image"], r["strength"], r["output"]): r.get("psnr") for r in rows if r["status"] == "ok"}
    figures = []
    for row in rows:
        if row["output"] != "fused" or not row.get("grid_uri"):
            continue
        data = read(root.child(grid_key(row["image"], row["strength"])))
        caption = ", ".join(f"{name} {_number(psnr.get((row['image'], row['strength'], name)), 2)} dB"
                            for name in outputs)
        figures.append(f"<figure class='grid'><img alt='{html.escape(row['image'])}' "
                       f"src='data:image/png;base64,{base64.b64encode(data).decode('ascii')}'>"
                       f"<figcaption>{html.escape(row['image'])} @ {row['strength']:g}: {caption}"
                       "</figcaption></figure>")
    return "\n".join(figures) or "<p>No grids (grid_images is 0, or every grid image failed).</p>"


def _errors(rows) -> str:
    failed = [r for r in rows if r["output"] == "fused" and r["status"] != "ok"]
    if not failed:
        return "<h2>Errors</h2><p>None.</p>"
    items = "".join(f"<tr><td class='l'>{html.escape(r['image'])}</td><td>{r['strength']:g}</td>"
                    f"<td class='l'>{html.escape(r['error'] or '')}</td></tr>" for r in failed)
    return (f"<h2>Errors ({len(failed)})</h2><table class='errors'><tr><th>image</th><th>strength</th>"
            f"<th>error</th></tr>{items}</table>")
