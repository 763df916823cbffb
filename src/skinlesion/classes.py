"""The seven HAM10000 diagnoses, in the DermaMNIST label order."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Diagnosis:
    code: str
    name: str
    description: str
    malignant: bool  # malignant or pre-malignant

    @property
    def index(self) -> int:
        return CODES.index(self.code)


DIAGNOSES: tuple[Diagnosis, ...] = (
    Diagnosis(
        "akiec",
        "Actinic keratosis / intraepithelial carcinoma (Bowen's disease)",
        "A rough, scaly patch caused by sun damage. It is pre-cancerous and can turn "
        "into squamous cell carcinoma, so it is usually treated.",
        True,
    ),
    Diagnosis(
        "bcc",
        "Basal cell carcinoma",
        "The most common skin cancer. It grows slowly and rarely spreads, but it damages the surrounding skin if left untreated.",
        True,
    ),
    Diagnosis(
        "bkl",
        "Benign keratosis-like lesion",
        "Harmless growths such as seborrhoeic keratoses, solar lentigines and lichen-planus-like keratoses. They can look like melanoma.",
        False,
    ),
    Diagnosis(
        "df",
        "Dermatofibroma",
        "A common, harmless firm bump in the skin, often on the legs.",
        False,
    ),
    Diagnosis(
        "mel",
        "Melanoma",
        "A cancer of the pigment cells. It can spread to other organs and is the most "
        "dangerous skin cancer; found early it is usually curable.",
        True,
    ),
    Diagnosis(
        "nv",
        "Melanocytic nevus",
        "A common mole: a harmless cluster of pigment cells.",
        False,
    ),
    Diagnosis(
        "vasc",
        "Vascular lesion",
        "Harmless blood-vessel growths such as cherry angiomas, angiokeratomas and pyogenic granulomas.",
        False,
    ),
)

CODES: tuple[str, ...] = tuple(d.code for d in DIAGNOSES)
NUM_CLASSES = len(CODES)
MALIGNANT: tuple[str, ...] = tuple(d.code for d in DIAGNOSES if d.malignant)
MALIGNANT_MASK: tuple[bool, ...] = tuple(d.malignant for d in DIAGNOSES)

_BY_CODE = {d.code: d for d in DIAGNOSES}


def get(code: str) -> Diagnosis:
    """The diagnosis for a code such as ``"mel"`` (case and spaces ignored)."""
    key = str(code).strip().lower()
    if key not in _BY_CODE:
        from .errors import SkinLesionError

        raise SkinLesionError(f"Unknown diagnosis code {code!r}; the HAM10000 codes are {', '.join(CODES)}.")
    return _BY_CODE[key]


def index(code: str) -> int:
    return CODES.index(get(code).code)
