"""`ugpnet data prepare`: real photos from installed packages, split by name, with provenance."""

import json

from PIL import Image

from pipelines.cli import main as cli_main
from pipelines.data.photo_sources import PLASMA_PHOTOS, debian_licences, largest_landscape, plasma_licence
from pipelines.data.prepare import SPLITS, split_of


def test_prepare_writes_splits_and_a_manifest_with_provenance(tmp_path, capsys):
    dest = tmp_path / "photos"
    assert cli_main(["data", "prepare", "--dest", str(dest), "--max-side", "256"]) == 0
    records = json.loads((dest / "manifest.json").read_text())
    assert len(records) >= 10 and {r["split"] for r in records} <= set(SPLITS)
    assert {"scikit-learn", "matplotlib", "scikit-image"} <= {r["package"] for r in records}
    for record in records:
        assert record["licence"] and record["version"] and record["path"]
        with Image.open(dest / record["file"]) as image:
            assert list(image.size) == record["stored_size"] and max(image.size) <= 256
            assert image.mode == "RGB"
        assert record["split"] == split_of(record["name"], 0.1, 0.2)
        assert record["file"].startswith(record["split"] + "/")
    files = {p.relative_to(dest).as_posix() for p in dest.rglob("*.png")}
    assert files == {r["file"] for r in records}
    assert "test" in capsys.readouterr().out


def test_the_test_split_of_an_image_never_depends_on_the_others():
    names = [f"source/photo_{i}" for i in range(400)]
    splits = [split_of(n, 0.1, 0.2) for n in names]
    assert splits == [split_of(n, 0.1, 0.2) for n in reversed(names)][::-1]
    share = splits.count("test") / len(splits)
    assert 0.12 < share < 0.28


def test_bad_arguments_name_the_field(tmp_path, capsys):
    assert cli_main(["data", "prepare", "--dest", str(tmp_path), "--sources", "installed,nope"]) == 2
    assert "sources: unknown nope" in capsys.readouterr().err
    assert cli_main(["data", "prepare", "--dest", str(tmp_path), "--max-side", "8"]) == 2
    assert "max_side" in capsys.readouterr().err
    assert not (tmp_path / "manifest.json").exists()


def test_debian_copyright_licences_per_file():
    text = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/

Files: nature/A.jpg
       nature/B.jpg
Copyright: 2008, Someone <a@b.c>
License: GPL-2+
Comment: x

Files: *
Copyright: 2020, Other
License: GPL-2+
"""
    licences = debian_licences(text)
    assert licences["nature/A.jpg"] == licences["nature/B.jpg"] == "GPL-2+ (© 2008, Someone <a@b.c>)"


def test_a_plasma_wallpaper_is_read_at_its_largest_landscape_size(tmp_path):
    for name in ("640x480.jpg", "2560x1600.jpg", "1080x1920.png", "1920x1200.jpg", "preview.png"):
        (tmp_path / name).write_bytes(b"")
    assert largest_landscape(tmp_path).name == "2560x1600.jpg"   # the portrait 1080x1920 is not a candidate


def test_plasma_licence_names_the_licence_and_authors():
    metadata = {"KPlugin": {"License": "CC-BY-SA-4.0", "Authors": [{"Name": "Nikita Babin"}]}}
    assert plasma_licence(metadata) == "CC-BY-SA-4.0 (© Nikita Babin)"
    assert plasma_licence({"KPlugin": {}}) == "see debian/copyright"


def test_new_sources_only_add_to_the_test_split():
    # The split is a hash of the name: adding plasma's photos leaves every earlier image's split as it was
    # and puts two of them in test (Grey, Volna), so the fixed test split only grows.
    assert sorted(n for n in PLASMA_PHOTOS if split_of(f"plasma/{n}", 0.1, 0.2) == "test") == ["Grey", "Volna"]
