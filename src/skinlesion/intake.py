"""Opening one image safely. Shared by dataset reading, ``predict`` and the app.

Every way an image file can be wrong ends in a :class:`SkinLesionError` with one
sentence; every way it can be unusual (EXIF rotation, grayscale, RGBA, palette,
16-bit, tiny) is handled and, where it matters, reported as a warning.
"""

from __future__ import annotations

import io
import warnings as _warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import SkinLesionError, missing

MAX_FILE_BYTES = 40 * 1024 * 1024  # a 600x450 HAM10000 JPEG is ~250 kB
MAX_PIXELS = 60_000_000  # larger images are refused as possible decompression bombs
TINY_SIDE = 64  # images with a shorter side than this get a warning
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# the first bytes of each format a caller may allow (``open_image(formats=...)``), checked before Pillow sees the file
SIGNATURES = {
    "JPEG": (b"\xff\xd8\xff",),
    "PNG": (b"\x89PNG\r\n\x1a\n",),
    "GIF": (b"GIF87a", b"GIF89a"),
    "TIFF": (b"II*\x00", b"MM\x00*"),
    "BMP": (b"BM",),
    "WEBP": (b"RIFF",),  # and "WEBP" at offset 8
}


def sniff(data: bytes) -> str | None:
    """The format named by a file's first bytes (one of :data:`SIGNATURES`), or None."""
    for fmt, heads in SIGNATURES.items():
        if any(data.startswith(h) for h in heads) and (fmt != "WEBP" or data[8:12] == b"WEBP"):
            return fmt
    return None


@dataclass
class Intake:
    image: Image.Image  # RGB, 8-bit, upright
    name: str
    original_size: tuple[int, int]
    original_mode: str
    warnings: list[str] = field(default_factory=list)


def _to_rgb(img: Image.Image, name: str, notes: list[str]) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        if mode == "F":
            lo, hi = float(arr.min()), float(arr.max())
            arr = (arr - lo) / (hi - lo or 1.0) * 255.0
        else:
            arr = arr / hi * 255.0
        notes.append(f"{name} is a {mode} (high bit depth) grayscale image; it was scaled to 8-bit RGB.")
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        alpha = np.asarray(rgba)[..., 3]
        if alpha.min() < 255:
            notes.append(f"{name} has transparent pixels; they were flattened onto white.")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode in ("L", "1"):
        notes.append(f"{name} is grayscale; dermoscopic models expect colour, so results are less reliable.")
    if mode == "RGB;16" or mode.startswith("RGB") and mode != "RGB":
        arr = np.asarray(img).astype(np.float64)
        return Image.fromarray(np.clip(arr / 257.0, 0, 255).astype(np.uint8), "RGB")
    return img.convert("RGB")


def check_upload_name(name: str) -> None:
    """Refuse, in one sentence, an upload whose name is not a JPEG or PNG name (the app and the API accept those)."""
    suffix = Path(str(name)).suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        kind = f"a {suffix} file" if suffix else "a file without an extension"
        raise SkinLesionError(f"{name} is {kind}, not a JPEG or PNG image; export it as JPEG or PNG and upload it again.")


CHECKED_BLOCK = 8192  # bytes of the file decoded between two checks (a solid PNG inflates ~1000x: ~8 MB of pixels)


class _Checked(io.BytesIO):
    """The encoded bytes, calling ``check`` on every read: Pillow decodes block by block
    (:data:`CHECKED_BLOCK` of the file at a time), so a ``check`` that raises stops a long decode
    between two blocks."""

    def __init__(self, data: bytes, check):
        super().__init__(data)
        self._check = check

    def read(self, size=-1):
        self._check()
        return super().read(size)


def open_image(
    source: str | Path | bytes, name: str | None = None, *, warn_tiny: bool = True, formats=None, check=None, hold=None
) -> Intake:
    """Decode ``source`` (a path or the bytes of an upload) into an upright RGB image.

    Raises :class:`SkinLesionError` for empty, oversized, non-image, corrupt or
    truncated files and for decompression bombs. ``formats`` (e.g. ``("JPEG", "PNG")``): only
    these decoders may open the file, chosen by its first bytes before Pillow reads it
    (default: every format Pillow reads). ``check``: called between blocks of the decode (it raises
    to stop it). ``hold``: called with the image's pixel count once its header is read, before its
    pixels are decoded (a caller's budget of decoded pixels waits there).
    """
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
        name = name or "the upload"
    else:
        path = Path(source)
        name = name or path.name
        if not path.exists():
            raise SkinLesionError(f"{missing(path)}; check the path.")
        if path.is_dir():
            raise SkinLesionError(f"{path} is a folder, not an image file.")
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise SkinLesionError(
                f"{name} is {size / 2**20:.0f} MiB, over the {MAX_FILE_BYTES / 2**20:.0f} MiB limit; "
                "resize it or export it as a JPEG first."
            )
        data = path.read_bytes()
    if len(data) == 0:
        raise SkinLesionError(f"{name} is an empty file (0 bytes); upload the image again.")
    if len(data) > MAX_FILE_BYTES:
        raise SkinLesionError(
            f"{name} is {len(data) / 2**20:.0f} MiB, over the {MAX_FILE_BYTES / 2**20:.0f} MiB limit; "
            "resize it or export it as a JPEG first."
        )
    if formats is not None:
        kind = sniff(data)
        if kind is None:
            raise SkinLesionError(f"{name} is not an image that can be read; upload a JPEG or PNG file.")  # as Pillow's refusal below
        if kind not in formats:
            allowed = " or ".join(formats)
            raise SkinLesionError(f"{name} is a {kind} image, and only {allowed} files are accepted here; export it as {allowed}.")
    try:
        with _warnings.catch_warnings():
            _warnings.simplefilter("error", Image.DecompressionBombWarning)
            fp = io.BytesIO(data) if check is None else _Checked(data, check)
            img = Image.open(fp, formats=None if formats is None else list(formats))
            w, h = img.size
            if w * h > MAX_PIXELS:
                raise SkinLesionError(
                    f"{name} is {w}x{h} pixels, too large to decode safely (a possible "
                    f"decompression bomb); resize it below {MAX_PIXELS // 1_000_000} megapixels."
                )
            if hold is not None:
                hold(w * h)
            if check is not None:
                img.decodermaxblock = CHECKED_BLOCK
            img.load()
    except SkinLesionError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise SkinLesionError(
            f"{name} is too large to decode safely (a possible decompression bomb); resize it below {MAX_PIXELS // 1_000_000} megapixels."
        ) from None
    except UnidentifiedImageError:
        raise SkinLesionError(f"{name} is not an image that can be read; upload a JPEG or PNG file.") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise SkinLesionError(f"{name} is corrupt or truncated ({exc}); re-export or re-download the image.") from None
    original_size, original_mode = img.size, img.mode
    notes: list[str] = []
    try:  # exif_transpose copies even an upright image: a large upload would be held twice
        upright = img if _exif_orientation(img) in (0, 1) else ImageOps.exif_transpose(img)
    except Exception:  # a broken EXIF block must not lose the image
        upright = img
    if upright is not None and upright.size != img.size or upright is not img and _exif_orientation(img) not in (0, 1):
        notes.append(f"{name} was rotated upright according to its EXIF orientation.")
    img = upright if upright is not None else img
    if check is not None:
        check()
    img = _to_rgb(img, name, notes)
    if warn_tiny and min(img.size) < TINY_SIDE:
        notes.append(f"{name} is only {img.size[0]}x{img.size[1]} pixels; predictions on such small images are less reliable.")
    return Intake(image=img, name=name, original_size=original_size, original_mode=original_mode, warnings=notes)


def _exif_orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(0x0112, 0))
    except Exception:
        return 0


def load_rgb(path: str | Path) -> Image.Image:
    """Open a dataset image as upright RGB (no warnings; errors as for :func:`open_image`)."""
    return open_image(path, warn_tiny=False).image
