"""Reading one ``POST /v1/analyse``: the uploaded images and their patient data, or a refusal naming the field.

The multipart body is parsed by Starlette (python-multipart) with the service's limits: at most
``--max-images`` files (422 beyond), small text fields; its size is bounded by :class:`~.limits.BodyLimit`.
Patient data is checked by :func:`skinlesion.posthoc.encode_metadata`, with the sentences ``predict --meta`` uses.
"""

from __future__ import annotations

from pathlib import Path

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request

from ..posthoc import LOCALIZATIONS, META_FIELDS, SEXES
from .refusals import Refusal
from .settings import Settings

MAX_NAME = 4096  # characters of a file name kept (it labels the row and its sentences): a long path fits
MAX_VALUE = 64  # characters of a patient-data field (the longest localization is 15)


class Upload(bytes):
    """An uploaded file's bytes; ``str()`` is its file name, which is what ``predict_files`` names a row by."""

    def __new__(cls, data: bytes, name: str):
        obj = super().__new__(cls, data)
        obj.name = name
        return obj

    def __str__(self) -> str:
        return self.name


FORM = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["images"],
                    "properties": {
                        "images": {"type": "array", "items": {"type": "string", "format": "binary"}, "description": "JPEG or PNG files"},
                        "age": {
                            "type": "array",
                            "items": {"type": "string"},
                            "description": "years, 0-120; once for all images or once per image",
                        },
                        "sex": {"type": "array", "items": {"type": "string", "enum": [*SEXES, ""]}},
                        "localization": {
                            "type": "array",
                            "items": {"type": "string", "enum": [*LOCALIZATIONS, ""]},
                            "description": "body site",
                        },
                    },
                }
            }
        },
    }
}


async def read_request(request: Request, settings: Settings) -> tuple[list[Upload], dict | None]:
    """The uploads and their patient data (image stem -> fields), or a refusal naming the field."""
    n = settings.max_images
    try:
        form = await request.form(max_files=n, max_fields=len(META_FIELDS) * n + 8, max_part_size=64 * 1024)
    except HTTPException as exc:
        if exc.status_code != 400:
            raise
        if str(exc.detail).startswith("Too many files"):
            raise Refusal(422, f"This request holds more than {n} images; send at most {n} per request.", field="images") from None
        if str(exc.detail).startswith("Too many fields"):
            raise Refusal(422, "This request holds too many fields; send at most one age, sex and localization per image.") from None
        if str(exc.detail).startswith("Part exceeded maximum size"):
            raise Refusal(
                422,
                "A part over 64 KiB has no filename, so it reads as a text field; send each image as a file part "
                "with a filename (curl -F images=@photo.jpg).",
                field="images",
            ) from None
        if str(exc.detail).startswith("Invalid multipart"):
            raise Refusal(
                400,
                "The request body is not valid multipart form data (a part's headers are malformed or too long, "
                "e.g. a file name over 4,000 characters); send the images as files named images, with shorter names.",
            ) from None
        raise Refusal(
            400, f"The request body is not valid multipart form data ({exc.detail}); send the images as files named images."
        ) from None
    try:
        uploads, fields = [], {f: [] for f in META_FIELDS}
        for key, value in form.multi_items():
            if key == "images":
                if not isinstance(value, UploadFile):
                    raise Refusal(
                        422,
                        "images must be files (multipart file parts with a filename), not text; send each as images=@photo.jpg.",
                        field="images",
                    )
                uploads.append(Upload(await value.read(), (value.filename or f"image {len(uploads) + 1}")[:MAX_NAME]))
            elif key in fields:
                if isinstance(value, UploadFile):
                    raise Refusal(422, f"{key} must be a text field, not a file.", field=key)
                fields[key].append(value)
            else:
                raise Refusal(422, f"Unknown field {key!r}; send images (files) and optionally age, sex and localization.", field=key)
    finally:
        await form.close()
    if not uploads:
        raise Refusal(
            422,
            "Send one or more images as multipart/form-data files named images (age, sex and localization are optional).",
            field="images",
        )
    return uploads, patient_data(uploads, fields)


def patient_data(uploads: list[Upload], fields: dict[str, list[str]]) -> dict | None:
    """Each field once (every image) or once per image; checked with the same rules and sentences as ``predict --meta``."""
    from ..posthoc import encode_metadata

    n = len(uploads)
    given = {k: v for k, v in fields.items() if v}
    if not given:
        return None
    for k, v in given.items():
        if len(v) not in (1, n):
            raise Refusal(
                422, f"{k} is given {len(v)} times for {n} images; give it once (for every image) or once per image, in order.", field=k
            )
    for k, values in given.items():
        for v in values:
            if len(v) > MAX_VALUE:
                raise Refusal(
                    422, f"{k} is {len(v):,} characters long, longer than any {k}; send it in a few words, or leave it empty.", field=k
                )
            if k == "age" and v.strip().lower() in ("nan", "+nan", "-nan"):
                raise Refusal(422, f"Patient data: age {v.strip()!r} is not a number; leave a field empty when it is unknown.", field="age")
    per_image = [{k: (v[0] if len(v) == 1 else v[i]) for k, v in given.items()} for i in range(n)]
    for up, d in zip(uploads, per_image):
        try:
            encode_metadata([d])
        except ValueError as exc:
            where = f" for {up.name}" if n > 1 else ""
            raise Refusal(422, f"Patient data{where}: {exc}; leave a field empty when it is unknown.", field=str(exc).split()[0]) from None
    meta = {}
    for up, d in zip(uploads, per_image):
        stem = Path(up.name).stem
        if meta.get(stem, d) != d:
            raise Refusal(422, f"Two images are named {stem} with different patient data; give them distinct file names.", field="images")
        meta[stem] = d
    return meta
