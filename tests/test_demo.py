"""The README's main command: `ugpnet demo` restores test-split photos with the shipped default model
through the Ray Data pipeline and writes a page showing inputs beside outputs."""

import json
import re

import pytest

import ugpnet
from pipelines.cli import main as cli_main
from pipelines.demo import demo_photos, synthesized_note
from ugpnet.model_refs import default_bundle


def test_shipped_defaults_load_through_the_library():
    for task in ("denoise", "deblur", "sr"):     # every task has a shipped default
        bundle = default_bundle(task)
        model = ugpnet.load(f"default:{task}")
        assert model.preset.task == task and (bundle / "MODEL_CARD.md").is_file()
    assert ugpnet.load("default").preset.task == "denoise"


@pytest.mark.timeout(900)
def test_demo_restores_the_sample_photos_with_the_default_model(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli_main(["demo", "--out", str(out)]) == 0
    result = json.loads([line for line in capsys.readouterr().out.splitlines() if line.startswith("{")][-1])
    names = [name for name, _ in demo_photos()]
    assert result["restored"] == len(names) >= 3 and result["errors"] == 0
    page = (out / "index.html").read_text()
    for name in names:
        assert f"degraded/{name}.png" in page and f"restored/{name}.png" in page
    # every row: degraded PSNR first, then restored, synthesized, fused; the default model must help
    rows = re.findall(r"<tr>(.*?)</tr>", page)
    assert len(rows) == len(names)
    gains = []
    for row in rows:
        degraded, restored, _synthesized, fused, *classical = [float(v) for v in re.findall(r"— ([\d.]+) dB", row)]
        assert len(classical) == 2 and all(value > degraded for value in classical), row  # NLM and wavelet
        assert restored > degraded + 2 and fused > degraded + 2, row
        gains.append(fused - degraded)
    assert sum(gains) / len(gains) > 4, gains     # σ = 25: 6.6 dB on average when shipped
    assert (out / "figure.png").stat().st_size > 10_000
    assert synthesized_note("default:denoise") in page.replace("&#x27;", "'")  # the page says what that column is
    assert "opencv nlm (classical)" in page and "wavelet BayesShrink (classical)" in page


def test_the_synthesized_column_is_explained_and_the_defaults_weakness_named():
    assert "StyleGAN2 prior's own image" in synthesized_note("models:/ugpnet-denoise@champion")
    assert "not the photo's structure" not in synthesized_note("models:/ugpnet-denoise@champion")
    assert "not the photo's structure" in synthesized_note("default:sr")
