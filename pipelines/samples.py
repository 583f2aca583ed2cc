"""Sample photos for demos, tests and benchmarks: real photographs that ship inside installed
packages (no download), with their source and licence recorded beside them."""

import json
import shutil
from pathlib import Path

# (file name, package, path inside the package or loader, licence as the package states it)
SKLEARN_LICENCE = "CC BY 2.0 (Flickr photos, as stated by scikit-learn)"
SOURCES = [
    ("china.png", "scikit-learn", "sklearn.datasets.load_sample_images(): china.jpg", SKLEARN_LICENCE),
    ("flower.png", "scikit-learn", "sklearn.datasets.load_sample_images(): flower.jpg", SKLEARN_LICENCE),
    ("grace_hopper.jpg", "matplotlib", "mpl-data/sample_data/grace_hopper.jpg", "public domain (U.S. Navy photo)"),
]


def write_sample_photos(destination: Path) -> list[Path]:
    """Copy the shipped photos into `destination`; returns their paths. Writes SOURCES.json too."""
    import matplotlib
    import sklearn
    from PIL import Image
    from sklearn.datasets import load_sample_images

    destination.mkdir(parents=True, exist_ok=True)
    samples = load_sample_images()
    for name, array in zip(samples.filenames, samples.images, strict=True):
        Image.fromarray(array).save(destination / (Path(name).stem + ".png"))
    shutil.copy(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg", destination)
    versions = {"scikit-learn": sklearn.__version__, "matplotlib": matplotlib.__version__}
    (destination / "SOURCES.json").write_text(json.dumps(
        [{"file": f, "package": p, "version": versions[p], "path": where, "licence": licence}
         for f, p, where, licence in SOURCES], indent=2))
    return [destination / name for name, *_ in SOURCES]
