"""Sample photos for demos, training the shipped defaults, tests and benchmarks: real photographs
that ship inside installed packages (no download), with source, version and licence recorded in
`SOURCES.json` beside them."""

import json
import shutil
from pathlib import Path

SKLEARN_LICENCE = "CC BY 2.0 (Flickr photos, as stated by scikit-learn)"
# scikit-image photos used (colour first); licences as the skimage.data docstrings state them.
SKIMAGE_PHOTOS = {
    "astronaut": "public domain (NASA)",
    "chelsea": "CC0 (Stefan van der Walt)",
    "coffee": "CC0 (Rachel Michetti)",
    "rocket": "public domain (SpaceX)",
    "hubble_deep_field": "public domain (NASA/ESA)",
    "immunohistochemistry": "public domain (Greg Martin, per scikit-image)",
    "retina": "CC BY 4.0 (Häggström, per scikit-image)",
    "camera": "CC0 (scikit-image)",
    "brick": "CC0 (scikit-image)",
    "grass": "CC0 (scikit-image)",
    "gravel": "CC0 (scikit-image)",
    "coins": "public domain (Brooklyn Museum, per scikit-image)",
}


def write_sample_photos(destination: Path, with_skimage: bool = True) -> list[Path]:
    """Write the shipped photos into `destination` (scikit-image's only when it is installed);
    returns their paths. Records each photo's package, version, origin and licence."""
    import matplotlib
    import sklearn
    from PIL import Image
    from sklearn.datasets import load_sample_images

    destination.mkdir(parents=True, exist_ok=True)
    records = []
    samples = load_sample_images()
    for name, array in zip(samples.filenames, samples.images, strict=True):
        file = Path(name).stem + ".png"
        Image.fromarray(array).save(destination / file)
        records.append({"file": file, "package": "scikit-learn", "version": sklearn.__version__,
                        "origin": f"sklearn.datasets.load_sample_images(): {Path(name).name}",
                        "licence": SKLEARN_LICENCE})
    shutil.copy(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg", destination)
    records.append({"file": "grace_hopper.jpg", "package": "matplotlib", "version": matplotlib.__version__,
                    "origin": "mpl-data/sample_data/grace_hopper.jpg", "licence": "public domain (U.S. Navy)"})
    if with_skimage:
        records += write_skimage_photos(destination)
    (destination / "SOURCES.json").write_text(json.dumps(records, indent=2))
    return [destination / r["file"] for r in records]


def write_skimage_photos(destination: Path) -> list[dict]:
    try:
        import skimage
        import skimage.data
    except ImportError:
        return []
    from PIL import Image

    records = []
    for name, licence in SKIMAGE_PHOTOS.items():
        try:
            array = getattr(skimage.data, name)()
        except Exception:  # noqa: BLE001 - a data file missing from this skimage build: skip it
            continue
        Image.fromarray(array).convert("RGB").save(destination / f"{name}.png")
        records.append({"file": f"{name}.png", "package": "scikit-image", "version": skimage.__version__,
                        "origin": f"skimage.data.{name}()", "licence": licence})
    return records
