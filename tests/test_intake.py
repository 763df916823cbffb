"""Image intake: every unusual image is handled, every bad one refused in one sentence."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from skinlesion.errors import SkinLesionError
from skinlesion.intake import MAX_PIXELS, open_image


def _bytes(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _lesion(w=120, h=90) -> Image.Image:
    a = np.zeros((h, w, 3), np.uint8)
    a[..., 0] = 200
    a[: h // 3, : w // 3] = (20, 30, 200)  # a blue top-left corner to follow rotations
    return Image.fromarray(a)


def test_exif_rotation_is_applied():
    img = _lesion()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    intake = open_image(_bytes(img, "JPEG", exif=exif, quality=95), "rotated.jpg")
    assert intake.image.size == (90, 120)
    assert any("EXIF" in w for w in intake.warnings)
    a = np.asarray(intake.image)
    assert a[5, -5, 2] > 150 and a[-5, 5, 2] < 100  # the blue corner moved to the top right


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "1", "CMYK"])
def test_modes_become_rgb(mode):
    img = _lesion().convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    intake = open_image(_bytes(img, fmt), f"x.{fmt.lower()}")
    assert intake.image.mode == "RGB" and intake.image.size == (120, 90)


def test_transparency_is_flattened_and_reported():
    img = _lesion().convert("RGBA")
    a = np.asarray(img).copy()
    a[..., 3] = 0
    intake = open_image(_bytes(Image.fromarray(a)), "clear.png")
    assert np.asarray(intake.image).min() == 255 and any("transparent" in w for w in intake.warnings)


def test_sixteen_bit_is_scaled_not_clipped():
    a = (np.linspace(0, 65535, 120 * 90).reshape(90, 120)).astype(np.uint16)
    intake = open_image(_bytes(Image.fromarray(a)), "deep.png")
    out = np.asarray(intake.image)
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() >= 254 and len(np.unique(out)) > 200
    assert any("8-bit" in w for w in intake.warnings)


def test_decompression_bomb_is_refused():
    side = int(np.sqrt(MAX_PIXELS)) + 100
    bomb = _bytes(Image.new("L", (side, side)), "PNG", optimize=True)  # tiny file, huge image
    assert len(bomb) < 2_000_000
    with pytest.raises(SkinLesionError, match="decompression bomb"):
        open_image(bomb, "bomb.png")


@pytest.mark.parametrize(
    "data,phrase",
    [
        (b"", "empty file"),
        (b"hello, I am a text file", "not an image"),
        (None, "corrupt or truncated"),
    ],
)
def test_bad_files_are_refused(data, phrase):
    if data is None:
        full = _bytes(_lesion(600, 450), "JPEG")
        data = full[: len(full) // 3]
    with pytest.raises(SkinLesionError, match=phrase):
        open_image(data, "bad.jpg")


def test_oversized_file_is_refused(tmp_path, monkeypatch):
    import skinlesion.intake as intake

    monkeypatch.setattr(intake, "MAX_FILE_BYTES", 1000)
    p = tmp_path / "big.png"
    p.write_bytes(_bytes(_lesion(600, 450)))
    with pytest.raises(SkinLesionError, match="over the"):
        open_image(p)


def test_tiny_images_get_a_warning():
    intake = open_image(_bytes(_lesion(28, 28)), "tiny.png")
    assert any("28x28" in w for w in intake.warnings)


def test_missing_path_and_folder(tmp_path):
    with pytest.raises(SkinLesionError, match="does not exist"):
        open_image(tmp_path / "nope.jpg")
    with pytest.raises(SkinLesionError, match="is a folder"):
        open_image(tmp_path)
