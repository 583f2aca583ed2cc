"""Per-stage figures of a restore run, from its manifest rows' stage times (read_ms … write_ms).

A stage's time is summed over the inputs it handled, across all workers, so it can exceed the run's
wall time; its images/s is inputs handled per second of that time: what one worker slot of the stage
does, the figure that shows which stage to give more CPUs (or actors) to.
"""

STAGES = ("read", "decode", "model", "encode", "write")


def stage_figures(stage_ms: dict[str, float], stage_images: dict[str, int]) -> dict[str, dict]:
    """{stage: {"time_s", "images", "images_per_s"}} from summed milliseconds and inputs timed per
    stage (keys `read_ms` …); images_per_s is None for a stage that took no measurable time."""
    figures = {}
    for stage in STAGES:
        seconds = float(stage_ms.get(f"{stage}_ms") or 0.0) / 1000
        images = int(stage_images.get(f"{stage}_ms") or 0)
        figures[stage] = {"time_s": round(seconds, 4), "images": images,
                          "images_per_s": round(images / seconds, 2) if seconds > 0 else None}
    return figures


def stages_line(figures: dict[str, dict]) -> str:
    """One readable line, e.g. `read 12.0 ms (166.67 images/s), decode …`; '' when no stage ran."""
    if not any(figure["images"] for figure in figures.values()):
        return ""
    parts = []
    for stage, figure in figures.items():
        rate = "-" if figure["images_per_s"] is None else f"{figure['images_per_s']:.2f}"
        seconds = figure["time_s"]
        spent = f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.1f} s"
        parts.append(f"{stage} {spent} ({rate} images/s)")
    return "stages (summed over inputs): " + ", ".join(parts)
