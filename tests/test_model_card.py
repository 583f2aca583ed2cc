"""The model card shows ours beside the classical baselines, and quotes the measured validation curve."""

from pipelines.registry.model_card import baseline_table, comparison_lines, curve_text


def summary(with_baselines: bool) -> dict:
    table = []
    for strength, values in ((15.0, (24.9, 30.1, 31.0, 30.5, 33.0)), (25.0, (20.6, 28.0, 29.0, 28.7, 31.5))):
        names = ("input", "restored", "fused", "wavelet", "bm3d") if with_baselines else ("input", "restored", "fused")
        pairs = zip(names, values, strict=False)  # without baselines, the last two values go unused
        table += [{"strength": strength, "output": n, "psnr": v, "hf_distance": 1.0} for n, v in pairs]
    comparisons = [{"strength": s, "restored_minus_input_psnr_db": 5.0, "fused_minus_restored_psnr_db": 1.0,
                    "restored_hf_distance": 2.0, "fused_hf_distance": 1.5, "fused_texture_closer_than_restored": True,
                    "best_blind_baseline": "wavelet" if with_baselines else None,
                    "fused_minus_best_blind_baseline_psnr_db": 0.5 if with_baselines else None}
                   for s in (15.0, 25.0)]
    baselines = [{"name": "wavelet", "blind": True, "how": "..."}, {"name": "bm3d", "blind": False, "how": "..."}]
    return {"table": table, "comparisons": comparisons, "baselines": baselines if with_baselines else []}


def test_baselines_sit_beside_ours_per_strength_with_non_blind_marked():
    text = baseline_table(summary(True))
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| strength"))
    assert header == "| strength | input | restored | **fused** | wavelet | bm3d (non-blind) |"
    assert "| 15.0 | 24.90 | 30.10 | 31.00 | 30.50 | 33.00 |" in lines
    assert "| 25.0 | 20.60 | 28.00 | 29.00 | 28.70 | 31.50 |" in lines
    assert "fused − best blind baseline (wavelet) **+0.50 dB**" in comparison_lines(summary(True))


def test_without_baselines_the_card_has_no_empty_table():
    assert baseline_table(summary(False)) == ""
    assert "baseline" not in comparison_lines(summary(False))


def test_the_curve_of_each_trained_stage_is_quoted_and_kept_stages_are_not():
    stages = {"restoration": {"curve": [(200, 27.98), (400, 28.51)]}, "synthesis": {"curve": [(50, 14.0)]}}
    text = curve_text(stages, ["restoration", "fusion"])
    assert text == "- restoration (val restored PSNR by step): 200: 27.98, 400: 28.51"


def test_refreshing_the_evaluation_replaces_only_that_section(tmp_path):
    import json

    from pipelines.registry.model_card import refresh_evaluation

    (tmp_path / "ugpnet.json").write_text(json.dumps({"task": "denoise", "preset": {"name": "small_denoise"}}))
    training = "# Default model\n\n## Training\n\n| restoration | 2400 |\n\n"
    old = "## Evaluation on the test split\n\nmeans over 8 images:\n\n| 25.0 | input | 20.0 |\n\n"
    limits = "## Limits\n\nSmall.\n"
    (tmp_path / "MODEL_CARD.md").write_text(training + old + limits)
    evaluation = tmp_path / "summary.json"
    evaluation.write_text(json.dumps({**summary(True), "images": 10,
                                      "config": {"strengths": [15.0, 25.0], "crop": 256}}))
    card = refresh_evaluation(tmp_path, evaluation, "Re-evaluated on a larger test split.").read_text()
    assert card.startswith(training) and card.endswith(limits)
    assert "means over 8 images" not in card and "| 25.0 | input | 20.0 |" not in card
    assert "## Evaluation on the test split\n\nRe-evaluated on a larger test split.\n\n" in card
    assert "means over 10 images" in card and "--strengths [15.0, 25.0] --crop 256" in card
    assert "| 25.0 | 20.60 | 28.00 | 29.00 | 28.70 | 31.50 |" in card
