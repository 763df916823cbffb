"""Reading a user's CSV file, with refusals that say what to do: not UTF-8, empty, or separated by ';'.

Every table a user hands over (HAM10000 metadata, ISIC ground truth and metadata, a split manifest,
``predict --meta``) is read by :func:`read_csv`. A file whose header line is separated by ';', tabs
or '|' rather than commas (a spreadsheet in a locale that writes ';') is refused with that said,
not read as one column and then refused for the columns it lacks.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from ..errors import SkinLesionError

OTHER_SEPARATORS = (";", "\t", "|")
SEPARATOR_NAMES = {";": "';'", "\t": "tabs", "|": "'|'"}


def read_csv(path: Path, what: str, **kw) -> pd.DataFrame:
    """``pd.read_csv(path, **kw)``; a file that is not UTF-8, empty or not CSV at all: one sentence naming ``what`` it should be."""
    path = Path(path)
    sep = sniff_separator(path) if kw.get("sep", kw.get("delimiter")) is None else None
    if sep:
        raise SkinLesionError(
            f"{path.name} looks separated by {SEPARATOR_NAMES[sep]}, not commas; save it with commas (it should be {what})."
        )
    try:
        return pd.read_csv(path, encoding="utf-8-sig", **kw)  # utf-8-sig: Excel's "CSV UTF-8" starts with a byte-order mark
    except UnicodeDecodeError as exc:
        raise SkinLesionError(
            f"{path.name} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}; Latin-1 or Windows-1252?); "
            f"save it as UTF-8 (in a spreadsheet: CSV UTF-8) and try again."
        ) from None
    except pd.errors.EmptyDataError:
        raise SkinLesionError(f"{path.name} is empty (no header, no rows); it should be {what}.") from None
    except pd.errors.ParserError as exc:
        detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        detail = re.sub(r"\.\s+", "; ", detail.rstrip("."))  # pandas: "Error tokenizing data. C error: ...": one sentence
        raise SkinLesionError(
            f"{path.name} is not a readable CSV file ({detail}); it should be {what}, "
            "one header line and one row per line, separated by commas."
        ) from None
    except OSError as exc:
        raise SkinLesionError(f"{path} cannot be read ({exc.strerror or type(exc).__name__}); give {what}.") from None


def sniff_separator(path: Path) -> str | None:
    """The separator the header line of ``path`` seems to use instead of commas (None: commas, or no guess)."""
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as f:
            header = f.readline()
    except OSError:
        return None
    counts = {s: header.count(s) for s in OTHER_SEPARATORS}
    best = max(counts, key=counts.get)
    return best if counts[best] > header.count(",") else None
