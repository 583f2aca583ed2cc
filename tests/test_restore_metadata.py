"""`ugpnet restore` keeps what the inputs carried (issue 14): 16-bit depth where the output format
holds it, the ICC profile, the EXIF (orientation applied and dropped, the new size); `--ext auto`
keeps each input's format; `--strip-metadata` writes none. Real files, the session's local Ray."""

import io

import numpy as np
import pytest
from PIL import Image
from restore_samples import camera_exif, photo, png16_with_profile_and_exif, srgb_profile

import ugpnet
from pipelines.restore.run import RestoreConfig, run
from ugpnet.images import decode_image

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ray_session")]
pytest_plugins = ["services"]

MODEL, DATE = "UGPNet TestCam 1", "2021:06:05 14:30:00"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return str(ugpnet.save(ugpnet.build("tiny_denoise", seed=0), tmp_path_factory.mktemp("bundles") / "denoise"))


def saved(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def mixed_folder(root) -> None:
    """One input per format: a 16-bit PNG with profile and EXIF (orientation 6, stored 40x24), a
    camera JPEG with both, a WebP, an 8-bit TIFF and a BMP."""
    root.mkdir()
    (root / "deep.png").write_bytes(png16_with_profile_and_exif(40, 24)[0])
    camera = Image.open(io.BytesIO(photo(32, 20, 1)))
    (root / "camera.jpg").write_bytes(saved(camera, "JPEG", quality=92, icc_profile=srgb_profile(),
                                            exif=camera_exif(32, 20, orientation=1).tobytes()))
    (root / "web.webp").write_bytes(saved(camera, "WEBP", quality=90))
    (root / "scan.tif").write_bytes(saved(camera, "TIFF"))
    (root / "old.bmp").write_bytes(saved(camera, "BMP"))


def opened(path) -> Image.Image:
    image = Image.open(path)
    image.load()
    return image


@pytest.mark.timeout(300)
def test_ext_auto_keeps_each_format_and_a_16_bit_png_keeps_depth_profile_and_exif(tmp_path, bundle):
    mixed_folder(tmp_path / "in")
    result = run(RestoreConfig(input=str(tmp_path / "in"), output=str(tmp_path / "out"), model=bundle,
                               ext="auto", batch_size=2, run_id="auto"))
    assert (result.ok, result.errors) == (5, 0)
    written = {path.name: opened(path) for path in (tmp_path / "out").iterdir() if path.is_file()}
    assert {name: image.format for name, image in written.items()} == {
        "deep.png": "PNG", "camera.jpg": "JPEG", "web.webp": "WEBP", "scan.tif": "TIFF", "old.png": "PNG"}

    deep_bytes = (tmp_path / "out" / "deep.png").read_bytes()
    assert deep_bytes[24] == 16  # IHDR bit depth
    deep = written["deep.png"]
    assert deep.size == (24, 40)  # upright
    assert deep.info["icc_profile"] == srgb_profile()
    exif = deep.getexif()
    assert 0x0112 not in exif and exif[0x0110] == MODEL
    assert exif.get_ifd(0x8769)[0x9003] == DATE
    assert (exif.get_ifd(0x8769)[0xA002], exif.get_ifd(0x8769)[0xA003]) == (24, 40)
    levels = np.rint(decode_image(deep_bytes).rgb * 65535).astype(np.int64)
    assert (levels % 257 != 0).any()  # restored at 16 bits, not 8-bit levels widened

    camera = written["camera.jpg"]
    assert camera.info["icc_profile"] == srgb_profile() and camera.getexif()[0x0110] == MODEL


@pytest.mark.timeout(300)
def test_strip_metadata_writes_none_and_split_mode_keeps_16_bits_in_tiff(tmp_path, bundle):
    mixed_folder(tmp_path / "in")
    result = run(RestoreConfig(input=str(tmp_path / "in"), output=str(tmp_path / "out"), model=bundle,
                               ext="tiff", strip_metadata=True, stages="split", actors=(1, 1, 1), batch_size=2,
                               run_id="stripped"))
    assert (result.ok, result.errors) == (5, 0)
    for path in (tmp_path / "out").iterdir():
        if path.is_file():
            image = opened(path)
            assert image.format == "TIFF", path.name
            assert "icc_profile" not in image.info, path.name
            assert not {0x0110, 0x8298, 0x8769, 0x0112} & set(image.getexif()), path.name
    deep = opened(tmp_path / "out" / "deep.tiff")
    assert deep.tag_v2[258] == (16, 16, 16) and deep.size == (24, 40)
    assert opened(tmp_path / "out" / "camera.tiff").tag_v2[258] == (8, 8, 8)
